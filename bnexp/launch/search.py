"""An Optuna search: where it keeps its study, the loop asking it for batches of trials, and workers
that drive one search from many processes.

The loop. :func:`optimize` asks a batch of ``--jobs`` trials, hands them to the sweep's launcher as
jobs (any Hydra launcher: parallel and Slurm trials run exactly as grid jobs do) and tells the
results; :mod:`bnexp.launch.sweep` owns the session around it.

Storage. A new search keeps its study in ``study.journal`` in the sweep directory: Optuna's journal
storage (an append-only log) with its symlink lock, which works on the network file systems of
clusters, where SQLite is a known way to lock or corrupt a study. ``--storage URL`` puts it in any
database SQLAlchemy reaches instead (``postgresql+psycopg://user@host/db``; ``pip install
'bnexp[postgres]'`` for the driver). Searches made before keep their ``study.db`` (SQLite).

Workers. ``bnexp sweep --study ID --worker`` runs a loop in this process: ask the study for a trial,
train it as a job of the sweep, tell the result, until the asked number of the study's trials have
ended (completed, or failed by their own job; a trial lost with its worker is retried). Any number of workers, on any machines that see the sweep directory and the storage, drive
one search without waiting for each other (no batches). Each worker names itself on its running
trial (host, pid, heartbeat every ``HEARTBEAT_S``); a trial whose worker is gone (same host: the
process no longer exists; elsewhere: no heartbeat for ``STALE_S``) is failed and re-proposed with
its parameters through Optuna's ``RetryFailedTrialCallback``, and the retry continues the same job
directory from its checkpoint. On a database, Optuna's own heartbeat (``heartbeat_interval``) is
recorded as well, and its ``fail_stale_trials`` applies the same retry callback.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from bnexp.core.errors import BnexpError

if TYPE_CHECKING:
    from bnexp.launch.plan import Plan

warnings.filterwarnings("ignore", message=r".*is experimental", module=r"bnexp\.launch\.search")

JOURNAL_FILE = "study.journal"
SQLITE_FILE = "study.db"
HEARTBEAT_S = 10  # a running trial's worker refreshes its heartbeat this often
STALE_S = 120  # a trial with no heartbeat for this long (another host) is taken as lost
MAX_RETRIES = 3  # a trial lost this many times is not proposed again
JOB_FAILED = "job_failed"  # user attribute of a trial whose job ended without a value: its status
WAIT_S = 1.0  # a worker with nothing to ask polls the study this often


def storage_label(sweep_dir: Path, url: Optional[str]) -> str:
    """What sweep.json and the terminal say about the storage (a URL without its password)."""
    if url:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    return SQLITE_FILE if (sweep_dir / SQLITE_FILE).exists() and not (sweep_dir / JOURNAL_FILE).exists() \
        else JOURNAL_FILE


def open_storage(sweep_dir: Path, url: Optional[str]):
    """The study's storage: the database at ``url``, else the sweep's journal (or its old SQLite)."""
    import optuna
    from optuna.storages import RetryFailedTrialCallback

    if url:
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True},
                                              heartbeat_interval=HEARTBEAT_S, grace_period=STALE_S,
                                              failed_trial_callback=RetryFailedTrialCallback(max_retry=MAX_RETRIES))
        except ImportError as exc:
            raise BnexpError(f"--storage {storage_label(sweep_dir, url)}: its driver is not installed ({exc}); "
                             "for PostgreSQL: pip install 'bnexp[postgres]'") from None
        except Exception as exc:
            from bnexp.config.compose import one_line

            raise BnexpError(f"--storage {storage_label(sweep_dir, url)}: cannot open it: {one_line(exc)}") from None
    if storage_label(sweep_dir, None) == SQLITE_FILE:
        return f"sqlite:///{sweep_dir / SQLITE_FILE}"
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    path = str(sweep_dir / JOURNAL_FILE)
    return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileSymlinkLock(path)))


# ---------------------------------------------------------------------------------------------
# Which trials are lost


def _alive(worker: Any, now: float, orphans: bool) -> bool:
    if not isinstance(worker, dict):  # a batch of the sweep itself: left running only by a stopped sweep
        return not orphans
    if worker.get("host") == socket.gethostname():
        pid = worker.get("pid")
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, TypeError, ValueError):
            pass
        else:
            return _same_process(int(pid), worker.get("started"))
    return now - float(worker.get("heartbeat") or 0) < STALE_S


def _same_process(pid: int, started: Any) -> bool:
    """Whether ``pid`` is still the live process that started at ``started`` (a reused pid or a
    zombie is not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True  # no /proc: trust the pid
    return fields[0] not in ("Z", "X") and (started is None or int(fields[19]) == started)


def _start_ticks(pid: int) -> Optional[int]:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def reclaim_lost(study, orphans: bool = False) -> int:
    """Fail every running trial whose worker is gone and re-propose it (Optuna's retry callback);
    also Optuna's own stale-heartbeat check on a database. ``orphans``: also the running trials no
    worker claims (a stopped sweep's batch; the sweep continuing it is the only one launching
    batches). Returns how many this call failed."""
    from optuna.storages import RetryFailedTrialCallback
    from optuna.storages._heartbeat import fail_stale_trials
    from optuna.trial import TrialState

    with contextlib.suppress(Exception):
        fail_stale_trials(study)
    now, reclaimed = time.time(), 0
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _alive(trial.user_attrs.get("worker"), now, orphans):
            continue
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except Exception:  # another worker failed it first
            continue
        RetryFailedTrialCallback(max_retry=MAX_RETRIES)(study, storage.get_trial(trial._trial_id))
        reclaimed += 1
    return reclaimed


def job_number(study, trial) -> int:
    """The job (directory) a trial trains in: a retried trial continues the one it retries."""
    from optuna.storages import RetryFailedTrialCallback

    first = RetryFailedTrialCallback.retried_trial_number(study._storage.get_trial(trial._trial_id))
    return trial.number if first is None else first


# ---------------------------------------------------------------------------------------------
# A worker


class Heartbeat:
    """Names this process on a trial and refreshes the heartbeat until stopped."""

    def __init__(self, study, trial):
        self.study, self.trial, self.stop_event = study, trial, threading.Event()
        self.worker = {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_ticks(os.getpid())}
        self.beat()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def beat(self) -> None:
        storage = self.study._storage
        storage.set_trial_user_attr(self.trial._trial_id, "worker", {**self.worker, "heartbeat": time.time()})
        if hasattr(storage, "record_heartbeat") and getattr(storage, "heartbeat_interval", None):
            storage.record_heartbeat(self.trial._trial_id)

    def _run(self) -> None:
        while not self.stop_event.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                self.beat()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)


