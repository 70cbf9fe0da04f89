"""Sweeps: a grid through Hydra's own multirun machinery, or an Optuna search launched the same way.

A grid is parsed by Hydra's override grammar (comma lists, ``range()``, ``choice()``, ``glob()``),
expanded by its ``BasicSweeper`` and run by a launcher plugin (``hydra/launcher=basic|joblib|
submitit_local|submitit_slurm``). An Optuna search (``--trials N``) reads ``interval()``,
``tag(log, interval())``, ``range()`` and choices from the same grammar, asks the study for one
batch of trials at a time and hands each batch to the same launcher, so parallel and Slurm trials
work exactly as grid jobs do. The study lives in ``study.db`` (SQLite) inside the sweep directory,
so an interrupted search continues where it stopped.

Layout: ``<output_dir>/sweeps/<sweep id>/`` holds ``sweep.json`` (what was asked, the launcher,
every job's outcome), Hydra's ``multirun.yaml`` and one sub-directory per job
``<sweep id>-<job number>-<model>-<norm>``, each an ordinary run directory.

Hydra is imported inside the functions: the registry commands import this module for its tables.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from bnexp.dashboard import write_sweep_experiment
from bnexp.errors import BnexpError
from bnexp.registry import PLUMBING_KEYS, STATUS_STYLE, SWEEP_FILE, fmt_number, override_key, read_sweep, sort_runs
from bnexp.runs import RUN_FILE, iter_run_dirs, now_iso, read_json, write_json

METRICS = ("best_val_acc", "val_acc", "val_loss", "train_acc", "train_loss")
SAMPLERS = ("tpe", "random")
# Hydra logs nothing itself (the sweep prints its own lines) and jobs keep the working directory.
HYDRA_DEFAULTS = {"hydra/job_logging": "none", "hydra/hydra_logging": "none", "hydra.job.chdir": "false"}
# Launcher setting that `--jobs N` sets: how many jobs run at once.
PARALLEL_SETTING = {"joblib": "n_jobs", "submitit_slurm": "array_parallelism"}


def maximize(metric: str) -> bool:
    return "acc" in metric


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


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


# ---------------------------------------------------------------------------------------------
# Planning: parse, expand and validate before anything is written


def _search_path():
    from hydra._internal.utils import create_config_search_path

    from bnexp.config import config_dir

    return create_config_search_path(f"file://{config_dir()}")


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


def joblib_workers(n_jobs: int) -> int:
    """joblib's reading of n_jobs: -1 is every core, -2 all but one, ..."""
    cores = os.cpu_count() or 1
    return n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)


