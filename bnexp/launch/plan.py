"""Planning a sweep: the overrides parsed by Hydra's grammar into a grid or an Optuna search space, the launcher and its settings checked, every job's config composed and validated up front (:class:`Plan`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from bnexp.config.compose import one_line
from bnexp.core.errors import BnexpError
from bnexp.core.keys import override_key
from bnexp.core.vocab import METRICS

SAMPLERS = ("tpe", "random")


# Hydra logs nothing itself (the sweep prints its own lines), writes no .hydra folder into a job's
# directory (bnexp writes the job's config.yaml and overrides.yaml itself, never through a planted
# link; Hydra's own writes would follow one) and jobs keep the working directory.
HYDRA_DEFAULTS = {"hydra/job_logging": "none", "hydra/hydra_logging": "none", "hydra.output_subdir": "null",
                  "hydra.job.chdir": "false"}

# The values a sweep takes for those: none that makes Hydra write a file (a job log, .hydra/).
NO_FILE_LOGGING = ("none", "disabled", "stdout")
HYDRA_CHOICES = {"hydra/job_logging": NO_FILE_LOGGING, "hydra/hydra_logging": NO_FILE_LOGGING,
                 "hydra.output_subdir": ("null",), "hydra.job.chdir": ("false", "true")}


# Launcher setting that `--jobs N` sets: how many jobs run at once.
PARALLEL_SETTING = {"joblib": "n_jobs", "submitit_slurm": "array_parallelism"}


@dataclass
class Plan:
    """A sweep checked end to end (every swept value composed and validated) and ready to launch."""

    kind: str  # grid | optuna
    overrides: list[str]  # bnexp overrides as given (with sweep syntax)
    hydra_overrides: list[str]  # Hydra overrides: the launcher and its settings
    launcher: str
    jobs_at_once: int
    metric: str
    swept: list[str]  # keys whose value varies between jobs
    fixed: list[str]  # overrides every job shares
    grid: list[list[str]] = field(default_factory=list)  # grid: each job's overrides
    space: dict[str, str] = field(default_factory=dict)  # optuna: key -> distribution as JSON
    trials: int = 0  # optuna: trials the study should reach
    sampler: str = "tpe"
    sampler_seed: int = 0
    output_dir: str = "outputs"
    storage: Optional[str] = None  # optuna: a database URL; None: the journal in the sweep directory
    workers: int = 0  # optuna: asynchronous workers the sweep starts (bnexp.launch.workers); 0: batches


def _parse(overrides: list[str], loader) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create(config_loader=loader).parse_overrides(overrides)
    except HydraException as exc:
        raise BnexpError(f"malformed override: {one_line(exc)}") from None


def _launcher(hydra_overrides: list[str], launcher: Optional[str], jobs: Optional[int], loader) -> tuple[str, list[str]]:
    """The launcher name and the Hydra overrides that select and size it."""
    chosen = [o.split("=", 1)[1] for o in hydra_overrides if override_key(o) == "hydra/launcher"]
    if launcher and chosen and chosen[-1] != launcher:
        raise BnexpError(f"--launcher {launcher} contradicts hydra/launcher={chosen[-1]}; give one of them")
    name = launcher or (chosen[-1] if chosen else ("joblib" if jobs and jobs > 1 else "basic"))
    valid = loader.get_group_options("hydra/launcher")
    if name not in valid:
        raise BnexpError(f"hydra/launcher={name}: no such launcher; installed launchers: {', '.join(valid)}")
    result = list(hydra_overrides) + ([] if chosen else [f"hydra/launcher={name}"])
    if jobs is not None:
        if jobs < 1:
            raise BnexpError(f"--jobs {jobs}: must be >= 1")
        if name == "basic" and jobs > 1:
            raise BnexpError("hydra/launcher=basic runs one job at a time; use --launcher joblib for --jobs > 1")
        if name in PARALLEL_SETTING:
            result.append(f"hydra.launcher.{PARALLEL_SETTING[name]}={jobs}")
    return name, result


# Launcher settings that would run commands or move files (submitit's shell setup lines, extra
# sbatch or srun arguments, its working folder): never taken from a record, nor from the command line.
UNSAFE_LAUNCHER_SETTINGS = ("setup", "srun_args", "additional_parameters", "submitit_folder", "python")


def check_hydra_override(override: str, source: str = "") -> None:
    """Of Hydra's own settings a sweep takes only what bnexp itself sets: the launcher, its logging
    and plain launcher settings. Callbacks, ``_target_`` (anything Hydra would instantiate) and
    placement keys are refused with one line (``source`` names the file they came from)."""
    from bnexp.config.compose import PLACEMENT_KEYS

    key = override_key(override)
    where = f"{source}: " if source else ""
    if key in PLACEMENT_KEYS:
        raise BnexpError(f"{where}{key}=: bnexp places sweeps itself; use output_dir=DIR (sweeps go to DIR/sweeps)")
    if key in HYDRA_CHOICES:
        value = override.split("=", 1)[1] if "=" in override else ""
        if value in HYDRA_CHOICES[key]:
            return
        raise BnexpError(f"{where}{key}={value}: a sweep takes {key}={'|'.join(HYDRA_CHOICES[key])} (Hydra writes no "
                         "file of its own into a job's directory); refused")
    setting = key[len("hydra.launcher."):] if key.startswith("hydra.launcher.") else None
    if key == "hydra/launcher" or (
            setting and setting.isidentifier() and not setting.startswith("_")
            and setting not in UNSAFE_LAUNCHER_SETTINGS):
        return
    raise BnexpError(f"{where}{key}: not a setting a bnexp sweep takes (only hydra/launcher=NAME and plain "
                     "hydra.launcher.SETTING values; nothing Hydra would instantiate or run); refused")


def check_recorded_plan(p: Plan, source: Path) -> None:
    """Overrides read back from a sweep's record are data: every bnexp override must name a key of
    bnexp's own config (or a config group), every Hydra override a launcher setting bnexp writes.
    Anything else (``+hydra.callbacks.x._target_=...``, ``+model._target_=...``, a resolver) is refused
    with one line naming the file, before Hydra sees it."""
    from bnexp.config.compose import check_overrides, config_keys

    known = config_keys()
    for override in p.hydra_overrides:
        check_hydra_override(override, str(source))
    for override in [*p.overrides, *p.fixed, *(o for job in p.grid for o in job)]:
        try:
            check_overrides([override])
        except BnexpError as exc:
            raise BnexpError(f"{source}: {exc}") from None
        if override_key(override) not in known:
            raise BnexpError(f"{source}: {override_key(override)}: not a bnexp config key; refused")


def joblib_workers(n_jobs: int) -> int:
    """joblib's reading of n_jobs: -1 is every core, -2 all but one, ..."""
    cores = os.cpu_count() or 1
    return n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)


