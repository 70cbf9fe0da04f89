"""Compose the Hydra config for a run, check it against a typed schema, and validate values.

Everything here fails with a one-line :class:`BnexpError` *before* any work starts, so a bad
override never leaves a run directory behind. Nothing here imports torch. The schema (every
default) is :mod:`bnexp.config.schema`; the tables of swappable parts :mod:`bnexp.config.groups`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from bnexp.config import cache
from bnexp.config.groups import (
    ACTIVATIONS,
    DATASETS,
    DEVICES,
    INITS,
    MODELS,
    NORMS,
    OPTIMIZERS,
    SCHEDULES,
    config_dir,
    group_options,
    sink_names,
    sink_requires,
)
from bnexp.config.schema import GROUP_SCHEMAS, MAX_NAME, DatasetConfig, RunConfig, register_schemas
from bnexp.core.errors import BnexpError
from bnexp.core.keys import flatten
from bnexp.core.text import escape, has_control


def _root_schema() -> DictConfig:
    return OmegaConf.structured(RunConfig)


def one_line(text: Any) -> str:
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
        return BnexpError(one_line(exc))
    if isinstance(exc, OverrideParseException):
        return BnexpError(f"malformed override: {one_line(exc)} (expected key=value, e.g. model=lenet)")
    from omegaconf.errors import ValidationError

    if isinstance(exc.__cause__, ValidationError):
        cause = exc.__cause__
        return BnexpError(f"{cause.full_key}={cause.value!r}: expected {_expected(cause)}")
    message = one_line(exc)
    match = re.search(r"Could not override '([^']+)'", message) or re.search(
        r"Key '([^']+)' (?:is not in struct|not in)", message
    )
    if match:
        return unknown_key(match.group(1))
    return BnexpError(f"invalid overrides {' '.join(overrides)}: {message}")


def unknown_key(key: str) -> BnexpError:
    """``unknown config key 'model.depth'; valid keys under model: ...`` from the schema."""
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(_root_schema(), parent) if parent else _root_schema()
    valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
    return BnexpError(f"unknown config key '{key}'; valid keys{' under ' + parent if parent else ''}: "
                      f"{', '.join(valid)}")


# Hydra keys that would put a run somewhere else than bnexp does (and which bnexp would ignore).
PLACEMENT_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.runtime.output_dir")
RESOLVER_CALL = re.compile(r"\$\{\s*[^}]*:")  # ${oc.env:X}, ${oc.decode:...}, ${now:...}: a resolver call


def check_overrides(overrides: list[str]) -> None:
    """Refuse, before anything is composed, overrides that are not plain settings: malformed ones,
    ones holding control characters (they would be replayed raw on a terminal by every view),
    resolver calls (``${oc.env:SECRET}`` would copy a secret into config.yaml and the checkpoint),
    and Hydra's placement keys, which bnexp ignores (``output_dir`` decides where runs go)."""
    for item in overrides:
        if has_control(item):
            raise BnexpError(f"override {escape(item)}: control characters are not allowed in overrides")
        if "=" not in item and not item.startswith("~"):
            raise BnexpError(f"malformed override '{item}': expected key=value (e.g. model=lenet)")
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if key in PLACEMENT_KEYS:
            raise BnexpError(f"{key}=: bnexp places runs itself; use output_dir=DIR (runs go to DIR/runs, "
                             "sweeps to DIR/sweeps)")
        if RESOLVER_CALL.search(value):
            raise BnexpError(f"{key}={value}: resolvers such as ${{oc.env:...}} are not allowed in overrides "
                             "(give the value itself)")


def config_keys() -> frozenset:
    """Every key an override may set: config groups, and each node and leaf of the schema."""
    keys = {"experiment", *GROUP_SCHEMAS}
    for key in flatten(OmegaConf.to_container(_root_schema(), resolve=False)):
        parts = key.split(".")
        keys.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(keys)


