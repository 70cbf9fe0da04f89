"""Sweep jobs on Slurm (and submitit's local executor), launched so that the sweep can be trusted.

Hydra's submitit launcher submits one job array and waits for ``job.results()`` of every job in
turn: one job that Slurm cancels or that dies without a result raises and ends the whole sweep,
a job whose task function failed is reported as COMPLETED (hydra#1928), nothing is printed
while jobs finish, and a killed sweep leaves its jobs running. :func:`launch` submits the same
array through the same launcher object (its settings, its ``__call__`` running bnexp's job) and
then:

* reports each job as it finishes (one line per job, in the order they end);
* turns a job that ended without a result (cancelled, node failure, killed) into a row with the
  reason Slurm gives (its run, if it started, is recorded ``interrupted``: its checkpoint is kept);
* hands the job ids to a *reaper*: a small process, started in its own session, that holds a pipe
  from the sweep and cancels every job still queued or running when that pipe closes without a
  word, i.e. when the sweep dies however it dies (kill -9 included);
* reads Slurm's job states quietly: submitit asks ``sacct``, which on a cluster without accounting
  prints "Slurm accounting storage is disabled" and a warning on every poll; then ``squeue`` is
  asked instead.

A job requeued by Slurm (``scontrol requeue``, preemption) runs the same pickled call again, which
continues its run from the checkpoint (see :func:`bnexp.launch.job.run_job`); the sweep keeps waiting
for it as long as Slurm says it is pending or running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

if TYPE_CHECKING:
    from bnexp.launch.plan import Plan

# Slurm states after which a job produces nothing more (it may still be requeued by hand). Every
# other state, including the passing ones submitit does not know (SIGNALING while a requeue's
# SIGTERM is delivered, CONFIGURING, STAGE_OUT, REQUEUE_HOLD, ...), means the job may still run.
# PREEMPTED is not final: a preempted job is requeued where the cluster's PreemptMode says so.
FINAL_STATES = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                "TIMEOUT")


# ---------------------------------------------------------------------------------------------
# Quiet job states


def quiet_slurm_watcher():
    """A submitit Slurm watcher that asks ``sacct`` with its stderr captured and, once sacct says
    accounting is disabled, ``squeue`` (every task of every job, finished ones while Slurm keeps
    them) in the same ``JobID|State|NodeList`` form. A job is done only in one of
    :data:`FINAL_STATES` (submitit's own test counts any state it does not list as done, so a
    requeued job seen between its SIGTERM and its return to PENDING was given up for lost)."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    class QuietSlurmWatcher(SlurmInfoWatcher):
        use_squeue = False

        def _make_command(self) -> Optional[list[str]]:
            command = super()._make_command()
            if command is None or not self.use_squeue:
                return command
            ids = ",".join(command[i + 1] for i, arg in enumerate(command) if arg == "-j")
            return ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%N", "-j", ids]

        def is_done(self, job_id: str, mode: str = "standard") -> bool:
            state = self.get_state(job_id, mode=mode).split()
            return bool(state) and state[0].upper() in FINAL_STATES

        def update(self) -> None:
            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0 and "accounting storage is disabled" in done.stderr and not self.use_squeue:
                self.use_squeue = True
                return self.update()
            if done.returncode == 0:
                output = ("JobID|State|NodeList\n" + done.stdout) if self.use_squeue else done.stdout
                self._info_dict.update(self.read_info(output))
            self._last_status_check = time.time()
            for job_id in self._registered - self._finished:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    return QuietSlurmWatcher(delay_s=60)


# ---------------------------------------------------------------------------------------------
# The reaper: a dead man's switch for a sweep's Slurm jobs


