"""The norm registry (bnexp.config.groups.NORMS): each norm is one entry, a builder and one YAML;
norm=layer and norm=group prove it: built at the same sites of every model, trained, logged like
every norm (activations, gamma/beta; no running statistics, so no train/eval gap), resumed."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bnexp.config.compose import load
from bnexp.config.groups import NORMS, config_dir, group_options
from bnexp.core.errors import BnexpError
from bnexp.nn.models import build_model, norm_layers

THROUGHPUT = "examples_per_s"


def model(model_name: str, norm: str, *extra: str):
    cfg = load([f"model={model_name}", f"norm={norm}", *extra])
    return build_model(cfg.model, cfg.norm, 1, (28, 28), 10)


def test_every_norm_option_has_a_registry_entry_and_back():
    assert group_options("norm") == sorted(NORMS)
    for kind in NORMS:
        assert (config_dir() / "norm" / f"{kind}.yaml").read_text().count(f"kind: {kind}") == 1


@pytest.mark.parametrize("norm, expected", [
    ("layer", [(nn.GroupNorm, 1), (nn.GroupNorm, 1), (nn.LayerNorm, None), (nn.LayerNorm, None)]),
    ("group", [(nn.GroupNorm, 2), (nn.GroupNorm, 2), (nn.GroupNorm, 2), (nn.GroupNorm, 2)]),
])
def test_layer_and_group_norm_sit_at_the_norm_sites(norm, expected):
    net = model("lenet", norm)
    found = [(type(m), getattr(m, "num_groups", None)) for _, m in norm_layers(net)]
    assert found == expected
    assert not any(isinstance(getattr(m, "running_mean", None), torch.Tensor) for m in net.modules())
    four = model("lenet", "group", "norm.groups=4", "model.channels=[8,16]")
    assert [m.num_groups for _, m in norm_layers(four)] == [4, 4, 4, 4]


def test_layer_norm_normalizes_each_example_by_itself():
    """One example's output does not depend on the rest of the batch (unlike BN)."""
    torch.manual_seed(0)
    for norm in ("layer", "group"):
        net = model("lenet", norm)
        x = torch.randn(6, 1, 28, 28)
        assert torch.allclose(net(x)[:1], net(x[:1]), atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["norm=group", "norm.groups=4"], "norm.groups=4: a norm site has 6 channels"),
    (["norm=layer", "norm.ghost_batch_size=8"], "norm.ghost_batch_size=8: norm=layer does not take it"),
    (["norm=group", "norm.sync=true"], "norm.sync=True: norm=group does not take it"),
    (["norm=layer", "norm.compile=true"], "norm.compile=True: norm=layer does not take it"),
    (["norm=group", "norm.groups=0"], "norm.groups=0: must be >= 1"),
    (["norm=custom", "batch_size=1"], "batch_size=1 with norm=custom: it needs at least 2 examples"),
])
def test_what_a_norm_does_not_take_is_one_line(overrides, message):
    with pytest.raises(BnexpError, match=message.replace("(", r"\(").replace("[", r"\[")):
        cfg = load(["model=lenet", *overrides])
        build_model(cfg.model, cfg.norm, 1, (28, 28), 10)


def test_a_batch_of_one_trains_without_batch_statistics(cli, tiny):
    cli("train", "norm=layer", *tiny, "batch_size=1", "dataset.limit_train=8", "-q")


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_layer_and_group_norm_train_log_and_resume(cli, tiny, norm):
    common = [f"norm={norm}", "model=lenet", *tiny, "hist_every_steps=2", "-q"]
    cli("train", *common, "epochs=2", "name=straight")
    cli("train", *common, "name=stopped")
    (straight,), (stopped,) = cli.out.glob("runs/*-straight-*"), cli.out.glob("runs/*-stopped-*")
    cli("train", f"resume={stopped.name}", "epochs=2", "-q")
    final, expected = (json.loads((d / "run.json").read_text()) for d in (stopped, straight))
    assert final["status"] == expected["status"] == "completed" and final["norm"] == norm

    def drop_rate(metrics):
        return {k: v for k, v in metrics.items() if THROUGHPUT not in k}
    assert drop_rate(final["metrics"]) == drop_rate(expected["metrics"])  # resumed exactly

    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 2 and not any("batch_stats" in k or "recalibrated" in k for r in epochs for k in r)
    sites = {r["site"] for r in records if r["kind"] == "activation"}
    assert sites == {"norm1", "norm2", "norm3", "norm4"}
    assert {r["site"] for r in records if r["kind"] == "grad" and "gamma_grad_norm" in r} == sites
    params = json.loads((straight / "norm_params.json").read_text())
    assert set(params) == sites and all(set(p) == {"gamma", "beta"} for p in params.values())

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(straight), size_guidance={"histograms": 0}).Reload()
    tags = set(events.Tags()["histograms"])
    assert {"gamma/norm1", "beta/norm4", "activations/norm2/output"} <= tags
    assert not any(t.startswith("running_") for t in tags)
    assert "val/acc_batch_stats" not in events.Tags()["scalars"]


def test_recalibrate_refuses_a_norm_without_running_statistics(cli, tiny):
    cli("train", "norm=group", *tiny, "-q")
    (run,) = cli.out.glob("runs/*")
    refused = cli("recalibrate", run.name, check=False)
    assert refused.returncode != 0 and "norm=group: it has no running statistics" in refused.stderr


def test_every_entry_is_a_builder_or_torch_layers_that_import():
    """Each NORMS entry names a builder function or a torch layer (never both); every dotted path imports."""
    from bnexp.config.groups import import_object

    for kind, spec in NORMS.items():
        assert not (spec.build and spec.layer), kind
        assert spec.linear is None or spec.layer is not None, kind
        for path in filter(None, [spec.build, *(layer.cls for layer in (spec.layer, spec.linear) if layer)]):
            assert callable(import_object(path)), (kind, path)


def test_a_norm_torch_provides_is_one_registry_entry(monkeypatch):
    """The recipe's claim: a registry entry alone builds a new norm at every site (its YAML only
    composes the config); no builder function is written."""
    from bnexp.config.groups import Layer, NormSpec

    monkeypatch.setitem(NORMS, "instance", NormSpec(layer=Layer("torch.nn.InstanceNorm2d", kwargs=(("affine", True),)),
                                                    linear=Layer("torch.nn.LayerNorm")))
    cfg = load(["model=lenet", "norm=layer"])
    cfg.norm.kind = "instance"
    net = build_model(cfg.model, cfg.norm, 1, (28, 28), 10)
    assert [type(m) for _, m in norm_layers(net)] == [nn.InstanceNorm2d, nn.InstanceNorm2d, nn.LayerNorm, nn.LayerNorm]
    assert all(m.eps == cfg.norm.eps for _, m in norm_layers(net))
    net(torch.randn(4, 1, 28, 28)).sum().backward()