def compose(overrides: list[str]) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides, then type-check it against the schema.

    Hydra composes each set of overrides once per version of the config tree: the composed (not
    yet resolved) config is kept in bnexp's cache (:mod:`bnexp.config.cache`, ``$BNEXP_CACHE_DIR``),
    and a later call with the same overrides reads it back instead of starting Hydra (~0.4 s of
    every command's start-up). An entry is untrusted: it is type-checked like Hydra's output, and
    any entry that fails is ignored and composed afresh. Interpolations such as
    ``${oc.env:BNEXP_OUTPUT_DIR,outputs}`` are resolved afresh each time."""
    check_overrides(overrides)
    key = _compose_cache_key(overrides)
    cached = cache.read(COMPOSE_CACHE, key)
    if isinstance(cached, dict):
        try:
            return check_schema(OmegaConf.create(cached))
        except Exception:  # noqa: BLE001 - a damaged or planted entry: Hydra decides
            pass
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    register_schemas()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = hydra_compose("config", overrides=list(overrides))
    except Exception as exc:  # Hydra reports everything through a handful of exception types
        raise _hydra_error(exc, overrides) from exc
    checked = check_schema(cfg)
    composed = OmegaConf.to_container(cfg, resolve=False)
    composed.pop("hydra", None)
    cache.write(COMPOSE_CACHE, key, composed)
    return checked


COMPOSE_CACHE = "compose"  # the cache section of compositions


def _compose_cache_key(overrides: list[str]) -> str:
    """What a composition depends on: the overrides and every file composing reads (the config
    tree's files by path, size and mtime, the schema, this module, Hydra's installed version)."""
    from bnexp.config import schema

    root = config_dir()
    sources = [p for p in sorted(root.rglob("*")) if p.is_file()] + [Path(schema.__file__), Path(__file__)]
    hydra_spec = importlib.util.find_spec("hydra")
    if hydra_spec is not None and hydra_spec.origin:
        sources.append(Path(hydra_spec.origin))
    stamps = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sources]
    return json.dumps([list(overrides), stamps])


def check_schema(cfg: DictConfig | dict) -> DictConfig:
    """Merge onto the typed schema: wrong types and unknown keys become one-line errors."""
    from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, ValidationError

    try:
        plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    except InterpolationResolutionError as exc:
        raise BnexpError(f"{exc.full_key}: its value cannot be resolved ({one_line(exc).split(' full_key')[0]})") from None
    plain.pop("hydra", None)
    try:
        merged = OmegaConf.merge(_root_schema(), plain)
    except ConfigKeyError as exc:
        raise unknown_key(exc.full_key) from exc
    except ValidationError as exc:
        raise BnexpError(f"{exc.full_key}={exc.value!r}: expected {_expected(exc)}") from exc
    OmegaConf.set_struct(merged, True)
    return merged


def _expected(exc: Exception) -> str:
    """'an integer', 'a number', ... from OmegaConf's "could not be converted to Integer" message."""
    match = re.search(r"(?:converted to|is not a valid) (\w+)", str(exc))
    words = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "bool": "true or false",
             "String": "a string"}
    return words.get(match.group(1), match.group(1)) if match else one_line(exc).split(" full_key")[0]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise BnexpError(message)


def _choice(key: str, value: str, valid) -> None:
    _require(value in valid, f"{key}={value}: valid values are {', '.join(valid)}")


