"""The schema (bnexp/config/schema.py) is the one home of every default: conf/config.yaml restates
the top-level ones for readers, but never a different value (recalibrate_batches once said 0 in the
schema and 20 in config.yaml)."""

from __future__ import annotations

from omegaconf import OmegaConf

from bnexp.config.compose import compose
from bnexp.config.schema import GROUP_SCHEMAS, RunConfig


def test_config_yaml_states_the_schema_defaults():
    composed = compose([])
    schema = OmegaConf.to_container(OmegaConf.structured(RunConfig), resolve=True)
    top = {k: v for k, v in schema.items() if k not in GROUP_SCHEMAS}
    assert {k: composed[k] for k in top} == top
