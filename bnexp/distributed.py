"""Data-parallel training over several processes: what differs from training in one.

``bnexp train nproc=N`` (or a sweep job with ``nproc=N``) reaches :func:`launch` in the process the
user started, the *launcher*. It creates the run directory (or picks the one to continue), starts N
workers through torch's own launcher (``torch.distributed.launcher.api.elastic_launch``, the
elastic agent behind ``torchrun``; static rendezvous on 127.0.0.1) and waits. Each worker runs
``python -m bnexp.distributed SPEC``, i.e. :func:`bnexp.train.train` with the launcher's config,
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
import json
import logging
import os
import pickle
import signal
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from bnexp.errors import BnexpError
from bnexp.runs import RUN_FILE, Run, RunBusy, RunRecord, busy_message, is_locked, read_record, remove_dir

# What init_process_group(init_method="env://") reads; torchrun and bnexp's launcher set them all.
WORKER_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Signals the elastic agent forwards to the workers (and its own handlers replace while it runs).
AGENT_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
AGENT_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher")
SHUTDOWN_S = 30  # after a failure or a stop, the agent waits this long for workers before SIGKILL

_stop = {"requested": False, "parent": None}  # this worker's stop request; the pid of its launcher


def in_worker() -> bool:
    """Whether this process is one rank of a process group a launcher started (torchrun's variables)."""
    return all(key in os.environ for key in WORKER_ENV)


# ---------------------------------------------------------------------------------------------
# Inside a worker: this process's place among the ranks


@dataclass
class Ranks:
    """This process's place among the data-parallel processes of a run; one process is rank 0 of 1,
    for which every method is a no-op, so the training loop has no branch for it."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    size: int = 1
    backend: Optional[str] = None  # gloo | nccl
    own_group: Any = None  # a process group of this rank alone (see local_statistics)

    def part(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items: sizes differ by at most one, the larger
        first (``tensor_split``), so rank r of N holds items ``[r*n/N, (r+1)*n/N)`` of an even split."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[self.part(len(batch))]

    def wrap(self, module: nn.Module) -> nn.Module:
        """What the training step calls: ``DistributedDataParallel`` around the model with several
        ranks (it starts every rank from rank 0's weights and averages gradients), else the model."""
        if self.size == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def sum(self, *values: torch.Tensor) -> list[float]:
        """Each (scalar) value summed over the ranks, as floats. Every rank calls this at the same
        points (log steps, epoch ends), so it is also where a stop is agreed on: when any rank was
        asked to stop, every rank raises KeyboardInterrupt here, at the same step."""
        totals = torch.stack([v.detach().to(torch.float64).reshape(()) for v in values])
        if self.size == 1:
            return totals.tolist()
        totals = torch.cat([totals, totals.new_tensor([float(stop_requested())])])
        dist.all_reduce(totals)
        *sums, stops = totals.tolist()
        if stops:
            raise KeyboardInterrupt
        return sums

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BN running statistics) on every rank: what DDP does before each
        training forward, done before evaluating, so every rank scores with the same statistics."""
        if self.size > 1:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    @contextlib.contextmanager
    def local_statistics(self, module: nn.Module) -> Iterator[None]:
        """Inside, synchronized BN layers take training statistics over this rank's batches alone:
        for model passes that only rank 0 makes (listeners such as the train/eval-gap diagnostics),
        which would otherwise wait forever for the other ranks' statistics."""
        layers = [m for m in module.modules() if isinstance(m, nn.SyncBatchNorm) or getattr(m, "sync", False) is True]
        saved = [(m, m.process_group) for m in layers]
        if self.size > 1:
            for m in layers:
                m.process_group = self.own_group
        try:
            yield
        finally:
            for m, group in saved:
                m.process_group = group

    def describe(self) -> dict:
        """For the run record's ``repro``: how many processes, connected how."""
        return {"processes": self.size, "backend": self.backend} if self.size > 1 else {}


def stop_requested() -> bool:
    """Asked to stop: a SIGINT/SIGTERM reached this worker, or its launcher (the parent) is gone."""
    parent = _stop["parent"]
    return _stop["requested"] or (parent is not None and os.getppid() != parent)


def _request_stop(signum, frame) -> None:
    _stop["requested"] = True


@contextlib.contextmanager
def joined(cfg, device: torch.device) -> Iterator[Ranks]:
    """This process as one rank of the run's process group, for the duration of the block; outside
    a launcher (one process) simply :class:`Ranks` of one. Joining sets the backend (NCCL on CUDA,
    one GPU per local rank; gloo otherwise), the CPU threads (``threads``, or the cores shared out
    between the local ranks) and turns SIGINT/SIGTERM into a stop request (see :meth:`Ranks.sum`)."""
    size = int(os.environ["WORLD_SIZE"]) if in_worker() else 1
    if size != cfg.nproc:
        raise BnexpError(f"nproc={cfg.nproc}, but the launcher started {size} processes (WORLD_SIZE={size}); "
                         f"use nproc={size}")
    if size == 1:
        yield Ranks(device=device)
        return
    check_device(device, cfg.nproc)
    local_rank, local_size = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", size))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if cfg.threads is None:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    _stop.update(requested=False, parent=os.getppid())
    try:
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
        try:
            own_group, _ = dist.new_subgroups(group_size=1)
            yield Ranks(device=device, rank=dist.get_rank(), size=size, backend=backend, own_group=own_group)
        finally:
            dist.destroy_process_group()
    finally:
        _stop.update(requested=False, parent=None)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_device(device: torch.device, nproc: int) -> None:
    """Several processes train on CPU (gloo) or on one CUDA GPU each (NCCL)."""
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise BnexpError(f"nproc={nproc} with device=cuda: this machine has {torch.cuda.device_count()} GPU(s) and "
                         "NCCL needs one per process; use a smaller nproc, or device=cpu")
    if device.type not in ("cpu", "cuda"):
        raise BnexpError(f"nproc={nproc} with device={device.type}: several processes train on cpu (gloo) or "
                         "cuda (nccl); use device=cpu or device=cuda")


# ---------------------------------------------------------------------------------------------
# The launcher: start the workers, wait, settle the record


def launch(cfg, overrides: list[str], *, run_dir: Optional[Path], resume: Optional[Path], progress: bool,
           callbacks: Iterable = ()) -> RunRecord:
    """Train ``cfg`` with ``cfg.nproc`` worker processes; returns (or raises) as
    :func:`bnexp.train.train` does in one process. ``callbacks`` are pickled to rank 0 and run in
    its process (what they record stays there)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    from bnexp.train import new_run_dir, resolve_device

    check_device(resolve_device(cfg.device.type), cfg.nproc)
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
                    elastic_launch(_launch_config(cfg.nproc, scratch), sys.executable)(
                        "-u", "-m", "bnexp.distributed", str(spec_path))
                except ChildFailedError as exc:
                    failures = exc.failures
                except (SignalException, KeyboardInterrupt):
                    stopped = True
    except BaseException:
        if made and not (target / RUN_FILE).exists():
            remove_dir(target)
        raise
    return settle(target, made=made, stopped=stopped, failures=failures, before=before)


def _launch_config(nproc: int, log_dir: str):
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig

    with socket.socket() as probe:  # a free port for the rendezvous store (torchrun --master-port)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"bnexp-{uuid.uuid4().hex[:8]}",
                        rdzv_backend="static", rdzv_endpoint=f"127.0.0.1:{port}", rdzv_configs={"rank": 0},
                        max_restarts=0, logs_specs=DefaultLogsSpecs(log_dir=log_dir), shutdown_timeout=SHUTDOWN_S)


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
    when rank 0 died without a word. Returns or raises as :func:`bnexp.train.finish`."""
    from bnexp.callbacks import Outcome
    from bnexp.train import Interrupted, finish

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
    return finish(Outcome(status, message), run_dir, record)


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


def worker_main(spec_path: str) -> None:
    """One rank of a launch: train with the launcher's config; a failure becomes an exit code and
    one line in the agent's error file (the launcher reports it; the worker prints nothing)."""
    from bnexp.train import train

    spec = pickle.loads(Path(spec_path).read_bytes())
    sys.argv = spec["argv"]  # the run record's repro.command is the user's command
    rank0 = os.environ.get("RANK") == "0"
    try:
        train(spec["cfg"], spec["overrides"], run_dir=spec["run_dir"], resume=spec["resume"],
              progress=spec["progress"], callbacks=pickle.loads(spec["callbacks"]) if rank0 else ())
    except BaseException as exc:
        if os.environ.get("BNEXP_DEBUG", "") not in ("", "0"):
            import traceback

            traceback.print_exc()
        kind, message, code = classify(exc)
        error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
        if error_file:
            Path(error_file).parent.mkdir(parents=True, exist_ok=True)
            Path(error_file).write_text(json.dumps({"message": message, "timestamp": int(time.time()),
                                                    "bnexp_kind": kind}))
        sys.exit(code)


def classify(exc: BaseException) -> tuple[str, str, int]:
    """(kind, one-line message, exit code) of a worker's failure."""
    from bnexp.train import Diverged, Interrupted, describe_error

    if isinstance(exc, (KeyboardInterrupt, Interrupted)):
        return "interrupted", str(exc) or "stopped", 130
    if isinstance(exc, Diverged):
        return "diverged", str(exc), exc.exit_code
    if lost_peer(exc):
        return "lost", describe_error(exc), 1
    return "failed", describe_error(exc), getattr(exc, "exit_code", 1)


def lost_peer(exc: Optional[BaseException]) -> bool:
    """Whether a collective failed because another rank went away (torch's DistError, or gloo's
    RuntimeError naming its transport: "Connection reset by peer", "Connection closed by peer")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and "/gloo/" in str(exc)):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


if __name__ == "__main__":
    from bnexp.distributed import worker_main as main  # the module's importable copy holds the state

    main(sys.argv[1])
