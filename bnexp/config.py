"""Compose the Hydra config for a run, check it against a typed schema, and validate values.

Everything here fails with a one-line :class:`BnexpError` *before* any work starts, so a bad
override never leaves a run directory behind.
"""

import importlib.resources
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from bnexp.errors import BnexpError

ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu", "leaky_relu")
INITS = ("default", "xavier_uniform", "normal")
SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("sgd", "adam", "adamw")
NORMS = ("none", "custom", "builtin")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class ModelConfig:
    name: str = MISSING
    hidden_sizes: List[int] = field(default_factory=list)
    channels: List[int] = field(default_factory=list)
    activation: str = "relu"
    init: str = "default"
    init_std: float = 0.01  # used by init=normal


@dataclass
class NormConfig:
    kind: str = MISSING
    eps: float = 1e-5
    momentum: Optional[float] = 0.1
    compile: bool = False


@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "constant"


@dataclass
class DeviceConfig:
    type: str = "auto"


def register_schemas() -> None:
    """Put the group schemas in Hydra's ConfigStore as ``schema/<group>``: each group's YAML
    extends its schema, so any schema key can be overridden (``norm.momentum=0.01`` even with
    ``norm=none``) and Hydra type-checks the value while composing."""
    from hydra.core.config_store import ConfigStore

    from bnexp.data import DatasetConfig

    store = ConfigStore.instance()
    for group, node in (("model", ModelConfig), ("norm", NormConfig), ("optimizer", OptimizerConfig),
                        ("device", DeviceConfig), ("dataset", DatasetConfig)):
        store.store(group="schema", name=group, node=node)


def _root_schema() -> Any:
    """The run schema; the dataset part is owned by :mod:`bnexp.data`."""
    from bnexp.data import DatasetConfig

    @dataclass
    class RunConfig:
        model: ModelConfig = field(default_factory=ModelConfig)
        norm: NormConfig = field(default_factory=NormConfig)
        dataset: DatasetConfig = field(default_factory=DatasetConfig)
        optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
        device: DeviceConfig = field(default_factory=DeviceConfig)
        epochs: int = 5
        max_steps: Optional[int] = None
        batch_size: int = 64
        eval_batch_size: int = 256
        seed: int = 0
        threads: Optional[int] = None
        log_every_steps: int = 10
        hist_every_steps: int = 100
        log_channels: int = 16
        checkpoint: bool = True
        output_dir: str = "outputs"
        name: Optional[str] = None
        resume: Optional[str] = None
        description: str = ""

    return OmegaConf.structured(RunConfig)


def config_dir() -> Path:
    """The installed config tree (``conf/`` in a checkout), usable from any working directory."""
    return Path(str(importlib.resources.files("bnexp.conf")))


def group_options(group: str) -> list[str]:
    """Names of the options of a config group, e.g. ``model`` -> ``['convnet', 'lenet', 'mlp']``."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def _hydra_error(exc: Exception, overrides: list[str]) -> BnexpError:
    """Turn Hydra's multi-line composition errors into a one-line message naming the valid values."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(exc, MissingConfigException):
        match = re.search(r"Could not find '([^']+)/([^']+)'", str(exc))
        if match:
            group, name = match.group(1), match.group(2)
            valid = ", ".join(exc.options or group_options(group))
            return BnexpError(f"{group}={name}: no such option; valid {group} options: {valid}")
        return BnexpError(_one_line(exc))
    if isinstance(exc, OverrideParseException):
        return BnexpError(f"malformed override: {_one_line(exc)} (expected key=value, e.g. model=lenet)")
    from omegaconf.errors import ValidationError

    if isinstance(exc.__cause__, ValidationError):
        cause = exc.__cause__
        return BnexpError(f"{cause.full_key}={cause.value!r}: expected {_expected(cause)}")
    message = _one_line(exc)
    match = re.search(r"Could not override '([^']+)'", message) or re.search(
        r"Key '([^']+)' (?:is not in struct|not in)", message
    )
    if match:
        return _unknown_key(match.group(1))
    return BnexpError(f"invalid overrides {' '.join(overrides)}: {message}")


def _unknown_key(key: str) -> BnexpError:
    """``unknown config key 'model.depth'; valid keys under model: ...`` from the schema."""
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(_root_schema(), parent) if parent else _root_schema()
    valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
    return BnexpError(f"unknown config key '{key}'; valid keys{' under ' + parent if parent else ''}: "
                      f"{', '.join(valid)}")


def compose(overrides: list[str]) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, then type-check it against the schema."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    for item in overrides:
        if "=" not in item and not item.startswith("~"):
            raise BnexpError(f"malformed override '{item}': expected key=value (e.g. model=lenet)")
    GlobalHydra.instance().clear()
    register_schemas()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = hydra_compose("config", overrides=list(overrides))
    except Exception as exc:  # Hydra reports everything through a handful of exception types
        raise _hydra_error(exc, overrides) from exc
    return check_schema(cfg)


