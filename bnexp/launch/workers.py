"""``bnexp sweep --trials N --workers W``: W asynchronous workers drive one Optuna search.

A search launched in batches (``-j K``) asks K trials, waits for the slowest of them, and only then
asks again (hydra#3091). With ``--workers W`` the sweep starts W processes, each running the worker
loop of :mod:`bnexp.launch.search` (what ``bnexp sweep --study ID --worker`` runs: ask, train, tell,
until N of the study's trials have ended), and waits for them: a worker whose trial ends asks for
the next one at once. The sweep's launcher says where they run:

* ``basic`` and ``joblib``: W child processes on this machine (they end with the sweep, kill -9
  included: Linux's parent-death signal);
* ``submitit_local`` and ``submitit_slurm``: one job array of W tasks, with the launcher's settings
  (partition, time, cores); on Slurm the reaper of :mod:`bnexp.launch.cluster` cancels them when
  the sweep dies.

A worker that dies takes nothing with it: the other workers fail its trial and Optuna proposes it
again (:func:`bnexp.launch.search.reclaim_lost`); the retry continues the trial's job directory
from its checkpoint. Each worker's output is kept in ``workers/worker-K.log`` in the sweep
directory (for Slurm, in submitit's log files), and the line each job prints when it ends is
shown here, naming the worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from bnexp.core.errors import BnexpError
from bnexp.launch.plan import Plan

LOG_DIR = "workers"


def worker_command(sweep_dir: Path, p: Plan) -> list[str]:
    """The command of one worker: join this sweep's search and work until it has ``p.trials``
    completed trials."""
    return [sys.executable, "-m", "bnexp", "sweep", "--study", str(sweep_dir), "--worker", "--trials", str(p.trials),
            *(["--storage", p.storage] if p.storage else [])]


def drive(p: Plan, sweep_dir: Path, submitit: Optional[tuple[str, dict[str, Any], Path]]) -> tuple[list, dict]:
    """Run ``p.workers`` workers on the search of ``sweep_dir`` and wait for all of them; returns
    the sweep's rows and the study's summary. ``submitit``: the launcher's settings when it is a
    submitit launcher (:func:`bnexp.launch.hydra_adapter.submitit_settings`), else None."""
    from bnexp.launch import search
    from bnexp.store.sweeps import job_rows

    command = worker_command(sweep_dir, p)
    if submitit is None:
        _run_here(command, p.workers, sweep_dir / LOG_DIR)
    else:
        from bnexp.launch import cluster

        cluster.run_workers(submitit, command, p.workers)
    study = search.open_study(p, sweep_dir)
    search.reclaim_lost(study)
    return job_rows(sweep_dir), search.study_summary(study, search.storage_label(sweep_dir, p.storage))


def _run_here(command: list[str], count: int, log_dir: Path) -> None:
    """``count`` workers as child processes; their job lines relayed, everything logged. Ctrl-C or
    SIGTERM stops them (each ends its trial's run as interrupted) and is raised."""
    log_dir.mkdir(exist_ok=True)
    workers, relays = [], []
    parent = os.getpid()
    try:
        for _ in range(count):  # all started before any relay thread: a fork beside threads can deadlock
            workers.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True,
                                            preexec_fn=lambda: _end_with_the_sweep(parent)))
        for k, worker in enumerate(workers):
            relays.append(threading.Thread(target=_relay, args=(worker, k, log_dir / f"worker-{k}.log"), daemon=True))
            relays[-1].start()
        for worker in workers:
            worker.wait()
    except BaseException:
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.terminate()
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=60)
        raise
    finally:
        for relay in relays:
            relay.join(timeout=5)
    failed = [(k, w.returncode) for k, w in enumerate(workers) if w.returncode not in (0, 1)]
    if failed:  # 1: its last trials did not all complete, which the table shows
        k, code = failed[0]
        raise BnexpError(f"worker {k} exited with status {code}; see {log_dir / f'worker-{k}.log'}")


def _relay(worker: subprocess.Popen, k: int, log: Path) -> None:
    with open(log, "w") as out:
        for line in worker.stdout:
            out.write(line)
            out.flush()
            if line.startswith("job "):
                print(f"worker {k}: {line}", end="", flush=True)


def _end_with_the_sweep(parent: int) -> None:
    """In a worker before it starts: Linux sends it SIGTERM when the sweep dies, even by kill -9
    (PR_SET_PDEATHSIG), so no worker trains on for a sweep that is gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)
