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

Planning lives in :mod:`bnexp.launch.plan`, the job function in :mod:`bnexp.launch.job`; this module is
the session (start, run, finish, resume) behind one Hydra adapter (:class:`_Hydra`), the Optuna
loop, and the Slurm script. Hydra is imported inside the functions.
"""

from __future__ import annotations

import os
import shlex
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from bnexp.config.compose import one_line, validate_name
from bnexp.core.errors import BnexpError
from bnexp.core.keys import override_key
from bnexp.core.vocab import higher_is_better
from bnexp.launch.job import lost_job, report_job, run_job
from bnexp.launch.plan import HYDRA_DEFAULTS, Plan, _search_path, check_recorded_plan, joblib_workers
from bnexp.store.catalog import iter_run_dirs, resolve
from bnexp.store.files import SWEEP_FILE, UnreadableFile, now_iso, write_json
from bnexp.store.lock import DirLock, busy_message, is_locked, owner_info
from bnexp.store.record import RunRecord, read_record
from bnexp.store.registry import read_sweep
from bnexp.store.run import Run, unique_dir
from bnexp.store.sweeps import job_number, job_rows
from bnexp.tracking.hparams import write_sweep_experiment

# ---------------------------------------------------------------------------------------------
# Planning: parse, expand and validate before anything is written


# ---------------------------------------------------------------------------------------------
# The job: Hydra's task function


# ---------------------------------------------------------------------------------------------
# Launching


def new_sweep_dir(output_dir: str, name: Optional[str]) -> Path:
    """``<output_dir>/sweeps/20261122-181503-sweep[-name]-3fa2``, created empty."""
    validate_name("--name", name)
    label = f"-{name}" if name else ""
    return unique_dir(Path(output_dir) / "sweeps", f"{time.strftime('%Y%m%d-%H%M%S')}-sweep{label}")


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
        self.dir = sweep_dir
        from hydra import version
        from hydra._internal.callbacks import Callbacks
        from hydra._internal.hydra import Hydra
        from hydra.core.global_hydra import GlobalHydra
        from hydra.types import HydraContext, RunMode

        from bnexp.config.schema import register_schemas

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

        from bnexp.core.keys import flatten

        return flatten(OmegaConf.to_container(OmegaConf.masked_copy(self.cfg, [k for k in self.cfg if k != "hydra"]),
                                              resolve=True))

    def jobs_at_once(self, p: Plan, jobs: Optional[int]) -> int:
        launcher = self.cfg.hydra.launcher
        if p.launcher == "joblib":
            return joblib_workers(int(launcher.n_jobs))
        if p.launcher == "submitit_slurm":
            return jobs or int(launcher.array_parallelism)
        return jobs or 1

    def sweep(self, jobs: dict[int, list[str]]) -> list:
        """Hydra's multirun of the grid's ``jobs`` (by job number; a continued sweep's pending ones),
        each into its own directory. The grid was expanded and every value validated while planning,
        so Hydra's sweeper (which composes every job once more to validate it) is not needed."""
        from omegaconf import OmegaConf

        self.callbacks.on_multirun_start(config=self.cfg, config_name="config")
        self.dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.cfg, self.dir / "multirun.yaml")
        returns = []
        for chunk in _runs_of_consecutive(sorted(jobs)):  # a launch numbers its jobs consecutively
            returns += self.launch([[*jobs[i], f"hydra.sweep.subdir={self.dir.name}-{i}-${{model.name}}-${{norm.kind}}"]
                                    for i in chunk], initial_job_idx=chunk[0])
        self.callbacks.on_multirun_end(config=self.cfg, config_name="config")
        return returns

    def launcher(self):
        from hydra.core.plugins import Plugins

        launcher = Plugins.instance().instantiate_launcher(hydra_context=self.context, task_function=run_job,
                                                           config=self.cfg)
        if hasattr(launcher, "_EXECUTOR"):  # submitit: launched by bnexp.launch.cluster (see there why)
            launcher.launch = lambda jobs, initial_job_idx: self.launch_submitit(launcher, jobs, initial_job_idx)
        return launcher

    def launch(self, jobs: list[list[str]], initial_job_idx: int) -> list:
        return self.launcher().launch(jobs, initial_job_idx=initial_job_idx)

    def launch_submitit(self, launcher, jobs: list[list[str]], initial_job_idx: int) -> list:
        from bnexp.launch import cluster

        def ended(number: int, overrides: list[str], returned, reason: Optional[str]) -> RunRecord:
            row = _returned_rows([returned])[0] if returned is not None else lost_job(self.dir, number, overrides, reason)
            report_job(row, overrides)
            return row

        return cluster.launch(launcher, jobs, initial_job_idx, ended)