def validate(cfg: DictConfig, on_slurm: bool = False) -> None:
    """Check values a type cannot express; every failure names the key, the value and what is valid.
    ``on_slurm``: the run will start inside a Slurm job (whose allocation names node 0)."""
    m, n, o = cfg.model, cfg.norm, cfg.optimizer
    _choice("model", m.name, MODELS)
    _choice("model.activation", m.activation, ACTIVATIONS)
    _choice("model.init", m.init, INITS)
    _require(all(h >= 1 for h in m.hidden_sizes), f"model.hidden_sizes={list(m.hidden_sizes)}: sizes must be >= 1")
    spec = MODELS[m.name]
    convs = len(spec.convs)
    if spec.residual:
        _require(len(m.channels) == 3, f"model.channels={list(m.channels)}: resnet takes 3 stage widths, e.g. [16,32,64]")
        _require(m.depth is None or (m.depth >= 8 and (m.depth - 2) % 6 == 0),
                 f"model.depth={m.depth}: a resnet's depth is 6n+2 with n >= 1 (8, 14, 20, 32, 56, ...)")
    else:
        _require(convs or len(m.hidden_sizes) >= 1, f"model.hidden_sizes=[]: an {m.name} needs at least one hidden layer")
        _require(not convs or len(m.channels) == convs,
                 f"model.channels={list(m.channels)}: {m.name} takes exactly {convs} conv widths, e.g. [6,16]")
        _require(m.depth is None or m.depth >= max(convs, 1),
                 f"model.depth={m.depth}: {m.name} needs depth >= {max(convs, 1)} (norm sites) or null")
    _require(all(c >= 1 for c in m.channels), f"model.channels={list(m.channels)}: widths must be >= 1")
    _require(m.init_std > 0, f"model.init_std={m.init_std}: must be > 0")
    _choice("norm", n.kind, NORMS)
    _require(n.eps > 0, f"norm.eps={n.eps}: must be > 0")
    _require(n.noise >= 0, f"norm.noise={n.noise}: must be >= 0 (0 turns the injected noise off)")
    _require(n.rmax >= 1 and n.dmax >= 0, f"norm.rmax={n.rmax}, norm.dmax={n.dmax}: need rmax >= 1 and dmax >= 0")
    _require(n.warmup_steps >= 0 and n.relax_steps >= 0,
             f"norm.warmup_steps={n.warmup_steps}, norm.relax_steps={n.relax_steps}: must be >= 0")
    _require(n.momentum is None or 0 <= n.momentum <= 1, f"norm.momentum={n.momentum}: must be in [0, 1] or null")
    _require(n.ghost_batch_size is None or n.ghost_batch_size >= 2,
             f"norm.ghost_batch_size={n.ghost_batch_size}: must be >= 2 (examples per virtual batch) or null")
    spec = NORMS[n.kind]
    for key, supported in (("ghost_batch_size", spec.ghost), ("sync", spec.sync), ("compile", spec.compile)):
        _require(supported or not n[key], f"norm.{key}={n[key]}: norm={n.kind} does not take it; valid with "
                 f"norm={', '.join(k for k, s in NORMS.items() if getattr(s, key.split('_')[0]))}")
    _require(n.groups >= 1, f"norm.groups={n.groups}: must be >= 1")
    _require(not (n.sync and n.ghost_batch_size),
             "norm.sync=true with norm.ghost_batch_size: pick one (synchronized statistics span the global "
             "batch, ghost statistics a part of the local one)")
    _choice("optimizer", o.name, OPTIMIZERS)
    _require(o.lr > 0, f"optimizer.lr={o.lr}: must be > 0")
    _require(o.momentum >= 0, f"optimizer.momentum={o.momentum}: must be >= 0")
    _require(o.weight_decay >= 0, f"optimizer.weight_decay={o.weight_decay}: must be >= 0")
    _require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
             f"optimizer.betas={list(o.betas)}: two values in [0, 1)")
    _choice("optimizer.schedule", o.schedule, SCHEDULES)
    _choice("device", cfg.device.type, DEVICES)
    validate_dataset(cfg.dataset)
    for sink in cfg.logger.sinks:
        _choice("logger.sinks", sink, sink_names())
        package, pip = sink_requires(sink) or (None, None)
        _require(package is None or importlib.util.find_spec(package) is not None,
                 f"logger.sinks={sink}: the {package} package is not installed; pip install '{pip}'")
    _require(cfg.epochs >= 1, f"epochs={cfg.epochs}: must be >= 1")
    _require(cfg.max_steps is None or cfg.max_steps >= 1, f"max_steps={cfg.max_steps}: must be >= 1 or null")
    _require(cfg.batch_size >= 1, f"batch_size={cfg.batch_size}: must be >= 1")
    _require(cfg.batch_size >= spec.min_batch,
             f"batch_size={cfg.batch_size} with norm={n.kind}: it needs at least {spec.min_batch} examples per "
             f"training batch; use batch_size>={spec.min_batch} or a norm without batch statistics "
             f"({', '.join(k for k, s in NORMS.items() if s.min_batch <= cfg.batch_size)})")
    _require(cfg.eval_batch_size >= 1, f"eval_batch_size={cfg.eval_batch_size}: must be >= 1")
    _require(cfg.nproc >= 1, f"nproc={cfg.nproc}: must be >= 1 (processes of data-parallel training)")
    world = cfg.nproc * cfg.nnodes
    _require(cfg.nnodes >= 1, f"nnodes={cfg.nnodes}: must be >= 1 (machines training one run)")
    _require(cfg.batch_size % world == 0,
             f"batch_size={cfg.batch_size} with nproc={cfg.nproc}" + (f" nnodes={cfg.nnodes}" if cfg.nnodes > 1 else "")
             + f": the global batch must split evenly over the processes; use a multiple of {world}")
    _require(cfg.nnodes == 1 or bool(cfg.rdzv_endpoint) or on_slurm or "SLURM_JOB_NODELIST" in os.environ,
             f"nnodes={cfg.nnodes}: give rdzv_endpoint=HOST:PORT, the address of node 0 that every node can reach "
             "(inside a Slurm job it defaults to the allocation's first machine)")
    _require(cfg.node_rank is None or 0 <= cfg.node_rank < cfg.nnodes,
             f"node_rank={cfg.node_rank}: must be in 0..{cfg.nnodes - 1} (nnodes={cfg.nnodes})")
    _require(cfg.rdzv_timeout > 0, f"rdzv_timeout={cfg.rdzv_timeout}: must be > 0 (seconds)")
    _require(cfg.recalibrate_batches >= 0,
             f"recalibrate_batches={cfg.recalibrate_batches}: must be >= 0 (0 turns recalibration off)")
    _require(cfg.log_every_steps >= 1, f"log_every_steps={cfg.log_every_steps}: must be >= 1")
    _require(cfg.hist_every_steps >= 0, f"hist_every_steps={cfg.hist_every_steps}: must be >= 0 (0 turns it off)")
    _require(cfg.log_channels >= 0, f"log_channels={cfg.log_channels}: must be >= 0")
    _require(cfg.threads is None or cfg.threads >= 1, f"threads={cfg.threads}: must be >= 1 or null")
    g = cfg.diagnostics
    for key in ("shift_every", "ics_every", "smooth_every"):
        _require(g[key] >= 0, f"diagnostics.{key}={g[key]}: must be >= 0 (0 turns it off)")
    _require(len(g.smooth_steps) >= 1 and all(s > 0 for s in g.smooth_steps),
             f"diagnostics.smooth_steps={list(g.smooth_steps)}: one or more positive multiples of the lr")
    _require(g.probe_batch is None or g.probe_batch >= 2, f"diagnostics.probe_batch={g.probe_batch}: must be >= 2 or null")
    validate_name("name", cfg.name)