def check_schema(cfg: DictConfig) -> DictConfig:
    """Merge onto the typed schema: wrong types and unknown keys become one-line errors."""
    from omegaconf.errors import ConfigKeyError, ValidationError

    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    try:
        merged = OmegaConf.merge(_root_schema(), plain)
    except ConfigKeyError as exc:
        raise _unknown_key(exc.full_key) from exc
    except ValidationError as exc:
        raise BnexpError(f"{exc.full_key}={exc.value!r}: expected {_expected(exc)}") from exc
    OmegaConf.set_struct(merged, True)
    return merged


def _expected(exc: Exception) -> str:
    """'an integer', 'a number', ... from OmegaConf's "could not be converted to Integer" message."""
    match = re.search(r"(?:converted to|is not a valid) (\w+)", str(exc))
    words = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "bool": "true or false",
             "String": "a string"}
    return words.get(match.group(1), match.group(1)) if match else _one_line(exc).split(" full_key")[0]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise BnexpError(message)


def _choice(key: str, value: str, valid: tuple[str, ...]) -> None:
    _require(value in valid, f"{key}={value}: valid values are {', '.join(valid)}")


def validate(cfg: DictConfig) -> None:
    """Check values a type cannot express; every failure names the key, the value and what is valid."""
    m, n, o = cfg.model, cfg.norm, cfg.optimizer
    _choice("model.activation", m.activation, ACTIVATIONS)
    _choice("model.init", m.init, INITS)
    _require(all(h >= 1 for h in m.hidden_sizes), f"model.hidden_sizes={list(m.hidden_sizes)}: sizes must be >= 1")
    _require(m.name != "mlp" or len(m.hidden_sizes) >= 1, "model.hidden_sizes=[]: an mlp needs at least one hidden layer")
    _require(m.name == "mlp" or len(m.channels) == 2,
             f"model.channels={list(m.channels)}: {m.name} takes exactly two conv widths, e.g. [6,16]")
    _require(all(c >= 1 for c in m.channels), f"model.channels={list(m.channels)}: widths must be >= 1")
    _require(m.init_std > 0, f"model.init_std={m.init_std}: must be > 0")
    _choice("norm", n.kind, NORMS)
    _require(n.eps > 0, f"norm.eps={n.eps}: must be > 0")
    _require(n.momentum is None or 0 <= n.momentum <= 1, f"norm.momentum={n.momentum}: must be in [0, 1] or null")
    _choice("optimizer", o.name, OPTIMIZERS)
    _require(o.lr > 0, f"optimizer.lr={o.lr}: must be > 0")
    _require(o.momentum >= 0, f"optimizer.momentum={o.momentum}: must be >= 0")
    _require(o.weight_decay >= 0, f"optimizer.weight_decay={o.weight_decay}: must be >= 0")
    _require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
             f"optimizer.betas={list(o.betas)}: two values in [0, 1)")
    _choice("optimizer.schedule", o.schedule, SCHEDULES)
    _choice("device", cfg.device.type, DEVICES)
    _require(cfg.epochs >= 1, f"epochs={cfg.epochs}: must be >= 1")
    _require(cfg.max_steps is None or cfg.max_steps >= 1, f"max_steps={cfg.max_steps}: must be >= 1 or null")
    _require(cfg.batch_size >= 1, f"batch_size={cfg.batch_size}: must be >= 1")
    _require(cfg.batch_size >= 2 or n.kind == "none",
             f"batch_size={cfg.batch_size} with norm={n.kind}: batch norm needs at least 2 examples per "
             "training batch; use batch_size>=2 or norm=none")
    _require(cfg.eval_batch_size >= 1, f"eval_batch_size={cfg.eval_batch_size}: must be >= 1")
    _require(cfg.log_every_steps >= 1, f"log_every_steps={cfg.log_every_steps}: must be >= 1")
    _require(cfg.hist_every_steps >= 0, f"hist_every_steps={cfg.hist_every_steps}: must be >= 0 (0 turns it off)")
    _require(cfg.log_channels >= 0, f"log_channels={cfg.log_channels}: must be >= 0")
    _require(cfg.threads is None or cfg.threads >= 1, f"threads={cfg.threads}: must be >= 1 or null")
    _require(cfg.name is None or re.fullmatch(r"[A-Za-z0-9_.-]+", cfg.name) is not None,
             f"name={cfg.name}: use letters, digits, '.', '_' and '-' only")


def load(overrides: list[str]) -> DictConfig:
    """Compose and validate: the single entry point for turning CLI overrides into a run config."""
    cfg = compose(overrides)
    validate(cfg)
    return cfg


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, Any]:
    """``{'optimizer.lr': 0.1, ...}``: scalar leaves of the config, lists as strings (for HParams/tables)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, Any] = {}
    for key, value in container.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "."))
        elif isinstance(value, (list, tuple)):
            flat[path] = str(list(value))
        else:
            flat[path] = value
    return flat
