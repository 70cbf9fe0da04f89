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

Planning lives in :mod:`bnexp.launch.plan`, the job function in :mod:`bnexp.launch.job`, the Optuna
loop in :mod:`bnexp.launch.search`, Slurm (launching, the sbatch script) in :mod:`bnexp.launch.cluster`;
this module is the session (start, run, finish, resume). What it needs of Hydra beyond its public
API goes through :mod:`bnexp.launch.hydra_adapter`. Hydra is imported inside the functions.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from bnexp.config.compose import one_line, validate_name
from bnexp.core.errors import BnexpError
from bnexp.core.keys import override_key
from bnexp.launch.job import lost_job, report_job, run_job
from bnexp.launch.plan import HYDRA_DEFAULTS, Plan, check_recorded_plan, joblib_workers
from bnexp.store.catalog import iter_run_dirs, resolve
from bnexp.store.files import SWEEP_FILE, UnreadableFile, now_iso, write_atomic, write_json
from bnexp.store.lock import DirLock, busy_message, is_locked, owner_info
from bnexp.store.record import RunRecord, read_record
from bnexp.store.registry import read_sweep
from bnexp.store.run import Run, unique_dir
from bnexp.store.safeio import write_record
from bnexp.store.sweeps import job_number, job_rows
from bnexp.tracking.hparams import write_sweep_experiment

# ---------------------------------------------------------------------------------------------
# Launching


def new_sweep_dir(output_dir: str, name: Optional[str]) -> Path:
    """``<output_dir>/sweeps/20261122-181503-sweep[-name]-3fa2``, created empty."""
    validate_name("--name", name)
    label = f"-{name}" if name else ""
    return unique_dir(Path(output_dir) / "sweeps", f"{time.strftime('%Y%m%d-%H%M%S')}-sweep{label}")


def _hydra_overrides(p: Plan, sweep_dir: Path) -> list[str]:
    from hydra.core.override_parser.types import Quote, QuotedString

    given = {override_key(o) for o in p.hydra_overrides}
    defaults = [f"{k}={v}" for k, v in HYDRA_DEFAULTS.items() if k not in given]
    return defaults + p.hydra_overrides + [
        f"hydra.sweep.dir={QuotedString(text=str(sweep_dir), quote=Quote.single).with_quotes()}",
        f"hydra.sweep.subdir={sweep_dir.name}-${{hydra.job.num}}-${{model.name}}-${{norm.kind}}",
    ]


class _Hydra:
    """This sweep's Hydra app (:class:`bnexp.launch.hydra_adapter.MultirunApp`): the multirun
    config of its plan, and its launcher running :func:`bnexp.launch.job.run_job` per job."""

    def __init__(self, p: Plan, sweep_dir: Path, task_overrides: list[str]):
        from bnexp.launch.hydra_adapter import MultirunApp

        self.dir = sweep_dir
        try:
            self.app = MultirunApp(_hydra_overrides(p, sweep_dir) + task_overrides)
        except Exception as exc:
            raise BnexpError(f"Hydra rejected the sweep settings: {one_line(exc)}") from None
        self.cfg = self.app.cfg

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

        returns = []
        with self.app.multirun():
            self.dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.dir / "multirun.yaml", OmegaConf.to_yaml(self.cfg))  # replaces a planted link, not its target
            for chunk in _runs_of_consecutive(sorted(jobs)):  # a launch numbers its jobs consecutively
                returns += self.launch([[*jobs[i], f"hydra.sweep.subdir={self.dir.name}-{i}-${{model.name}}-${{norm.kind}}"]
                                        for i in chunk], initial_job_idx=chunk[0])
        return returns

    def launch(self, jobs: list[list[str]], initial_job_idx: int) -> list:
        """Run ``jobs`` with the configured launcher, numbered from ``initial_job_idx``; submitit's
        are launched by :mod:`bnexp.launch.cluster` (see there why)."""
        from bnexp.launch.hydra_adapter import submitit_settings

        launcher = self.app.launcher(run_job)
        submitit = submitit_settings(launcher)
        if submitit is None:
            return launcher.launch(jobs, initial_job_idx=initial_job_idx)
        from bnexp.launch import cluster

        def ended(number: int, overrides: list[str], returned, reason: Optional[str]) -> RunRecord:
            row = _returned_rows([returned])[0] if returned is not None else lost_job(self.dir, number, overrides, reason)
            report_job(row, overrides)
            return row

        return cluster.launch(launcher, submitit, jobs, initial_job_idx, ended)


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

    from bnexp.launch.hydra_adapter import job_error

    rows = []
    for r in returns:
        if isinstance(r, RunRecord):  # made by bnexp.launch.cluster already
            rows.append(r)
        elif r.status == JobStatus.COMPLETED:
            rows.append(r.return_value)
        else:  # the task function itself broke (it catches training errors)
            error = job_error(r)
            if isinstance(error, KeyboardInterrupt):
                raise KeyboardInterrupt
            rows.append(RunRecord(id="?", status="failed", overrides=list(r.overrides or []),
                                  message=one_line(error)))
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
        write_record(self.dir / SWEEP_FILE, sweep)  # in place on a full disk: the sweep never looks alive
        return sweep