def ended(trial) -> bool:
    """A trial that took one of the search's places for good: completed, or failed by its own job
    (told with :data:`JOB_FAILED`). A trial failed because its worker was lost is retried instead."""
    from optuna.trial import TrialState

    return trial.state == TrialState.COMPLETE or (trial.state == TrialState.FAIL and JOB_FAILED in trial.user_attrs)


def counts(study) -> tuple[int, int, int]:
    """(ended, running, waiting) trials."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    return sum(map(ended, trials)), states.count(TrialState.RUNNING), states.count(TrialState.WAITING)


def surplus(study, trial, target: int) -> bool:
    """Whether ``trial`` was asked after others had already claimed every remaining place: the
    trials numbered before it that ended, run or wait to be retried number ``target``."""
    from optuna.trial import TrialState

    claimed = (TrialState.RUNNING, TrialState.WAITING)
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.number < trial.number and (t.state in claimed or ended(t))) >= target


def work(study, space: dict, target: int, train_trial, metric: str) -> int:
    """Ask -> train -> tell until ``target`` trials of the study have ended (completed, or failed by
    their job: a search whose every trial fails ends too, failed); ``train_trial(trial, job number)``
    trains one and returns its row. Returns how many trials this worker told."""
    from optuna.trial import TrialState

    told = 0
    while True:
        reclaim_lost(study)
        done, running, waiting = counts(study)
        if done >= target:
            return told
        if done + running >= target and not waiting:
            time.sleep(WAIT_S)  # the last trials are being trained elsewhere; wait in case one is lost
            continue
        trial = study.ask(space)
        if surplus(study, trial, target):  # another worker claimed the last place first
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.PRUNED)
            continue
        beat = Heartbeat(study, trial)
        try:
            row = train_trial(trial, job_number(study, trial))
        finally:
            beat.stop()
        tell(study, trial, row, metric)
        told += 1


def tell(study, trial, row, metric: str) -> None:
    """Record a trained trial: its run, and its value (completed or diverged jobs with a finite
    metric) or a failure."""
    from optuna.trial import TrialState

    value = row.metric(metric)
    if row.dir:
        trial.set_user_attr("run", row.id)
    if row.status in ("completed", "diverged") and value is not None and math.isfinite(value):
        study.tell(trial.number, value)
    else:
        trial.set_user_attr(JOB_FAILED, row.status)
        study.tell(trial.number, state=TrialState.FAIL)


# ---------------------------------------------------------------------------------------------
# The search: a sweep's study, asked in batches or by one worker


def open_study(p: Plan, sweep_dir: Path, worker: bool = False):
    """The search's study (created on first use). The sampler's seed is advanced by the trials the
    study already has: a continued search starts a new random stream instead of proposing its first
    points again (and each worker its own)."""
    import optuna

    from bnexp.core.vocab import higher_is_better

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if higher_is_better(p.metric) else "minimize"
    study = optuna.create_study(storage=open_storage(sweep_dir, p.storage), study_name=sweep_dir.name,
                                direction=direction, load_if_exists=True)
    seed = p.sampler_seed + 1_000_003 * len(study.get_trials(deepcopy=False)) + os.getpid() % 9973 * worker
    study.sampler = (optuna.samplers.TPESampler(seed=seed) if p.sampler == "tpe"
                     else optuna.samplers.RandomSampler(seed=seed))
    return study


def trial_overrides(p: Plan, params: dict[str, Any]) -> list[str]:
    """A trial's overrides: categorical values are override strings already; numbers are written
    as Hydra's grammar reads them back (``str`` of an int or float)."""
    return p.fixed + [f"{k}={v}" for k, v in params.items()]


