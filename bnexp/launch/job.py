"""One sweep job, as Hydra's launcher runs it (:func:`run_job`): a training run in the job's directory, watched for its sweep's death, its outcome recorded."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from bnexp.config.compose import one_line
from bnexp.core.errors import BnexpError, sigterm_as_interrupt
from bnexp.core.vocab import fmt_seconds, is_plumbing
from bnexp.engine.callbacks import Callback
from bnexp.launch.multiproc import node_rank
from bnexp.launch.plan import threads_per_job
from bnexp.store.files import RUN_FILE, now_iso, write_json
from bnexp.store.lock import busy_message, is_locked
from bnexp.store.record import RunRecord
from bnexp.store.registry import load_record
from bnexp.store.run import Run
from bnexp.store.sweeps import job_number

# Launchers whose jobs run in worker processes on this machine (basic runs them in the sweep's own
# process; Slurm jobs outlive the submitting process by design).
LOCAL_WORKERS = ("joblib", "LocalLauncher")


class OrphanWatch(Callback):
    """Stops a job (as interrupted, its checkpoint kept) once the sweep that launched it is gone
    (its lock on the sweep directory released): a worker process must not train on for minutes
    after its sweep was killed."""

    def __init__(self, sweep_dir: Path):
        self.sweep_dir, self.checked, self.fired = sweep_dir, time.monotonic(), False

    def on_step(self, loop):
        now = time.monotonic()
        if now - self.checked >= 1.0:
            self.checked = now
            if not is_locked(self.sweep_dir):
                self.fired = True
                raise KeyboardInterrupt


def run_job(cfg) -> dict:
    """Train one job in its job directory (an ordinary run directory). A failure is recorded in the
    job's run.json and returned, never raised, so one bad job does not stop the sweep; Ctrl-C
    (or the sweep's death) stops the job as interrupted and is raised. A job directory left by an
    earlier attempt (``bnexp sweep --resume``) is continued from its checkpoint, or started over."""
    from hydra.core.hydra_config import HydraConfig

    from bnexp.core.errors import Interrupted

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    if cfg.nnodes > 1 and node_rank(cfg) > 0:  # node 0's task owns the job directory and records the run
        return _follow(cfg, overrides, hydra_cfg.launcher)
    if cfg.nnodes == 1 and os.environ.get("SLURM_PROCID", "0") != "0":  # a spare task of an array sized for more nodes
        return None
    local_worker = any(name in str(hydra_cfg.launcher.get("_target_", "")) for name in LOCAL_WORKERS)
    watch = [OrphanWatch(run_dir.parent)] if local_worker else []
    on_slurm = os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
    # a sequential sweep trains in this process: say which job runs, and show its progress bar
    in_process = "BasicLauncher" in str(hydra_cfg.launcher.get("_target_", ""))
    if in_process:
        chosen = " ".join(o for o in overrides if not is_plumbing(o))
        print(f"job {hydra_cfg.job.num} running: {chosen}", flush=True)
    message, argv = None, sys.argv
    sys.argv = ["bnexp", "train", *overrides]  # the run's repro.command: this job alone
    try:
        with sigterm_as_interrupt() if on_slurm else contextlib.nullcontext():
            _train_job(cfg, run_dir, overrides, hydra_cfg.launcher, watch, in_process and sys.stdout.isatty())
    except (Interrupted, KeyboardInterrupt):
        if on_slurm:  # cancelled or requeued: no result, so the sweep asks Slurm which (see bnexp.launch.cluster)
            sys.stdout.flush()
            os._exit(143)
        if any(w.fired for w in watch):  # nobody is left to report to: free the worker's memory now
            os._exit(1)
        raise KeyboardInterrupt from None
    except Exception as exc:  # the run's status says what happened; the sweep goes on
        message = one_line(exc)
        if not (run_dir / RUN_FILE).is_file():  # failed before the run existed (its data would not load)
            record_failure(run_dir, cfg, overrides, message)
    finally:
        sys.argv = argv
    row = load_record(run_dir) if (run_dir / RUN_FILE).is_file() else RunRecord(
        id=run_dir.name, status="failed", overrides=overrides, message=message, dir=str(run_dir))
    report_job(row, overrides)
    return row


def report_job(row: RunRecord, overrides: list[str]) -> None:
    """The line a job's end prints: ``job 3 completed in 4.2 s (best val acc 0.9125): norm=none``."""
    best = row.metric("best_val_acc")
    shown = f"best val acc {best:.4f}" if best is not None else (row.message or "")
    chosen = " ".join(o for o in overrides if not is_plumbing(o))
    print(f"job {job_number(row)} {row.status} in {fmt_seconds(row.duration_s)} ({shown}): {chosen}", flush=True)


def lost_job(sweep_dir: Path, number: int, overrides: list[str], reason: str) -> RunRecord:
    """The row of a job that ended without a result (cancelled on the cluster, killed): its run, if
    it started and did not finish, is recorded ``interrupted`` with the reason (its checkpoint kept
    for ``--resume``); a job that never started is a ``failed`` row with the reason."""
    run_dir = next((d for d in sweep_dir.glob(f"{sweep_dir.name}-{number}-*") if (d / RUN_FILE).is_file()), None)
    if run_dir is None:
        return RunRecord(id=f"{sweep_dir.name}-{number}", status="failed", overrides=overrides, message=reason,
                         dir=None)
    try:
        run = Run.open(run_dir)
    except BnexpError:
        pass  # still held by a process that records its own ending
    else:
        try:
            if run.record.status in ("running", "interrupted"):  # say why it stopped and how to go on
                run.finish("interrupted", f"{reason}; continue with: bnexp sweep --resume {sweep_dir.name}")
        finally:
            run.close()
    row = load_record(run_dir)
    row.sweep = sweep_dir.name
    return row


def _train_job(cfg, run_dir: Path, overrides: list[str], launcher_cfg, watch: list, progress: bool) -> None:
    from bnexp.config.compose import check_schema, validate
    from bnexp.launch.trainer import train
    from bnexp.store.resume import AS_JOB, resume

    continued = resume(run_dir, AS_JOB)  # a job run again (sweep --resume, retried trial, Slurm requeue)
    if continued is not None:
        train(continued.cfg, continued.overrides, resume=run_dir, progress=progress, callbacks=watch)
        return
    _clear_job_dir(run_dir)
    cfg = _with_threads(check_schema(cfg), launcher_cfg)
    validate(cfg)
    train(cfg, overrides, run_dir=run_dir, progress=progress, callbacks=watch)


def _follow(cfg, overrides: list[str], launcher_cfg) -> None:
    """Another node's task of a several-node job (a Slurm job of ``nnodes`` tasks, each running this
    function): it starts its processes, which join node 0's at the rendezvous, and touches nothing
    in the job directory."""
    from bnexp.config.compose import check_schema, validate
    from bnexp.launch.trainer import train

    cfg = _with_threads(check_schema(cfg), launcher_cfg)
    validate(cfg)
    with sigterm_as_interrupt():
        train(cfg, overrides, progress=False)


def _with_threads(cfg, launcher_cfg):
    if cfg.threads is None:  # the job's share of the cores, split among its own processes
        share = threads_per_job(launcher_cfg)
        cfg.threads = max(1, share // cfg.nproc) if share else None
    return cfg


def record_failure(run_dir: Path, cfg, overrides: list[str], message: str) -> None:
    """A job that failed before its run began still gets a run.json (status ``failed``, the reason),
    so ``runs --status failed`` and ``show JOB`` find it. Best effort: a full disk leaves the row in
    sweep.json only."""
    from bnexp.store.run import new_record

    with contextlib.suppress(Exception):
        record = new_record(cfg, overrides, run_dir.name, str(cfg.device.type), {"command": shlex.join(sys.argv)})
        record.status, record.message, record.ended = "failed", message, now_iso()
        write_json(run_dir / RUN_FILE, record.to_json())


def _clear_job_dir(run_dir: Path) -> None:
    """An earlier attempt that left no checkpoint starts over: its files go, Hydra's own stay."""
    if (run_dir / RUN_FILE).exists():
        if is_locked(run_dir):
            raise BnexpError(busy_message(run_dir))
        for path in run_dir.iterdir():
            if path.name != ".hydra":
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