def threads_per_job(launcher_cfg) -> Optional[int]:
    """Torch threads for one job, so parallel jobs share the cores instead of oversubscribing them."""
    target = str(launcher_cfg.get("_target_", ""))
    if "joblib" in target:
        return max(1, (os.cpu_count() or 1) // joblib_workers(int(launcher_cfg.n_jobs)))
    if "LocalLauncher" in target:  # local jobs all start at once
        return launcher_cfg.get("cpus_per_task") or 1
    if "submitit" in target:  # called inside the Slurm job: its allocation
        from bnexp.engine.ranks import available_cpus

        return available_cpus()
    return None


def _alternatives(parsed: list, kind: str, base_types: dict[str, Any]) -> tuple[list[list[str]], dict[str, Any]]:
    """Per override, the override strings it can take (one for a fixed value), and for a search the
    Optuna distribution of each swept key."""
    import optuna.distributions as od
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep

    alternatives, space = [], {}
    for o in parsed:
        if not o.is_sweep_override():
            alternatives.append([o.input_line])
            continue
        key, value = o.get_key_element(), o.value()
        if kind == "grid":
            if not o.is_discrete_sweep():
                raise BnexpError(f"{o.input_line}: interval() is a search range, not a grid; "
                                 "add --trials N to search it with Optuna")
            alternatives.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            continue
        if isinstance(value, IntervalSweep):
            log = "log" in value.tags
            whole = float(value.start).is_integer() and float(value.end).is_integer()
            if "int" in value.tags or (whole and base_types.get(o.key_or_group) is int):
                space[key] = od.IntDistribution(int(value.start), int(value.end), log=log)
            else:
                space[key] = od.FloatDistribution(float(value.start), float(value.end), log=log)
            ends = [value.start, value.end]
            alternatives.append([f"{key}={_cast(v, space[key])}" for v in ends])
        elif isinstance(value, RangeSweep) and all(isinstance(v, int) for v in o.sweep_iterator()):
            values = list(o.sweep_iterator())
            space[key] = od.IntDistribution(min(values), max(values), step=abs(int(value.step)))
            alternatives.append([f"{key}={v}" for v in values])
        else:  # choices, glob() and float ranges: categorical over the override strings
            choices = list(o.sweep_string_iterator())
            space[key] = od.CategoricalDistribution(choices)
            alternatives.append([f"{key}={c}" for c in choices])
    return alternatives, space


def _cast(value, distribution):
    import optuna.distributions as od

    return int(value) if isinstance(distribution, od.IntDistribution) else value


def _validate(alternatives: list[list[str]], on_slurm: bool):
    """Compose and validate the first job, then every other value of each swept key on top of it:
    each value is checked once (a compose per value, not per combination) before anything runs.
    The data source of each of those configs is found once too (files present, or downloaded),
    so a missing dataset stops the sweep here instead of failing every job."""
    from bnexp.config.compose import compose, dataset_settings, validate

    first = [alts[0] for alts in alternatives]
    cfg = compose(first)
    validate(cfg, on_slurm=on_slurm)
    sources = {_source_key(cfg): cfg}
    for i, alts in enumerate(alternatives):
        for alt in alts[1:]:
            other = _with_value(cfg, alt) or compose(first[:i] + [alt] + first[i + 1:])
            validate(other, on_slurm=on_slurm)
            sources.setdefault(_source_key(other), other)
    if any(c.dataset.name != "digits" for c in sources.values()):  # digits ships with scikit-learn
        from bnexp.data.datasets import check_source

        for source in sources.values():
            check_source(dataset_settings(source))
    return cfg


def _with_value(cfg, override: str):
    """``cfg`` with a plain ``key=value`` set and type-checked, as composing would give it without
    composing again (~0.2 s per swept value); None for a config group choice, ``+``/``~`` or a
    value that does not fit, which :func:`compose` then handles (and words the error)."""
    import copy

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from bnexp.config.compose import check_schema
    from bnexp.config.schema import GROUP_SCHEMAS

    try:
        (parsed,) = OverridesParser.create().parse_overrides([override])
        key = parsed.key_or_group
        if parsed.is_add() or parsed.is_delete() or parsed.package is not None or "/" in key or \
                key in ("experiment", *GROUP_SCHEMAS):
            return None
        changed = copy.deepcopy(cfg)
        OmegaConf.update(changed, key, parsed.value(), merge=True)
        return check_schema(changed)
    except Exception:  # noqa: BLE001 - composing decides, and says what is wrong
        return None


def _source_key(cfg) -> str:
    d = cfg.dataset
    return repr([d.name, d.get("path"), d.get("images"), d.get("labels"), d.get("root"), d.get("download")])


def _slurm_resources(launcher: str, hydra_overrides: list[str], alternatives: list[list[str]], cfg) -> list[str]:
    """On Slurm, a job of ``nproc`` processes asks for that many cores (``--cpus-per-task``), and a
    job of ``nnodes`` nodes for that many machines with one task each (``--nodes``,
    ``--ntasks-per-node=1``: each task is one node's ``bnexp train``), unless the
    ``hydra.launcher`` settings say otherwise; inside the job each process takes its share of the
    allocation."""
    if launcher != "submitit_slurm":
        return []
    given = {override_key(o) for o in hydra_overrides}

    def most(key: str, first: int) -> int:
        return max([first, *(int(a.split("=", 1)[1]) for alts in alternatives for a in alts
                             if override_key(a) == key and a.split("=", 1)[1].isdigit())])

    wanted = {"cpus_per_task": most("nproc", cfg.nproc)}
    nodes = most("nnodes", cfg.nnodes)
    if nodes > 1 and not {"hydra.launcher.nodes", "hydra.launcher.tasks_per_node"} & given:
        wanted.update(nodes=nodes, tasks_per_node=1)
    return [f"hydra.launcher.{k}={v}" for k, v in wanted.items()
            if f"hydra.launcher.{k}" not in given and (v > 1 or k == "tasks_per_node")]


def describe(distribution_json: str) -> str:
    """``float in [0.01, 1.0], log``, ``int in [16, 64], step 16``, ``one of none, custom``."""
    import optuna.distributions as od

    d = od.json_to_distribution(distribution_json)
    if isinstance(d, od.CategoricalDistribution):
        return "one of " + ", ".join(map(str, d.choices))
    kind = "int" if isinstance(d, od.IntDistribution) else "float"
    notes = (["log"] if d.log else []) + ([f"step {d.step}"] if d.step not in (None, 1) else [])
    return f"{kind} in [{d.low}, {d.high}]" + "".join(f", {n}" for n in notes)


def _base_types(cfg) -> dict[str, Any]:
    from bnexp.core.keys import flatten

    return {k: type(v) for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()}


def plan(args: list[str], *, launcher: Optional[str] = None, jobs: Optional[int] = None,
         metric: str = "best_val_acc", trials: Optional[int] = None, sampler: str = "tpe",
         sampler_seed: int = 0, storage: Optional[str] = None) -> Plan:
    """Check a sweep request; every error is a one-line BnexpError and nothing is written."""
    import optuna.distributions as od

    from bnexp.config.compose import load
    from bnexp.launch.hydra_adapter import config_loader

    if metric not in METRICS:
        raise BnexpError(f"--metric {metric}: valid metrics are {', '.join(METRICS)}")
    if sampler not in SAMPLERS:
        raise BnexpError(f"--sampler {sampler}: valid samplers are {', '.join(SAMPLERS)}")
    if trials is not None and trials < 1:
        raise BnexpError(f"--trials {trials}: must be >= 1")
    for item in args:
        if "=" not in item and not item.startswith("~"):
            raise BnexpError(f"malformed override '{item}': expected key=value (e.g. norm=none,custom)")
    hydra_args = [a for a in args if override_key(a).split("/")[0].split(".")[0] == "hydra"]
    task = [a for a in args if a not in hydra_args]
    from bnexp.config.compose import check_overrides

    check_overrides(task)
    for override in hydra_args:
        check_hydra_override(override)
    if any(override_key(a) == "resume" for a in task):
        raise BnexpError("resume= continues one run; use `bnexp train resume=RUN` (or --study to continue a search)")
    loader = config_loader()
    name, hydra_overrides = _launcher(hydra_args, launcher, jobs, loader)
    parsed = _parse(task, loader)
    kind = "optuna" if trials else "grid"
    swept = [override_key(o.get_key_element()) for o in parsed if o.is_sweep_override()]
    if kind == "optuna" and not swept:
        raise BnexpError("--trials needs something to search, e.g. optimizer.lr=tag(log,interval(0.01,1)) or "
                         "norm=none,custom,builtin")
    base_types = _base_types(load([o.input_line for o in parsed if not o.is_sweep_override()])) if kind == "optuna" else {}
    alternatives, space = _alternatives(parsed, kind, base_types)
    cfg = _validate(alternatives, on_slurm=name == "submitit_slurm")
    hydra_overrides += _slurm_resources(name, hydra_overrides, alternatives, cfg)
    result = Plan(kind=kind, overrides=task, hydra_overrides=hydra_overrides, launcher=name, jobs_at_once=1,
                  metric=metric, swept=swept, fixed=[a[0] for a in alternatives if len(a) == 1 and
                                                     override_key(a[0]) not in swept],
                  space={k: od.distribution_to_json(d) for k, d in space.items()},
                  trials=trials or 0, sampler=sampler, sampler_seed=sampler_seed, storage=storage,
                  output_dir=str(Path(cfg.output_dir).expanduser().resolve()))
    if kind == "grid":
        result.grid = grid(parsed)
    return result


def grid(parsed: list) -> list[list[str]]:
    """Every combination of the parsed overrides' values, in Hydra's order (its basic sweeper's:
    the last override varies fastest; a key given twice keeps its first place and its last value)."""
    import itertools

    choices: dict[str, list[str]] = {}
    for o in parsed:
        key = o.get_key_element()
        choices[key] = ([f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
                        else [f"{key}={o.get_value_element_as_str()}"])
    return [list(job) for job in itertools.product(*choices.values())]