def validate_name(key: str, name: Optional[str]) -> None:
    """A label that becomes part of a directory name: short, and made of safe characters."""
    if name is None:
        return
    _require(re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*", name) is not None and set(name) != {"."},
             f"{key}={escape(name)}: use letters, digits, '.', '_' and '-' only (not starting with '-', not only dots)")
    _require(len(name) <= MAX_NAME, f"{key}={name[:20]}...: {len(name)} characters; at most {MAX_NAME}")


def validate_dataset(d: DictConfig | DatasetConfig) -> None:
    """Values of the dataset node (the files themselves are checked when loading)."""
    _require(d.name in DATASETS, f"dataset={d.name}: unknown dataset; valid datasets: {', '.join(DATASETS)}")
    for key in ("limit_train", "limit_val"):
        value = getattr(d, key)
        _require(value is None or value >= 1, f"dataset.{key}={value}: must be >= 1 or null (null keeps every image)")
    _require(0 < d.val_fraction < 1, f"dataset.val_fraction={d.val_fraction}: must be between 0 and 1 (exclusive)")
    _require(d.image_size >= 1, f"dataset.image_size={d.image_size}: must be >= 1 (pixels per side)")


def load(overrides: list[str]) -> DictConfig:
    """Compose and validate: the single entry point for turning CLI overrides into a run config."""
    cfg = compose(overrides)
    validate(cfg)
    return cfg


def dataset_settings(cfg: DictConfig) -> DatasetConfig:
    """The checked ``dataset`` node of a run config as its dataclass."""
    return OmegaConf.to_object(cfg.dataset) if isinstance(cfg.dataset, DictConfig) else cfg.dataset


