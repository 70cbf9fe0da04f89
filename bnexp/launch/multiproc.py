"""Data-parallel training over several processes: what differs from training in one.

``bnexp train nproc=N`` (or a sweep job with ``nproc=N``) reaches :func:`launch` in the process the
user started, the *launcher*. It creates the run directory (or picks the one to continue), starts N
workers through torch's own launcher (``torch.distributed.launcher.api.elastic_launch``, the
elastic agent behind ``torchrun``; static rendezvous on 127.0.0.1) and waits. Each worker runs
``python -m bnexp.launch.worker SPEC``, i.e. :func:`bnexp.launch.trainer.train` with the launcher's config,
as one rank of a process group (gloo on CPU, NCCL on CUDA); ``torchrun ... -m bnexp train
nproc=N`` started by hand runs the same code (:func:`in_worker`).

* Rank 0 alone owns the run directory (lock, run.json, metrics.jsonl, TensorBoard, checkpoint);
  the other ranks write nothing and attach no listeners.
* Every global batch (``batch_size``) is split into contiguous shards, one per rank
  (:meth:`Ranks.shard`); training sums and validation are all-reduced (:meth:`Ranks.sum`), so
  every rank logs the same numbers, finds a divergence at the same step and stops together.
* A stop (Ctrl-C or SIGTERM to the launcher, which the agent forwards to every worker, or the
  launcher's death) is agreed on at the next log step: every rank raises KeyboardInterrupt there,
  and the run ends as ``interrupted`` with its checkpoint, as in one process.
* The launcher has the last word on the record (:func:`settle`): when a rank is killed or crashes,
  the run is ``failed`` with that rank's reason, never left ``running``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import signal
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from bnexp.config.compose import one_line
from bnexp.core.errors import BnexpError
from bnexp.engine.ranks import check_device, check_resources
from bnexp.store.files import RUN_FILE, remove_dir
from bnexp.store.lock import RunBusy, busy_message, is_locked
from bnexp.store.record import RunRecord, read_record
from bnexp.store.run import Run

# Signals the elastic agent forwards to the workers (and its own handlers replace while it runs).
AGENT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
AGENT_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher")
SHUTDOWN_S = 30  # after a failure or a stop, the agent waits this long for workers before SIGKILL


# ---------------------------------------------------------------------------------------------
# Inside a worker: this process's place among the ranks


# ---------------------------------------------------------------------------------------------
# The launcher: start the workers, wait, settle the record


def launch(cfg, overrides: list[str], *, run_dir: Optional[Path], resume: Optional[Path], progress: bool,
           callbacks: Iterable = ()) -> RunRecord:
    """Train ``cfg`` with ``cfg.nproc`` worker processes; returns (or raises) as
    :func:`bnexp.launch.trainer.train` does in one process. ``callbacks`` are pickled to rank 0 and run in
    its process (what they record stays there)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    from bnexp.engine.loop import resolve_device
    from bnexp.store.run import new_run_dir

    check_device(resolve_device(cfg.device.type), cfg.nproc)
    check_resources(resolve_device(cfg.device.type), cfg.nproc)
    node = node_rank(cfg)
    if node > 0:  # rank 0 of node 0 owns the run: this node only lends its processes
        return _launch_follower(cfg, overrides, node, progress)
    if resume is not None and is_locked(resume):
        raise RunBusy(busy_message(resume))  # refused before any process starts
    try:
        listeners = pickle.dumps(list(callbacks))
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise BnexpError(f"with nproc={cfg.nproc}, listeners passed to train() run in rank 0's process and must be "
                         f"picklable: {exc}") from None
    before = read_record(resume).to_json() if resume is not None else None
    made = run_dir is None and resume is None
    target = Path(resume or run_dir or new_run_dir(cfg))
    spec = {"cfg": cfg, "overrides": list(overrides), "run_dir": None if resume else target, "resume": resume,
            "progress": progress, "callbacks": listeners, "argv": list(sys.argv)}
    stopped, failures = False, {}
    try:
        with tempfile.TemporaryDirectory(prefix="bnexp-ranks-") as scratch:  # private (0700): spec, error files
            spec_path = Path(scratch) / "spec.pickle"
            spec_path.write_bytes(pickle.dumps(spec))
            with _agent_context():
                try:
                    elastic_launch(_launch_config(cfg, scratch, node), sys.executable)(
                        "-u", "-m", "bnexp.launch.worker", str(spec_path))
                except ChildFailedError as exc:
                    failures = exc.failures
                except (SignalException, KeyboardInterrupt):
                    stopped = True
                except Exception as exc:
                    if cfg.nnodes == 1:
                        raise
                    raise BnexpError(f"node 0: the {cfg.nnodes} nodes did not meet at rdzv_endpoint="
                                     f"{rendezvous_endpoint(cfg)} within rdzv_timeout={cfg.rdzv_timeout} s ({one_line(exc)});"
                                     " it must be an address of this machine that the other nodes reach") from None
    except BaseException:
        if made and not (target / RUN_FILE).exists():
            remove_dir(target)
        raise
    return settle(target, made=made, stopped=stopped, failures=failures, before=before)