def threads_per_job(launcher_cfg) -> Optional[int]:
    """Torch threads for one job, so parallel jobs share the cores instead of oversubscribing them."""
    target = str(launcher_cfg.get("_target_", ""))
    if "joblib" in target:
        return max(1, (os.cpu_count() or 1) // joblib_workers(int(launcher_cfg.n_jobs)))
    if "submitit" in target:  # local jobs all start at once; Slurm gives each job cpus_per_task
        return launcher_cfg.get("cpus_per_task") or (1 if "LocalLauncher" in target else None)
    return None


def _alternatives(parsed: list, kind: str, base_types: dict[str, Any]) -> tuple[list[list[str]], dict[str, Any]]:
    """Per override, the override strings it can take (one for a fixed value), and for a search the
    Optuna distribution of each swept key."""
    import optuna.distributions as od
    from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep

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
            alternatives.append([f"{key}={Override._get_value_element_as_str(_cast(v, space[key]))}" for v in ends])
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


def _validate(alternatives: list[list[str]]):
    """Compose and validate the first job, then every other value of each swept key on top of it:
    each value is checked once (a compose per value, not per combination) before anything runs."""
    from bnexp.config import load

    first = [alts[0] for alts in alternatives]
    cfg = load(first)
    for i, alts in enumerate(alternatives):
        for alt in alts[1:]:
            load(first[:i] + [alt] + first[i + 1:])
    return cfg


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
    from bnexp.config import flatten

    return {k: type(v) for k, v in flatten(cfg).items()}


def plan(args: list[str], *, launcher: Optional[str] = None, jobs: Optional[int] = None,
         metric: str = "best_val_acc", trials: Optional[int] = None, sampler: str = "tpe",
         sampler_seed: int = 0) -> Plan:
    """Check a sweep request; every error is a one-line BnexpError and nothing is written."""
    import optuna.distributions as od
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    from bnexp.config import load

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
    if any(override_key(a) == "resume" for a in task):
        raise BnexpError("resume= continues one run; use `bnexp train resume=RUN` (or --study to continue a search)")
    loader = ConfigLoaderImpl(config_search_path=_search_path())
    name, hydra_overrides = _launcher(hydra_args, launcher, jobs, loader)
    parsed = _parse(task, loader)
    kind = "optuna" if trials else "grid"
    swept = [override_key(o.get_key_element()) for o in parsed if o.is_sweep_override()]
    if kind == "optuna" and not swept:
        raise BnexpError("--trials needs something to search, e.g. optimizer.lr=tag(log,interval(0.01,1)) or "
                         "norm=none,custom,builtin")
    base_types = _base_types(load([o.input_line for o in parsed if not o.is_sweep_override()])) if kind == "optuna" else {}
    alternatives, space = _alternatives(parsed, kind, base_types)
    cfg = _validate(alternatives)
    result = Plan(kind=kind, overrides=task, hydra_overrides=hydra_overrides, launcher=name, jobs_at_once=1,
                  metric=metric, swept=swept, fixed=[a[0] for a in alternatives if len(a) == 1 and
                                                     override_key(a[0]) not in swept],
                  space={k: od.distribution_to_json(d) for k, d in space.items()},
                  trials=trials or 0, sampler=sampler, sampler_seed=sampler_seed,
                  output_dir=str(Path(cfg.output_dir).expanduser().resolve()))
    if kind == "grid":
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        result.grid = BasicSweeper.split_arguments(parsed, None)[0]
    return result


# ---------------------------------------------------------------------------------------------
# The job: Hydra's task function


def job_row(summary: dict, run_dir: Path) -> dict:
    """What the sweep table needs of one job; shaped like a run record so the registry sorts it."""
    keys = ("id", "status", "overrides", "metrics", "duration_s", "message", "started")
    number = run_dir.name[len(run_dir.parent.name) + 1:].split("-")[0]  # <sweep id>-<number>-<model>-<norm>
    return {**{k: summary.get(k) for k in keys}, "dir": str(run_dir), "num": int(number) if number.isdigit() else None}


def run_job(cfg) -> dict:
    """Train one job in its job directory (an ordinary run directory). A failure is recorded in the
    job's run.json and returned, never raised, so one bad job does not stop the sweep."""
    from hydra.core.hydra_config import HydraConfig

    from bnexp.config import check_schema, validate
    from bnexp.train import train

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    message = None
    try:
        cfg = check_schema(cfg)
        if cfg.threads is None:
            cfg.threads = threads_per_job(hydra_cfg.launcher)
        validate(cfg)
        train(cfg, overrides, run_dir=run_dir, progress=False)
    except Exception as exc:  # the run's status says what happened; the sweep goes on
        message = one_line(exc)
    if (run_dir / RUN_FILE).is_file():
        row = job_row(read_json(run_dir / RUN_FILE), run_dir)
    else:  # failed before the run existed (e.g. its dataset could not be loaded)
        row = {"id": run_dir.name, "status": "failed", "overrides": overrides, "metrics": {}, "duration_s": 0.0,
               "message": message, "dir": str(run_dir), "num": hydra_cfg.job.num}
    best = (row["metrics"] or {}).get("best_val_acc")
    shown = f"best val acc {best:.4f}" if isinstance(best, (int, float)) else (row["message"] or "")
    chosen = " ".join(o for o in overrides if override_key(o) not in PLUMBING_KEYS)
    print(f"job {hydra_cfg.job.num} {row['status']} in {row['duration_s'] or 0:.1f} s ({shown}): {chosen}", flush=True)
    return row


# ---------------------------------------------------------------------------------------------
# Launching


def new_sweep_dir(output_dir: str, name: Optional[str]) -> Path:
    """``<output_dir>/sweeps/20261122-181503-sweep[-name]-3fa2``, created empty."""
    if name is not None and not re.fullmatch(r"[A-Za-z0-9_.]+", name):
        raise BnexpError(f"--name {name}: use letters, digits, '.' and '_' only")
    parent = Path(output_dir) / "sweeps"
    parent.mkdir(parents=True, exist_ok=True)
    label = f"-{name}" if name else ""
    for _ in range(100):
        path = parent / f"{time.strftime('%Y%m%d-%H%M%S')}-sweep{label}-{secrets.token_hex(2)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise BnexpError(f"could not create a unique sweep directory under {parent}")


def _hydra_overrides(p: Plan, sweep_dir: Path) -> list[str]:
    from hydra.core.override_parser.types import Override

    given = {override_key(o) for o in p.hydra_overrides}
    defaults = [f"{k}={v}" for k, v in HYDRA_DEFAULTS.items() if k not in given]
    return defaults + p.hydra_overrides + [
        f"hydra.sweep.dir={Override._get_value_element_as_str(str(sweep_dir))}",
        f"hydra.sweep.subdir={sweep_dir.name}-${{hydra.job.num}}-${{model.name}}-${{norm.kind}}",
    ]


class _Hydra:
    """Hydra's app object for this sweep: composes the multirun config, builds sweeper/launcher."""

    def __init__(self, p: Plan, sweep_dir: Path, task_overrides: list[str]):
        from hydra import version
        from hydra._internal.callbacks import Callbacks
        from hydra._internal.hydra import Hydra
        from hydra.core.global_hydra import GlobalHydra
        from hydra.types import HydraContext, RunMode

        from bnexp.config import register_schemas

        register_schemas()
        version.setbase("1.3")
        GlobalHydra.instance().clear()
        self.hydra = Hydra.create_main_hydra2("bnexp", _search_path())
        try:
            self.cfg = self.hydra.compose_config("config", _hydra_overrides(p, sweep_dir) + task_overrides,
                                                 run_mode=RunMode.MULTIRUN, with_log_configuration=True)
        except Exception as exc:
            raise BnexpError(f"Hydra rejected the sweep settings: {one_line(exc)}") from None
        self.callbacks = Callbacks(self.cfg)
        self.context = HydraContext(config_loader=self.hydra.config_loader, callbacks=self.callbacks)

    def task_params(self) -> dict[str, Any]:
        """The flattened bnexp config (no ``hydra`` node) of the sweep's defaults: the hparam types."""
        from omegaconf import OmegaConf

        from bnexp.config import flatten

        return flatten(OmegaConf.masked_copy(self.cfg, [k for k in self.cfg if k != "hydra"]))

    def jobs_at_once(self, p: Plan, jobs: Optional[int]) -> int:
        launcher = self.cfg.hydra.launcher
        if p.launcher == "joblib":
            return joblib_workers(int(launcher.n_jobs))
        if p.launcher == "submitit_slurm":
            return jobs or int(launcher.array_parallelism)
        return jobs or 1

    def sweep(self) -> list:
        """Hydra's multirun: BasicSweeper expands the grid and hands it to the launcher."""
        from hydra.core.plugins import Plugins
        from omegaconf import OmegaConf

        self.callbacks.on_multirun_start(config=self.cfg, config_name="config")
        sweeper = Plugins.instance().instantiate_sweeper(config=self.cfg, hydra_context=self.context,
                                                         task_function=run_job)
        returns = sweeper.sweep(arguments=OmegaConf.to_container(self.cfg.hydra.overrides.task))
        self.callbacks.on_multirun_end(config=self.cfg, config_name="config")
        return [r for batch in returns for r in batch]

    def launcher(self):
        from hydra.core.plugins import Plugins

        return Plugins.instance().instantiate_launcher(hydra_context=self.context, task_function=run_job,
                                                       config=self.cfg)


def _returned_rows(returns) -> list[dict]:
    from hydra.core.utils import JobStatus

    rows = []
    for r in returns:
        if r.status == JobStatus.COMPLETED:
            rows.append(r.return_value)
        else:  # the task function itself broke (it catches training errors); reading
            # r.return_value would re-raise its exception, hence the private attribute
            rows.append({"id": None, "status": "failed", "overrides": list(r.overrides or []), "metrics": {},
                         "duration_s": 0.0, "message": one_line(r._return_value), "dir": None, "num": None})
    return rows


def start(p: Plan, name: Optional[str], jobs: Optional[int]) -> tuple[Path, "_Hydra"]:
    """Create the sweep directory and its sweep.json; a Hydra error removes the directory again."""
    sweep_dir = new_sweep_dir(p.output_dir, name)
    try:
        app = _Hydra(p, sweep_dir, p.overrides if p.kind == "grid" else p.fixed)
    except BaseException:
        shutil.rmtree(sweep_dir, ignore_errors=True)
        raise
    p.jobs_at_once = app.jobs_at_once(p, jobs)
    write_json(sweep_dir / SWEEP_FILE, {"id": sweep_dir.name, "status": "running", "started": now_iso(),
                                        "ended": None, **asdict(p), "jobs": []})
    write_sweep_experiment(sweep_dir, app.task_params(), p.swept)
    return sweep_dir, app


def finish(sweep_dir: Path, status: str, rows: list[dict] = (), **extra: Any) -> dict:
    """Record the sweep's status and every job's outcome (``rows`` merged into those known) in sweep.json."""
    sweep = read_sweep(sweep_dir)
    sweep.update(status=status, ended=None if status == "running" else now_iso(),
                 jobs=job_rows(sweep_dir, list(rows)), **extra)
    write_json(sweep_dir / SWEEP_FILE, sweep)
    return sweep


def run(p: Plan, sweep_dir: Path, app: "_Hydra") -> list[dict]:
    """Launch every job; returns the rows of all the sweep's jobs. A launcher that fails before any
    job ran removes the sweep directory: nothing is left half-written."""
    extra: dict[str, Any] = {}
    try:
        if p.kind == "grid":
            rows = _returned_rows(app.sweep())
        else:
            rows, extra["optuna"] = _optimize(p, sweep_dir, app)
    except KeyboardInterrupt:
        finish(sweep_dir, "interrupted")
        raise
    except Exception as exc:
        if not any(iter_run_dirs(sweep_dir)):
            shutil.rmtree(sweep_dir, ignore_errors=True)
            raise BnexpError(f"sweep failed before any job ran (launcher {p.launcher}): {one_line(exc)}") from None
        finish(sweep_dir, "failed")
        raise BnexpError(f"sweep stopped (launcher {p.launcher}): {one_line(exc)}; its jobs so far: {sweep_dir}") from None
    return finish(sweep_dir, "completed", rows, **extra)["jobs"]


# ---------------------------------------------------------------------------------------------
# Optuna


def _study(p: Plan, sweep_dir: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (optuna.samplers.TPESampler(seed=p.sampler_seed) if p.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=p.sampler_seed))
    return optuna.create_study(storage=f"sqlite:///{sweep_dir / 'study.db'}", study_name=sweep_dir.name,
                               sampler=sampler, direction="maximize" if maximize(p.metric) else "minimize",
                               load_if_exists=True)


def _trial_overrides(p: Plan, space: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """A trial's overrides: categorical values are override strings already, numbers get Hydra's format."""
    import optuna.distributions as od
    from hydra.core.override_parser.types import Override

    sampled = [f"{k}={v}" if isinstance(space[k], od.CategoricalDistribution)
               else f"{k}={Override._get_value_element_as_str(v)}" for k, v in params.items()]
    return p.fixed + sampled


def _optimize(p: Plan, sweep_dir: Path, app: "_Hydra") -> tuple[list[dict], dict]:
    """Ask a batch of trials, launch them as Hydra jobs (job number = trial number), tell the results.
    Completed and diverged jobs report their metric; a job without one is a failed trial. Trials an
    interrupted sweep left running are marked failed first."""
    import optuna.distributions as od
    from optuna.trial import TrialState

    study, launcher = _study(p, sweep_dir), app.launcher()
    space = {k: od.json_to_distribution(v) for k, v in p.space.items()}
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        study.tell(stale.number, state=TrialState.FAIL)
    rows: list[dict] = []
    while (remaining := p.trials - len(study.get_trials(deepcopy=False))) > 0:
        batch = [study.ask(space) for _ in range(min(p.jobs_at_once, remaining))]
        results = _returned_rows(launcher.launch([_trial_overrides(p, space, t.params) for t in batch],
                                                 initial_job_idx=batch[0].number))
        for trial, row in zip(batch, results):
            value = (row["metrics"] or {}).get(p.metric)
            if row["id"]:
                trial.set_user_attr("run", row["id"])
            if row["status"] in ("completed", "diverged") and isinstance(value, (int, float)) and math.isfinite(value):
                study.tell(trial.number, value)
            else:
                study.tell(trial.number, state=TrialState.FAIL)
        rows += results
        finish(sweep_dir, "running", rows, optuna=study_summary(study))
    return rows, study_summary(study)


def study_summary(study) -> dict:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    summary = {"study": study.study_name, "storage": "study.db", "trials": len(study.get_trials(deepcopy=False)),
               "completed": len(done)}
    if done:
        best = study.best_trial
        summary["best"] = {"trial": best.number, "value": best.value, "params": best.params,
                           "run": best.user_attrs.get("run")}
    return summary


def resume_plan(ref: str, trials: Optional[int], jobs: Optional[int]) -> tuple[Plan, Path, "_Hydra"]:
    """The plan of an earlier Optuna sweep, to continue its study in its own directory up to ``trials``."""
    from bnexp.config import load
    from bnexp.registry import resolve

    kind, sweep_dir = resolve(ref, Path(load([]).output_dir))
    sweep = read_sweep(sweep_dir) if kind == "sweep" else {}
    if sweep.get("kind") != "optuna":
        raise BnexpError(f"--study {ref}: {sweep_dir.name} is not an Optuna search (those are made with --trials)")
    if trials is not None and trials < 1:
        raise BnexpError(f"--trials {trials}: must be >= 1")
    p = Plan(**{k: v for k, v in sweep.items() if k in Plan.__dataclass_fields__})
    p.trials = trials or p.trials
    sweep_dir = sweep_dir.resolve()
    app = _Hydra(p, sweep_dir, p.fixed)
    if jobs:
        p.jobs_at_once = app.jobs_at_once(p, jobs)
    sweep.update(status="running", ended=None, trials=p.trials, jobs_at_once=p.jobs_at_once)
    write_json(sweep_dir / SWEEP_FILE, sweep)
    return p, sweep_dir, app


# ---------------------------------------------------------------------------------------------
# Reading a sweep back


def job_rows(sweep_dir: Path, new_rows: list[dict] = ()) -> list[dict]:
    """Every job of a sweep, fresh from each job's run.json, plus jobs recorded without one (they
    failed before training started). Jobs deleted since (``bnexp rm``) are dropped."""
    known = list(read_sweep(sweep_dir).get("jobs", [])) + list(new_rows)
    rows = {row.get("id") or f"#{i}": row for i, row in enumerate(known)}
    for run_dir in iter_run_dirs(sweep_dir):
        try:
            rows[run_dir.name] = job_row(read_json(run_dir / RUN_FILE), run_dir)
        except (OSError, ValueError):
            continue
    return [row for row in rows.values() if not row.get("dir") or Path(row["dir"]).exists()]


def swept_part(row: dict, swept: list[str]) -> list[str]:
    return [o for o in row.get("overrides") or [] if override_key(o) in swept]


def table(sweep: dict, rows: list[dict], metric: str):
    """The Rich table of a sweep's jobs, best first by ``metric``; failed jobs last."""
    from rich.table import Table

    rows = sort_runs(rows, metric)
    best = next((r for r in rows if r["status"] == "completed"), None)
    t = Table(title=f"sweep {sweep['id']} ({sweep.get('kind', 'grid')}, {len(rows)} jobs, sorted by {metric})",
              title_justify="left")
    for name, justify in (("#", "right"), ("overrides", "left"), ("status", "left"), ("val acc", "right"),
                          ("best val acc", "right"), ("time", "right")):
        t.add_column(name, justify=justify, no_wrap=name != "overrides")
    for row in rows:
        m = row.get("metrics") or {}
        style = STATUS_STYLE.get(row["status"], "red")
        values = [fmt_number(m.get(k)) for k in ("val_acc", "best_val_acc")]
        t.add_row(str(row["num"] if row["num"] is not None else "?"), " ".join(swept_part(row, sweep.get("swept", []))),
                  f"[{style}]{row['status']}[/{style}]", *values, f"{row.get('duration_s') or 0:.1f} s",
                  style="bold" if row is best else None)
    return t