def start(p: Plan, name: Optional[str], jobs: Optional[int], worker: bool = False) -> Session:
    """Create the sweep directory, lock it and write sweep.json; a Hydra error removes it again.
    ``worker``: this process then works on the search as one of its workers."""
    sweep_dir = new_sweep_dir(p.output_dir, name)
    p = in_process(p) if worker else p
    try:
        lock = DirLock(sweep_dir).acquire(lambda: busy_message(sweep_dir, "sweep"))
        app = _Hydra(p, sweep_dir, p.overrides if p.kind == "grid" else p.fixed)
        p.jobs_at_once = p.workers or app.jobs_at_once(p, jobs)
        write_json(sweep_dir / SWEEP_FILE, {"id": sweep_dir.name, "status": "running", "started": now_iso(),
                                            "ended": None, "owner": owner_info(), "heartbeat": now_iso(),
                                            **asdict(p), "jobs": []})
        write_sweep_experiment(sweep_dir, app.task_params(), p.swept)
        if p.kind == "optuna":  # created now, so that workers started next find it
            from bnexp.launch.search import open_study

            open_study(p, sweep_dir)
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
            rows, extra["optuna"] = _search(session)
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


def _search(session: Session) -> tuple[list[RunRecord], dict]:
    """An Optuna search (:mod:`bnexp.launch.search`) whose trials this sweep's launcher trains;
    a search launching batches records its progress in sweep.json after each batch."""
    from bnexp.launch import search

    def launch(jobs: list[list[str]], first: int) -> list[RunRecord]:
        return _returned_rows(session.hydra.launch(jobs, initial_job_idx=first))

    if session.worker:
        return search.work_on(session.plan, session.dir, launch)
    if session.plan.workers:
        from bnexp.launch import workers
        from bnexp.launch.hydra_adapter import submitit_settings

        return workers.drive(session.plan, session.dir, submitit_settings(session.hydra.app.launcher(run_job)))
    return search.optimize(session.plan, session.dir, launch,
                           lambda rows, summary: finish(session, "running", rows, optuna=summary))


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
# Continuing a sweep


def pending_jobs(sweep_dir: Path, p: Plan) -> dict[int, list[str]]:
    """Of a grid, the jobs still to run by number: those not completed or diverged (failed,
    interrupted, dead, or never started); all of them for a new sweep."""
    from bnexp.store.resume import runs_again

    done = {job_number(r): r.status for r in job_rows(sweep_dir) if job_number(r) is not None}
    return {i: job for i, job in enumerate(p.grid) if runs_again(done.get(i))}


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


def resume(ref: str, trials: Optional[int], jobs: Optional[int], sampler_seed: Optional[int] = None,
           workers: Optional[int] = None) -> Session:
    """Continue an earlier sweep in its own directory: a grid re-runs the jobs that did not complete
    (continuing each from its checkpoint); a search goes on up to ``trials`` trials (with
    ``workers``: that many asynchronous workers, else as it was run)."""
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
        if workers is not None:
            if p.kind != "optuna":
                raise BnexpError(f"--workers {workers}: {sweep_dir.name} is a grid; workers drive Optuna searches")
            p.workers = p.jobs_at_once = workers
        if p.workers < 0:
            raise BnexpError(f"{sweep_dir / SWEEP_FILE}: field 'workers' is {p.workers}; expected >= 0")
        app = _Hydra(p, sweep_dir, p.fixed if p.kind == "optuna" else p.overrides)
        if jobs:
            p.jobs_at_once = app.jobs_at_once(p, jobs)
        session = Session(p, sweep_dir, app, lock)
        session.save(status="running", ended=None, owner=owner_info(), heartbeat=now_iso(), trials=p.trials,
                     jobs_at_once=p.jobs_at_once, sampler_seed=p.sampler_seed, workers=p.workers)
        return session
    except BaseException:
        lock.release()
        raise


def launcher_settings(p: Plan) -> dict[str, Any]:
    """The plan's ``hydra.launcher`` settings as Hydra composes them (the launcher's defaults
    under the given ones); the sweep id is a placeholder."""
    from omegaconf import OmegaConf

    hydra = _Hydra(p, Path(p.output_dir) / "sweeps" / "SWEEP_ID", p.overrides if p.kind == "grid" else p.fixed)
    return OmegaConf.to_container(hydra.cfg.hydra.launcher, resolve=True)