class Reaper:
    """While the sweep runs, a process in its own session reads a pipe from it; job ids sent down
    the pipe are remembered; ``done`` ends it quietly; EOF without ``done`` (the sweep died)
    cancels every remembered job with ``scancel``."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-m", "bnexp.launch.cluster", "reap"], stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                                        start_new_session=True, env={**os.environ})

    def watch(self, job_ids: Sequence[str]) -> None:
        self.process.stdin.write("".join(f"{j}\n" for j in job_ids))
        self.process.stdin.flush()

    def close(self, cancel: bool = False) -> None:
        """``cancel``: cancel the jobs now (the sweep was stopped), else just end the reaper."""
        with contextlib.suppress(OSError, ValueError):
            self.process.stdin.write("cancel\n" if cancel else "done\n")
            self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)


def reap_main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the sweep's terminal is the sweep's
    jobs: list[str] = []
    for line in sys.stdin:
        line = line.strip()
        if line == "done":
            return
        if line == "cancel":
            break
        if line:
            jobs.append(line)
    if jobs:  # the sweep is gone (EOF) or stopped: nothing of it may keep running on the cluster
        subprocess.run(["scancel", *sorted(set(jobs))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------
# Launching


@contextlib.contextmanager
def _reaper(slurm: bool) -> Iterator[Optional[Reaper]]:
    if not slurm:
        yield None
        return
    reaper = Reaper()
    try:
        yield reaper
    except BaseException:
        reaper.close(cancel=True)
        raise
    else:
        reaper.close()


def launch(launcher, settings: tuple[str, dict[str, Any], Path], job_overrides: Sequence[Sequence[str]],
           initial_job_idx: int, ended: Callable[[int, list[str], Any, Optional[str]], Any],
           poll_s: float = 1.0) -> list:
    """Submit the jobs as Hydra's submitit ``launcher`` would and wait for every one; ``settings``
    are the launcher's (:func:`bnexp.launch.hydra_adapter.submitit_settings`). As each job ends,
    ``ended(number, overrides, job_return, reason)`` makes its row: ``job_return`` is Hydra's
    JobReturn, or None with ``reason`` for a job that ended without one. Returns the rows in job
    order."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import filter_overrides

    executor, slurm = _executor(settings)
    numbers = [initial_job_idx + i for i in range(len(job_overrides))]
    arguments = [(list(o), "hydra.sweep.dir", n, f"job_id_for_{n}", Singleton.get_state())
                 for n, o in zip(numbers, job_overrides)]
    with _reaper(slurm) as reaper:
        jobs = executor.map_array(launcher, *zip(*arguments))
        if reaper:
            reaper.watch([j.job_id for j in jobs])
        results: dict[int, Any] = {}
        while len(results) < len(jobs):
            for i, job in enumerate(jobs):
                if i in results or not job.done():
                    continue
                outcome = job.exception()
                overrides = list(filter_overrides(job_overrides[i]))
                if outcome is None:
                    results[i] = ended(numbers[i], overrides, job.results()[0], None)
                else:
                    results[i] = ended(numbers[i], overrides, None, _reason(job, outcome))
            if len(results) < len(jobs):
                time.sleep(poll_s)
    return [results[i] for i in range(len(jobs))]