def _runs_of_consecutive(numbers: list[int]) -> list[list[int]]:
    """``[0, 1, 2, 5, 6]`` -> ``[[0, 1, 2], [5, 6]]``."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and runs[-1][-1] == n - 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return runs


def _returned_rows(returns) -> list[RunRecord]:
    from hydra.core.utils import JobStatus

    rows = []
    for r in returns:
        if isinstance(r, RunRecord):  # made by bnexp.launch.cluster already
            rows.append(r)
        elif r.status == JobStatus.COMPLETED:
            rows.append(r.return_value)
        else:  # the task function itself broke (it catches training errors); reading
            # r.return_value would re-raise its exception, hence the private attribute
            if isinstance(r._return_value, KeyboardInterrupt):
                raise KeyboardInterrupt
            rows.append(RunRecord(id="?", status="failed", overrides=list(r.overrides or []),
                                  message=one_line(r._return_value)))
    return rows


@dataclass
class Session:
    """A sweep being run by this process: its plan, directory, Hydra app and lock."""

    plan: Plan
    dir: Path
    hydra: "_Hydra"
    lock: Optional[DirLock]  # None for a worker of a search: many work on one sweep at once
    worker: bool = False

    def release(self) -> None:
        if self.lock:
            self.lock.release()

    def save(self, **changes: Any) -> dict:
        """Update sweep.json (as stored, not as shown) with ``changes``."""
        from bnexp.store.files import read_json_object

        sweep = read_json_object(self.dir / SWEEP_FILE)
        sweep.update(changes)
        write_json(self.dir / SWEEP_FILE, sweep)
        return sweep


def start(p: Plan, name: Optional[str], jobs: Optional[int], worker: bool = False) -> Session:
    """Create the sweep directory, lock it and write sweep.json; a Hydra error removes it again.
    ``worker``: this process then works on the search as one of its workers."""
    sweep_dir = new_sweep_dir(p.output_dir, name)
    p = in_process(p) if worker else p
    try:
        lock = DirLock(sweep_dir).acquire(lambda: busy_message(sweep_dir, "sweep"))
        app = _Hydra(p, sweep_dir, p.overrides if p.kind == "grid" else p.fixed)
        p.jobs_at_once = app.jobs_at_once(p, jobs)
        write_json(sweep_dir / SWEEP_FILE, {"id": sweep_dir.name, "status": "running", "started": now_iso(),
                                            "ended": None, "owner": owner_info(), "heartbeat": now_iso(),
                                            **asdict(p), "jobs": []})
        write_sweep_experiment(sweep_dir, app.task_params(), p.swept)
        if p.kind == "optuna":  # created now, so that workers started next find it
            _study(p, sweep_dir)
    except BaseException:
        shutil.rmtree(sweep_dir, ignore_errors=True)
        raise
    return Session(p, sweep_dir, app, lock, worker=worker)


def finish(session: Session, status: str, rows: list = (), **extra: Any) -> list[RunRecord]:
    """Record the sweep's status and every job's outcome (``rows`` merged into those known);
    returns the jobs as recorded."""
    ended = status != "running"
    jobs = job_rows(session.dir, list(rows))
    session.save(status=status, ended=now_iso() if ended else None, heartbeat=now_iso(),
                 owner=None if ended else owner_info(), jobs=[r.as_dict() for r in jobs], **extra)
    return jobs


def run(session: Session) -> list[RunRecord]:
    """Launch every job (of a resumed sweep: every job not yet completed or diverged); returns the
    rows of all the sweep's jobs. A launcher that fails before any job ran removes a new sweep's
    directory: nothing is left half-written. Ctrl-C or SIGTERM stops the workers, and their jobs
    are recorded as interrupted."""
    p, extra = session.plan, {}
    try:
        if p.kind == "grid":
            rows = _returned_rows(session.hydra.sweep(pending_jobs(session.dir, p)))
        else:
            rows, extra["optuna"] = _optimize(session)
    except KeyboardInterrupt:
        if not session.worker:  # a worker's trial is re-proposed by the other workers
            reap(session.dir)
            finish(session, "interrupted")
        session.release()
        raise
    except Exception as exc:
        session.release()
        if not any(iter_run_dirs(session.dir)) and not lists_jobs(session.dir):
            shutil.rmtree(session.dir, ignore_errors=True)
            raise BnexpError(f"sweep failed before any job ran (launcher {p.launcher}): {one_line(exc)}") from None
        finish(session, "failed")
        raise BnexpError(f"sweep stopped (launcher {p.launcher}): {one_line(exc)}; its jobs so far: {session.dir}") from None
    jobs = finish(session, outcome(job_rows(session.dir, rows)), rows, **extra)
    session.release()
    return jobs


def outcome(rows: list) -> str:
    """A finished sweep's status: ``completed`` when every job ended with a result (completed, or
    diverged: a result of the study too), ``failed`` when none did, else ``partial``."""
    done = sum(1 for r in rows if r.status in ("completed", "diverged"))
    return "completed" if rows and done == len(rows) else ("partial" if done else "failed")


def lists_jobs(sweep_dir: Path) -> bool:
    """Whether sweep.json already lists jobs (a resumed sweep keeps its directory, whatever happens)."""
    try:
        return bool(read_sweep(sweep_dir).get("jobs"))
    except UnreadableFile:
        return False


def reap(sweep_dir: Path, wait_s: float = 10.0) -> int:
    """After the sweep was stopped: every job still marked running is recorded as interrupted once
    its worker is gone (waiting up to ``wait_s`` for workers to exit). Returns how many."""
    deadline = time.monotonic() + wait_s
    reaped = 0
    for run_dir in iter_run_dirs(sweep_dir):
        try:
            if read_record(run_dir).status != "running":
                continue
        except UnreadableFile:
            continue
        while is_locked(run_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            run = Run.open(run_dir)
        except BnexpError:
            continue  # still held: that job is ending on its own and records its own status
        try:
            if run.record.status == "running":
                run.finish("interrupted", f"its sweep was stopped; continue with: bnexp sweep --resume {sweep_dir.name}")
                reaped += 1
        finally:
            run.close()
    return reaped


# ---------------------------------------------------------------------------------------------
# Optuna


def _study(p: Plan, sweep_dir: Path, worker: bool = False):
    """The search's study (see :mod:`bnexp.launch.search` for where it lives). The sampler's seed is
    advanced by the trials the study already has: a continued search starts a new random stream
    instead of proposing its first points again."""
    import optuna

    from bnexp.launch.search import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if higher_is_better(p.metric) else "minimize"
    study = optuna.create_study(storage=open_storage(sweep_dir, p.storage), study_name=sweep_dir.name,
                                direction=direction, load_if_exists=True)
    seed = p.sampler_seed + 1_000_003 * len(study.get_trials(deepcopy=False)) + os.getpid() % 9973 * worker
    study.sampler = (optuna.samplers.TPESampler(seed=seed) if p.sampler == "tpe"
                     else optuna.samplers.RandomSampler(seed=seed))
    return study


def _trial_overrides(p: Plan, space: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """A trial's overrides: categorical values are override strings already, numbers get Hydra's format."""
    import optuna.distributions as od
    from hydra.core.override_parser.types import Override

    sampled = [f"{k}={v}" if isinstance(space[k], od.CategoricalDistribution)
               else f"{k}={Override._get_value_element_as_str(v)}" for k, v in params.items()]
    return p.fixed + sampled


def _optimize(session: Session) -> tuple[list[RunRecord], dict]:
    """Ask a batch of trials, launch them as Hydra jobs (job number = trial number), tell the results.
    Completed and diverged jobs report their metric; a job without one is a failed trial. Trials
    whose process is gone (an interrupted sweep's, a killed worker's) are failed and re-proposed."""
    import optuna.distributions as od

    from bnexp.launch import search

    p = session.plan
    study = _study(p, session.dir, session.worker)
    space = {k: od.json_to_distribution(v) for k, v in p.space.items()}
    if session.worker:
        return _work(session, study, space)
    search.reclaim_lost(study, orphans=True)
    rows: list[RunRecord] = []
    while (remaining := p.trials - len(study.get_trials(deepcopy=False))) > 0:
        batch = [study.ask(space) for _ in range(min(p.jobs_at_once, remaining))]
        results = _returned_rows(session.hydra.launch([_trial_overrides(p, space, t.params) for t in batch],
                                                      initial_job_idx=batch[0].number))
        for trial, row in zip(batch, results):
            search.tell(study, trial, row, p.metric)
        rows += results
        finish(session, "running", rows, optuna=study_summary(study, search.storage_label(session.dir, p.storage)))
    return rows, study_summary(study, search.storage_label(session.dir, p.storage))


def _work(session: Session, study, space: dict) -> tuple[list[RunRecord], dict]:
    """This process as one worker of the search: ask, train (in this process), tell, until the
    study has the asked number of completed trials (see :mod:`bnexp.launch.search`)."""
    from bnexp.launch import search

    p, rows = session.plan, []

    def train_trial(trial, number: int) -> RunRecord:
        (row,) = _returned_rows(session.hydra.launch([_trial_overrides(p, space, trial.params)],
                                                     initial_job_idx=number))
        rows.append(row)
        return row

    search.work(study, space, p.trials, train_trial, p.metric)
    return rows, study_summary(study, search.storage_label(session.dir, p.storage))


def study_summary(study, storage: str) -> dict:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    summary = {"study": study.study_name, "storage": storage,
               "trials": len(study.get_trials(deepcopy=False)), "completed": len(done)}
    if done:
        best = study.best_trial
        summary["best"] = {"trial": best.number, "value": best.value, "params": best.params,
                           "run": best.user_attrs.get("run")}
    return summary


# ---------------------------------------------------------------------------------------------
# Continuing a sweep


def pending_jobs(sweep_dir: Path, p: Plan) -> dict[int, list[str]]:
    """Of a grid, the jobs still to run by number: those not completed or diverged (failed,
    interrupted, dead, or never started); all of them for a new sweep."""
    done = {job_number(r): r.status for r in job_rows(sweep_dir) if job_number(r) is not None}
    return {i: job for i, job in enumerate(p.grid) if done.get(i) not in ("completed", "diverged")}


def in_process(p: Plan) -> Plan:
    """The plan with its jobs run in this process (Hydra's basic launcher): how a worker trains."""
    from dataclasses import replace

    kept = [o for o in p.hydra_overrides if not override_key(o).startswith(("hydra/launcher", "hydra.launcher"))]
    return replace(p, hydra_overrides=[*kept, "hydra/launcher=basic"], launcher="basic", jobs_at_once=1)


def join(ref: str, trials: Optional[int], sampler_seed: Optional[int] = None, storage: Optional[str] = None) -> Session:
    """This process as one more worker of an Optuna search (no lock: any number work at once)."""
    from bnexp.config.compose import load

    kind, sweep_dir = resolve(ref, Path(load([]).output_dir))
    if kind != "sweep":
        raise BnexpError(f"--study {ref}: {sweep_dir.name} is a run, not a sweep")
    sweep_dir = sweep_dir.resolve()
    sweep = read_sweep(sweep_dir)
    p = Plan(**{k: v for k, v in sweep.items() if k in Plan.__dataclass_fields__})
    check_recorded_plan(p, sweep_dir / SWEEP_FILE)
    if p.kind != "optuna":
        raise BnexpError(f"--study {ref}: {sweep_dir.name} is not an Optuna search (those are made with --trials)")
    if trials is not None:
        if trials < 1:
            raise BnexpError(f"--trials {trials}: must be >= 1")
        p.trials = trials
    p.sampler_seed = sampler_seed if sampler_seed is not None else p.sampler_seed
    p.storage = storage or p.storage
    p = in_process(p)
    return Session(p, sweep_dir, _Hydra(p, sweep_dir, p.fixed), None, worker=True)


def resume(ref: str, trials: Optional[int], jobs: Optional[int], sampler_seed: Optional[int] = None) -> Session:
    """Continue an earlier sweep in its own directory: a grid re-runs the jobs that did not complete
    (continuing each from its checkpoint); a search goes on up to ``trials`` trials."""
    from bnexp.config.compose import load

    kind, sweep_dir = resolve(ref, Path(load([]).output_dir))
    if kind != "sweep":
        raise BnexpError(f"{ref} is a run, not a sweep; continue a run with: bnexp train resume={sweep_dir.name}")
    sweep_dir = sweep_dir.resolve()
    lock = DirLock(sweep_dir).acquire(lambda: busy_message(sweep_dir, "sweep"))
    try:
        sweep = read_sweep(sweep_dir)
        p = Plan(**{k: v for k, v in sweep.items() if k in Plan.__dataclass_fields__})
        check_recorded_plan(p, sweep_dir / SWEEP_FILE)
        if trials is not None:
            if p.kind != "optuna":
                raise BnexpError(f"--trials {trials}: {sweep_dir.name} is a grid; --trials continues Optuna searches")
            if trials < 1:
                raise BnexpError(f"--trials {trials}: must be >= 1")
            p.trials = trials
        if sampler_seed is not None:
            p.sampler_seed = sampler_seed
        app = _Hydra(p, sweep_dir, p.fixed if p.kind == "optuna" else p.overrides)
        if jobs:
            p.jobs_at_once = app.jobs_at_once(p, jobs)
        session = Session(p, sweep_dir, app, lock)
        session.save(status="running", ended=None, owner=owner_info(), heartbeat=now_iso(), trials=p.trials,
                     jobs_at_once=p.jobs_at_once, sampler_seed=p.sampler_seed)
        return session
    except BaseException:
        lock.release()
        raise


# ---------------------------------------------------------------------------------------------
# Reading a sweep back


# ---------------------------------------------------------------------------------------------
# Slurm: the sbatch script of a sweep, shown by --dry-run


def slurm_script(p: Plan) -> tuple[str, list[str]]:
    """The sbatch script submitit would write for this sweep on Slurm (``--launcher submitit_slurm``),
    rendered here without a cluster (submitit's own ``_make_sbatch_string``, fed the launcher settings
    as hydra-submitit-launcher and submitit translate them: ``hydra.launcher.gpus_per_node=2`` ->
    ``--gpus-per-node=2``, one array task per job); the sweep id is a placeholder. Also returns
    notes on how the settings fit the jobs' ``nproc``: each job is one Slurm task, whose
    ``bnexp train`` starts the job's ``nproc`` processes itself on its node."""
    import sys

    from omegaconf import OmegaConf
    from submitit.auto.auto import AutoExecutor
    from submitit.slurm import slurm

    from bnexp.core.keys import override_value

    hydra = _Hydra(p, Path(p.output_dir) / "sweeps" / "SWEEP_ID", p.overrides if p.kind == "grid" else p.fixed)
    settings = OmegaConf.to_container(hydra.cfg.hydra.launcher, resolve=True)
    folder = settings.pop("submitit_folder")
    generic, renamed = AutoExecutor._typed_parameters(), slurm.SlurmExecutor._equivalence_dict()
    params = {(renamed.get(k, k) if k in generic else k): v for k, v in settings.items()
              if v is not None and k not in ("_target_", "max_num_timeout")}
    if "mem" in params:
        params["mem"] = slurm._convert_mem(params["mem"])
    jobs = len(p.grid) if p.kind == "grid" else p.jobs_at_once
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    script = slurm._make_sbatch_string(command=command, folder=folder, map_count=jobs if jobs > 1 else None, **params)
    jobs_overrides = p.grid if p.kind == "grid" else [p.fixed]
    nproc = max(int(override_value(job, "nproc") or 1) for job in jobs_overrides)
    notes = []
    if settings["tasks_per_node"] != 1 or settings["nodes"] != 1:
        notes.append(f"hydra.launcher.tasks_per_node={settings['tasks_per_node']} nodes={settings['nodes']}: every "
                     "Slurm task would train the same job; keep one task on one node per job (bnexp starts the "
                     "job's nproc processes itself)")
    gpus = settings.get("gpus_per_node")
    if nproc > 1 and not gpus:
        notes.append(f"nproc={nproc} without hydra.launcher.gpus_per_node: the processes train on CPU (gloo); for "
                     f"CUDA (NCCL, one GPU per process) set hydra.launcher.gpus_per_node={nproc}")
    elif gpus and gpus < nproc:
        notes.append(f"nproc={nproc} with hydra.launcher.gpus_per_node={gpus}: NCCL needs one GPU per process; "
                     f"set hydra.launcher.gpus_per_node={nproc} (or train those jobs with device=cpu)")
    return script, notes
