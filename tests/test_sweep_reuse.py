"""What a sweep composes once and reuses must equal what composing again would give: a swept
plain value set on the first job's config while planning (bnexp.launch.plan._with_value). The
launchers' per-job reuse is checked against Hydra in tests/test_hydra_adapter.py."""

from __future__ import annotations

from omegaconf import OmegaConf

from bnexp.config.compose import compose
from bnexp.launch.plan import _with_value


def test_a_swept_value_set_on_the_first_config_equals_composing_it():
    first = ["norm=custom", "epochs=2", "seed=0"]
    base = compose(first)
    for value in ["seed=7", "optimizer.lr=0.5", "model.hidden_sizes=[64,32]", "dataset.limit_train=null",
                  "name=study_1", "norm.momentum=0.01", "batch_size=128"]:
        key = value.split("=", 1)[0]
        again = compose([o for o in first if not o.startswith(f"{key}=")] + [value])
        assert OmegaConf.to_container(_with_value(base, value)) == OmegaConf.to_container(again), value
    assert OmegaConf.to_container(base) == OmegaConf.to_container(compose(first))  # the first is left as it was
    for composed_instead in ["norm=builtin", "model=lenet", "+extra=1", "seed=abc", "no_such_key=1"]:
        assert _with_value(base, composed_instead) is None, composed_instead