def node_rank(cfg) -> int:
    """This node's rank among ``nnodes``: ``node_rank``, else Slurm's. Each node is one Slurm task
    running ``bnexp train`` (which starts the node's ``nproc`` processes), so with ``nnodes`` tasks
    the task's rank ``SLURM_PROCID`` is the node rank (also when tasks share a machine); otherwise
    the machine's index in the allocation, ``SLURM_NODEID``."""
    if cfg.nnodes == 1:
        return 0
    if cfg.node_rank is not None:
        return int(cfg.node_rank)
    one_task_per_node = os.environ.get("SLURM_NTASKS") == str(cfg.nnodes)
    for key in ("SLURM_PROCID", "SLURM_NODEID") if one_task_per_node else ("SLURM_NODEID", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    raise BnexpError(f"nnodes={cfg.nnodes}: give node_rank=0..{cfg.nnodes - 1} on each node (or start the "
                     "nodes as one Slurm task each, which says it)")


def rendezvous_endpoint(cfg) -> str:
    """Where the nodes meet: ``rdzv_endpoint``, else, inside a Slurm job, the first machine of the
    allocation (``SLURM_JOB_NODELIST``, where task 0 runs) on a port derived from the job id, so
    that runs of different jobs sharing a machine do not collide."""
    if cfg.rdzv_endpoint:
        return str(cfg.rdzv_endpoint)
    nodes, job = os.environ.get("SLURM_JOB_NODELIST", ""), os.environ.get("SLURM_JOB_ID", "")
    if not nodes or not job.isdigit():
        raise BnexpError(f"nnodes={cfg.nnodes}: give rdzv_endpoint=HOST:PORT, the address of node 0 that every "
                         "node can reach (inside a Slurm job it defaults to the allocation's first machine)")
    return f"{first_host(nodes)}:{20000 + int(job) % 20000}"


def first_host(nodelist: str) -> str:
    """The first machine of a Slurm host list: ``gpu[07-09,12],cpu01`` -> ``gpu07`` (what
    ``scontrol show hostnames`` prints first)."""
    head = re.match(r"[^,\[]*(\[[^\]]*\])?", nodelist.strip()).group(0)
    if "[" not in head:
        return head
    prefix, ranges = head[:-1].split("[", 1)
    return prefix + re.split("[,-]", ranges)[0]


def _launch_config(cfg, log_dir: str, node: int):
    """One node's agent: on one node a static rendezvous on a free local port; on several, the
    nodes meet at ``rdzv_endpoint`` (node 0 hosts it), each with its given rank, so that node 0
    holds global rank 0 and the run; ``rdzv_timeout`` bounds every wait for a node."""
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig

    if cfg.nnodes == 1:
        with socket.socket() as probe:  # a free port for the rendezvous store (torchrun --master-port)
            probe.bind(("127.0.0.1", 0))
            endpoint = f"127.0.0.1:{probe.getsockname()[1]}"
    else:
        endpoint = rendezvous_endpoint(cfg)
    run_id = f"bnexp-{uuid.uuid4().hex[:8]}" if cfg.nnodes == 1 else f"bnexp-{endpoint}"  # the same on every node
    return LaunchConfig(min_nodes=cfg.nnodes, max_nodes=cfg.nnodes, nproc_per_node=cfg.nproc, run_id=run_id, rdzv_backend="static", rdzv_endpoint=endpoint,
                        rdzv_configs={"rank": node, "timeout": cfg.rdzv_timeout}, max_restarts=0,
                        logs_specs=DefaultLogsSpecs(log_dir=log_dir), shutdown_timeout=SHUTDOWN_S)


def _launch_follower(cfg, overrides: list[str], node: int, progress: bool) -> None:
    """Node ``node`` > 0 of a run: start its processes, wait, report how they ended (the run and
    its record are node 0's). A node that cannot reach node 0 within ``rdzv_timeout`` says so."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    from bnexp.core.errors import Interrupted

    spec = {"cfg": cfg, "overrides": list(overrides), "run_dir": None, "resume": None, "progress": False,
            "callbacks": pickle.dumps([]), "argv": list(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="bnexp-ranks-") as scratch:
        spec_path = Path(scratch) / "spec.pickle"
        spec_path.write_bytes(pickle.dumps(spec))
        with _agent_context():
            try:
                elastic_launch(_launch_config(cfg, scratch, node), sys.executable)(
                    "-u", "-m", "bnexp.launch.worker", str(spec_path))
            except ChildFailedError as exc:
                raise BnexpError(f"node {node}: {describe_failures(exc.failures)}") from None
            except (SignalException, KeyboardInterrupt):
                raise Interrupted(f"node {node} of {cfg.nnodes} stopped") from None
            except Exception as exc:  # the rendezvous: node 0 unreachable, wrong endpoint, timeout
                raise BnexpError(f"node {node}: could not join the run at rdzv_endpoint={rendezvous_endpoint(cfg)} "
                                 f"within rdzv_timeout={cfg.rdzv_timeout} s ({one_line(exc)}); check that node 0 "
                                 "is started and that every node reaches that address") from None
    print(f"node {node} of {cfg.nnodes} done; the run is recorded by node 0", flush=True)


@contextlib.contextmanager
def _agent_context() -> Iterator[None]:
    """While the agent runs: its signal handlers are in force (it forwards SIGINT/SIGTERM to the
    workers) and its log lines are silenced (the launcher reports in one line; BNEXP_DEBUG=1 shows
    them). Afterwards the process's own handlers, loggers and environment are as before."""
    handlers = {name: signal.getsignal(getattr(signal, name)) for name in AGENT_SIGNALS}
    env = os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE")
    quiet = os.environ.get("BNEXP_DEBUG", "") in ("", "0")
    # records of the agent's loggers stop here instead of reaching torch's own handler on "torch.distributed"
    loggers = [logging.getLogger(name) for name in AGENT_LOGGERS] if quiet else []
    saved = [(logger, logger.propagate) for logger in loggers]
    null = logging.NullHandler()
    for logger in loggers:
        logger.propagate = False
        logger.addHandler(null)
    try:
        yield
    finally:
        for logger, propagate in saved:
            logger.propagate = propagate
            logger.removeHandler(null)
        for name, handler in handlers.items():
            signal.signal(getattr(signal, name), handler)
        if env is None:
            os.environ.pop("TORCHELASTIC_SIGNALS_TO_HANDLE", None)
        else:
            os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = env


def settle(run_dir: Path, *, made: bool, stopped: bool, failures: dict, before: Optional[dict] = None) -> RunRecord:
    """The run's final record once every worker is gone, written by the launcher where the workers
    could not say it right: ``interrupted`` when the launcher was stopped; ``failed`` with the
    reason when a rank other than 0 was killed or crashed (rank 0 only saw its peer vanish), or
    when rank 0 died without a word. Returns or raises as :func:`bnexp.engine.callbacks.record_or_raise`."""
    from bnexp.core.errors import Interrupted
    from bnexp.engine.callbacks import Outcome, record_or_raise

    record = read_record(run_dir) if (run_dir / RUN_FILE).is_file() else None
    if record is None or record.to_json() == before:  # the workers stopped before the run (re)started
        if made:
            remove_dir(run_dir)
            with contextlib.suppress(OSError):  # and output_dir/runs, when this made it and it stayed empty
                run_dir.parent.rmdir()
        if stopped:
            raise Interrupted("stopped before training started")
        raise BnexpError(describe_failures(failures) or "the workers ended before the run started")
    status, message = _verdict(record, run_dir, stopped, failures)
    if (status, message) != (record.status, record.message):
        try:
            run = Run.open(run_dir)
        except BnexpError:  # a worker that could not be reaped still holds it: leave liveness to tell
            pass
        else:
            try:
                run.finish(status, message)
            finally:
                run.close()
    record.status, record.message = status, message
    return record_or_raise(Outcome(status, message), run_dir, record)


def _verdict(record: RunRecord, run_dir: Path, stopped: bool, failures: dict) -> tuple[str, Optional[str]]:
    """(status, message) the run ended with, from what rank 0 wrote and how each worker ended."""
    if record.status in ("completed", "diverged"):
        return record.status, record.message
    if stopped:
        if record.status == "interrupted":
            return record.status, record.message
        step = record.metrics.get("step", 0)
        return "interrupted", f"stopped after step {step}; continue with: bnexp train resume={run_dir}"
    cause = _root_cause(failures)
    if record.status == "running" or (cause is not None and cause[0] != 0):
        return "failed", describe_failures(failures) or "a worker process ended without a word"
    return record.status, record.message


def _kind(failure) -> str:
    """How a worker ended, as it reported (failed, diverged, interrupted, or lost: a peer vanished),
    or, when it could not report: stopped (SIGTERM/SIGINT, how the agent stops the others) or
    killed (any other signal)."""
    data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
    if data.get("bnexp_kind"):
        return data["bnexp_kind"]
    if failure.exitcode < 0:
        return "stopped" if -failure.exitcode in (signal.SIGTERM, signal.SIGINT) else "killed"
    return "failed"


# Which failure started it: a rank killed by a signal nobody forwards (SIGKILL, SIGSEGV) comes first,
# then one that crashed or diverged, then ranks that were stopped or merely lost their peers.
CAUSE_ORDER = {"killed": 0, "failed": 1, "diverged": 2, "stopped": 3, "interrupted": 3, "lost": 4}


def _root_cause(failures: dict) -> Optional[tuple[int, Any]]:
    """``(rank, failure)`` of the failure that started it; the lowest rank among equals."""
    ranked = sorted(failures.items(), key=lambda item: (CAUSE_ORDER.get(_kind(item[1]), 0), item[0]))
    return ranked[0] if ranked else None


def describe_failures(failures: dict) -> str:
    """One line for the root cause: ``rank 1 (pid 4242) was killed by SIGKILL; the other ranks
    stopped``; an error every rank met alike (a missing dataset) is given as is."""
    cause = _root_cause(failures)
    if cause is None:
        return ""
    rank, failure = cause
    kind = _kind(failure)
    if kind == "failed" and all(_kind(f) == kind and f.message == failure.message for f in failures.values()):
        return failure.message
    if kind in ("killed", "stopped"):
        what = f"rank {rank} (pid {failure.pid}) was {kind} by {failure.signal_name()}"
    elif kind == "lost":
        what = f"rank {rank} lost contact with the other ranks"
    else:
        what = f"rank {rank}: {failure.message}"
    return what + ("; the other ranks stopped" if len(failures) > 1 and kind in ("killed", "failed") else "")


# ---------------------------------------------------------------------------------------------
# A worker's entry point