def _executor(settings: tuple[str, dict[str, Any], Path]):
    """submitit's executor with the launcher's settings, as hydra-submitit-launcher makes it;
    and whether it submits to Slurm (then job states are read quietly)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    executor_kind, params, sweep_dir = settings
    params = dict(params)
    executor = submitit.AutoExecutor(cluster=executor_kind, folder=params.pop("submitit_folder"),
                                     **({f"{executor_kind}_max_num_timeout": params.pop("max_num_timeout")}
                                        if "max_num_timeout" in params else {}))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"{executor_kind}_{k}": v for k, v in params.items()})
    sweep_dir.mkdir(parents=True, exist_ok=True)
    slurm = executor_kind == "slurm"
    if slurm:
        from submitit.slurm.slurm import SlurmJob

        SlurmJob.watcher = quiet_slurm_watcher()
    return executor, slurm


def run_workers(settings: tuple[str, dict[str, Any], Path], command: list[str], count: int,
                poll_s: float = 1.0) -> None:
    """``count`` workers of a search (:mod:`bnexp.launch.workers`), each running ``command`` as one
    task of a job array with the launcher's settings, all at once; waits for every one and says
    how each ended. The reaper cancels them if the sweep dies."""
    executor, slurm = _executor(settings)
    if slurm:
        executor.update_parameters(slurm_array_parallelism=count)
    with _reaper(slurm) as reaper:
        jobs = executor.map_array(run_command, [command] * count)
        if reaper:
            reaper.watch([j.job_id for j in jobs])
        ended: set[int] = set()
        while len(ended) < len(jobs):
            for k, job in enumerate(jobs):
                if k not in ended and job.done():
                    ended.add(k)
                    failure = job.exception()
                    code = job.result() if failure is None else None
                    how = (_reason(job, failure) if failure is not None else "its work is done" if code in (0, 1)
                           else f"exited with status {code}; see {job.paths.stdout}")
                    print(f"worker {k} ({'Slurm ' if slurm else ''}job {job.job_id}) ended: {how}", flush=True)
            if len(ended) < len(jobs):
                time.sleep(poll_s)


def run_command(command: list[str]) -> int:
    """In a submitted task: run one worker, its output in the task's log; its exit status."""
    return subprocess.call(command)


def _reason(job, exception: BaseException) -> str:
    state = job.state
    if state and state != "UNKNOWN":
        return f"Slurm job {job.job_id} ended {state} without a result"
    return f"job {job.job_id} ended without a result ({type(exception).__name__})"


# ---------------------------------------------------------------------------------------------
# The sbatch script of a sweep, shown by --dry-run


def sbatch_script(p: Plan, settings: dict[str, Any]) -> tuple[str, list[str]]:
    """The sbatch script submitit would write for this sweep on Slurm (``--launcher submitit_slurm``),
    rendered here without a cluster (submitit's own ``_make_sbatch_string``, fed the launcher settings
    as hydra-submitit-launcher and submitit translate them: ``hydra.launcher.gpus_per_node=2`` ->
    ``--gpus-per-node=2``, one array task per job); the sweep id is a placeholder. Also returns
    notes on how the settings fit the jobs' ``nproc``: each job is one Slurm task, whose
    ``bnexp train`` starts the job's ``nproc`` processes itself on its node. ``settings``: the
    sweep's ``hydra.launcher`` node, resolved (:func:`bnexp.launch.sweep.launcher_settings`).

    submitit has no public way to render the script without submitting it, so this uses its private
    helpers (``_make_sbatch_string``, ``_convert_mem``, ``_typed_parameters``, ``_equivalence_dict``);
    the dry-run test in ``tests/test_ddp.py`` renders a script through all of them."""
    import shlex

    from submitit.auto.auto import AutoExecutor
    from submitit.slurm import slurm

    from bnexp.core.keys import override_value

    settings = dict(settings)
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
    nnodes = max(int(override_value(job, "nnodes") or 1) for job in jobs_overrides)
    notes = []
    if settings["tasks_per_node"] * settings["nodes"] != nnodes:
        notes.append(f"hydra.launcher.tasks_per_node={settings['tasks_per_node']} nodes={settings['nodes']}: "
                     f"{settings['tasks_per_node'] * settings['nodes']} Slurm tasks for jobs of nnodes={nnodes}; "
                     "give each job one task per node (bnexp starts the job's nproc processes itself)")
    gpus = settings.get("gpus_per_node")
    if nproc > 1 and not gpus:
        notes.append(f"nproc={nproc} without hydra.launcher.gpus_per_node: the processes train on CPU (gloo); for "
                     f"CUDA (NCCL, one GPU per process) set hydra.launcher.gpus_per_node={nproc}")
    elif gpus and gpus < nproc:
        notes.append(f"nproc={nproc} with hydra.launcher.gpus_per_node={gpus}: NCCL needs one GPU per process; "
                     f"set hydra.launcher.gpus_per_node={nproc} (or train those jobs with device=cpu)")
    return script, notes


if __name__ == "__main__":
    if sys.argv[1:] == ["reap"]:
        reap_main()