def _space(p: Plan) -> dict:
    import optuna.distributions as od

    return {k: od.json_to_distribution(v) for k, v in p.space.items()}


# launch(jobs, first job number) -> one row per job, in order
Launch = Callable[[list[list[str]], int], list]


def optimize(p: Plan, sweep_dir: Path, launch: Launch, progress: Callable[[list, dict], Any]) -> tuple[list, dict]:
    """Ask a batch of trials, ``launch`` them as jobs (job number = trial number), tell the results,
    and hand the rows so far and :func:`study_summary` to ``progress`` after each batch. Completed
    and diverged jobs report their metric; a job without one is a failed trial. Trials whose process
    is gone (an interrupted sweep's, a killed worker's) are failed and re-proposed."""
    study, space = open_study(p, sweep_dir), _space(p)
    reclaim_lost(study, orphans=True)
    rows: list = []
    while (remaining := p.trials - len(study.get_trials(deepcopy=False))) > 0:
        batch = [study.ask(space) for _ in range(min(p.jobs_at_once, remaining))]
        results = launch([trial_overrides(p, t.params) for t in batch], batch[0].number)
        for trial, row in zip(batch, results):
            tell(study, trial, row, p.metric)
        rows += results
        progress(rows, study_summary(study, storage_label(sweep_dir, p.storage)))
    return rows, study_summary(study, storage_label(sweep_dir, p.storage))


def work_on(p: Plan, sweep_dir: Path, launch: Launch) -> tuple[list, dict]:
    """This process as one worker of the search (:func:`work`), each trial one ``launch``ed job."""
    study, space, rows = open_study(p, sweep_dir, worker=True), _space(p), []

    def train_trial(trial, number: int):
        (row,) = launch([trial_overrides(p, trial.params)], number)
        rows.append(row)
        return row

    work(study, space, p.trials, train_trial, p.metric)
    return rows, study_summary(study, storage_label(sweep_dir, p.storage))


def study_summary(study, storage: str) -> dict:
    """What sweep.json records of a search: trials asked and completed, and the best one."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    summary = {"study": study.study_name, "storage": storage,
               "trials": len(study.get_trials(deepcopy=False)), "completed": len(done)}
    if done:
        best = study.best_trial
        summary["best"] = {"trial": best.number, "value": best.value, "params": best.params,
                           "run": best.user_attrs.get("run")}
    return summary
