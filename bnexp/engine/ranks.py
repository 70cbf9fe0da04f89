"""Inside a worker of a data-parallel run: this process's place among the ranks (:class:`Ranks`),
joining the process group, and agreeing on a stop. With one process every method is a no-op."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from bnexp.core.errors import BnexpError

# What init_process_group(init_method="env://") reads; torchrun and bnexp's launcher set them all.
WORKER_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


_stop = {"requested": False, "parent": None}  # this worker's stop request; the pid of its launcher


def in_worker() -> bool:
    """Whether this process is one rank of a process group a launcher started (torchrun's variables)."""
    return all(key in os.environ for key in WORKER_ENV)


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


def _request_stop_or_insist(signum, frame) -> None:
    """SIGTERM, or a first Ctrl-C: a stop request. A second Ctrl-C stops at once."""
    if signum == signal.SIGINT and _stop["requested"]:
        raise KeyboardInterrupt
    _stop["requested"] = True


@contextlib.contextmanager
def stops_between_steps() -> Iterator[None]:
    """While a run trains in this process, SIGTERM (``kill``, Slurm's cancel or requeue) and a first
    Ctrl-C only ask it to stop; the loop stops after the step under way (:func:`stop_requested`)
    and then ends the run, writing its checkpoint and record, undisturbed by further SIGTERMs.
    An exception raised wherever a signal lands can break the code it lands in: one raised inside
    TensorBoard's event writer (a ``queue.put``) left the writer's close waiting forever, until
    Slurm killed the job with its record still ``running``. Processes of a multi-process run
    (:func:`joined`) already stop this way; outside the main thread signals cannot be handled."""
    if in_worker() or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _request_stop_or_insist) for sig in (signal.SIGINT, signal.SIGTERM)}
    _stop["requested"] = False
    try:
        yield
    finally:
        _stop["requested"] = False
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class CpuClock:
    """CPU time the other processes on this machine used since this was made, in cores.

    Reads ``/proc/stat`` (all CPUs) and this process's own CPU time; where ``/proc/stat`` is
    missing (not Linux) it reports 0 and the load average alone decides."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> Optional[tuple[float, float, float]]:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        own = os.times()
        return time.perf_counter(), busy, own.user + own.system

    def others_busy(self) -> float:
        now = self._read()
        if self.start is None or now is None or now[0] - self.start[0] < 0.05:
            return 0.0
        (t0, busy0, own0), (t1, busy1, own1) = self.start, now
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))


def auto_threads(clock: CpuClock) -> tuple[int, str]:
    """Torch CPU threads for a run that does not set ``threads``, and why.

    One per core that other processes leave free: torch's default of one per core collapses when
    another process holds a core (its OpenMP threads spin-wait at every barrier: 3x slower for a
    LeNet here, 10x for its training time), while on an idle machine all cores pay. What is busy
    is the larger of the 1-minute load average and what other processes used while this run was
    being set up (``clock``)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = max(os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0, clock.others_busy())
    threads = max(1, min(cores, cores - math.floor(busy + 0.5)))
    return threads, f"auto: {threads} of {cores} cores ({busy:.1f} busy with other processes)"


@contextlib.contextmanager
def joined(cfg, device: torch.device) -> Iterator[Ranks]:
    """This process as one rank of the run's process group, for the duration of the block; outside
    a launcher (one process) simply :class:`Ranks` of one. Joining sets the backend (NCCL on CUDA,
    one GPU per local rank; gloo otherwise), the CPU threads (``threads``, or the cores shared out
    between the local ranks) and turns SIGINT/SIGTERM into a stop request (see :meth:`Ranks.sum`)."""
    size = int(os.environ["WORLD_SIZE"]) if in_worker() else 1
    if size != cfg.nproc * cfg.nnodes:
        raise BnexpError(f"nproc={cfg.nproc} nnodes={cfg.nnodes}, but the launcher started {size} processes "
                         f"(WORLD_SIZE={size}); use nproc x nnodes = {size}")
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
        torch.set_num_threads(max(1, available_cpus() // local_size))
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    _stop.update(requested=False, parent=os.getppid())
    try:
        from datetime import timedelta

        across_nodes = {"timeout": timedelta(seconds=cfg.rdzv_timeout)} if cfg.nnodes > 1 else {}
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None, **across_nodes)
        try:
            own_group, _ = dist.new_subgroups(group_size=1)
            yield Ranks(device=device, rank=dist.get_rank(), size=size, backend=backend, own_group=own_group)
        finally:
            dist.destroy_process_group()
    finally:
        _stop.update(requested=False, parent=None)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def in_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ


def available_cpus() -> int:
    """The cores this process may use: its Slurm allocation inside a Slurm job (cores per task, or
    on the node), else the CPU affinity mask (what ``taskset`` or a cgroup left), else every core."""
    for key in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        value = os.environ.get(key, "") if in_slurm_job() else ""
        if value.isdigit() and int(value) > 0:
            return int(value)
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_device(device: torch.device, nproc: int) -> None:
    """Several processes train on CPU (gloo) or on one CUDA GPU each (NCCL)."""
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise BnexpError(f"nproc={nproc} with device=cuda: this machine has {torch.cuda.device_count()} GPU(s) and "
                         "NCCL needs one per process; use a smaller nproc, or device=cpu")
    if device.type not in ("cpu", "cuda"):
        raise BnexpError(f"nproc={nproc} with device={device.type}: several processes train on cpu (gloo) or "
                         "cuda (nccl); use device=cpu or device=cuda")


def check_resources(device: torch.device, nproc: int) -> None:
    """Before any process starts: one CPU core per process on CPU, and memory for all of them
    (``nproc=64`` on 2 cores would start workers until memory runs out)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cpu" and nproc > cores:
        raise BnexpError(f"nproc={nproc} on cpu: this machine gives this process {cores} CPU cores, and each "
                         f"training process needs one; use nproc<={cores}")
    available = available_memory()
    if available is not None and nproc * WORKER_MEMORY > available:
        raise BnexpError(f"nproc={nproc}: {nproc} processes need about {nproc * WORKER_MEMORY >> 20:,} MB "
                         f"({WORKER_MEMORY >> 20} MB each), {available >> 20:,} MB are available; use a smaller nproc")


WORKER_MEMORY = 400 << 20  # what one training process takes (torch and its data), measured on digits


def available_memory() -> Optional[int]:
    """Bytes of memory available to new processes (Linux's MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
