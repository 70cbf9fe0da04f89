"""The shared training loop: every model, norm and dataset goes through :func:`train`.

The data live on the target device as tensors; each step indexes a shuffled permutation,
normalizes the batch in one op and runs forward/backward/step. Shuffling is seeded per epoch,
so a run resumed from its checkpoint sees exactly the batches an uninterrupted run would.
Everything that watches training (run record, TensorBoard, progress bar, checkpoints,
diagnostics) is a listener (:mod:`bnexp.callbacks`); the loop itself fits on one screen.
With ``nproc`` > 1 the same loop runs in every process of a data-parallel run, each on its shard
of every batch (``loop.ranks``, :mod:`bnexp.distributed`); only rank 0 has listeners.
"""

from __future__ import annotations

import math
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from bnexp.callbacks import Callback, Callbacks, Checkpointer, Outcome, ProgressBar, RunLog, TrainLog
from bnexp.checkpoint import Progress, load_checkpoint, restore, write_failure
from bnexp.config import OPTIMIZERS, dataset_settings, import_object, override_value
from bnexp.distributed import Ranks, in_worker, joined, launch
from bnexp.errors import BnexpError
from bnexp.runs import (CHECKPOINT_FILE, CONFIG_FILE, OVERRIDES_FILE, Run, RunRecord, now_iso, run_stem,
                        unique_dir, write_atomic)


class Diverged(BnexpError):
    exit_code = 3


class Interrupted(BnexpError):
    """Ctrl-C or SIGTERM: the run is kept as ``interrupted`` with its last checkpoint."""

    exit_code = 130
    label = "interrupted"


def resolve_device(kind: str) -> torch.device:
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise BnexpError("device=cuda: CUDA is not available on this machine; use device=cpu or device=auto")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise BnexpError("device=mps: MPS is not available on this machine; use device=cpu or device=auto")
    return torch.device(kind)


def build_optimizer(cfg: DictConfig, params) -> torch.optim.Optimizer:
    """The optimizer ``cfg.name`` names in :data:`bnexp.config.OPTIMIZERS`, given the keys it takes."""
    dotted, keys = OPTIMIZERS[cfg.name]
    kwargs = {k: tuple(cfg[k]) if k == "betas" else cfg[k] for k in keys}
    return import_object(dotted)(params, **kwargs)


def build_scheduler(cfg: DictConfig, optimizer, total_steps: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, min_size: int) -> list[torch.Tensor]:
    """Global index batches for one epoch (the same on every rank); a last batch of fewer than
    ``min_size`` examples (:func:`smallest_batch`) is dropped."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    batches = list(order.split(batch_size))
    if len(batches[-1]) < min_size:
        batches.pop()
    return batches


def smallest_batch(cfg: DictConfig) -> int:
    """The fewest examples a training batch may hold: one per rank, two per rank for BN with
    per-replica statistics (one example has none), two in all for synchronized BN."""
    uses_bn = cfg.norm.kind != "none"
    per_rank = 2 if uses_bn and not cfg.norm.sync else 1
    return max(per_rank * cfg.nproc, 2 if uses_bn else 1)


@torch.no_grad()
def evaluate(model, data, x_all, y_all, batch_size: int, batch_stats: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy. BN normalizes with its running statistics (eval mode), or
    with each evaluation batch's own statistics when ``batch_stats`` (train mode, running statistics
    saved and put back, so evaluating leaves no trace)."""
    loss_sum, correct = evaluation_sums(model, data, x_all, y_all, batch_size, batch_stats)
    n = max(len(x_all), 1)
    return loss_sum.item() / n, correct.item() / n


@torch.no_grad()
def evaluation_sums(model, data, x_all, y_all, batch_size: int,
                    batch_stats: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and the number of correct predictions, as device tensors (see :func:`evaluate`).
    With ``batch_stats`` a last batch of one example joins the one before: BN cannot normalize a
    single example by its own statistics."""
    saved = {k: v.clone() for k, v in model.state_dict().items()} if batch_stats else None
    model.train(batch_stats)
    loss_sum = torch.zeros((), device=x_all.device)
    correct = torch.zeros((), device=x_all.device, dtype=torch.long)
    bounds = [*range(0, len(x_all), batch_size), len(x_all)]
    if batch_stats and len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    for start, end in zip(bounds, bounds[1:]):
        x = data.normalize(x_all[start:end])
        y = y_all[start:end]
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    if saved is not None:
        model.load_state_dict(saved)
    model.train()
    return loss_sum, correct


@dataclass
class Loop:
    """One run's training state, as the loop advances it and listeners read it."""

    cfg: DictConfig
    model: torch.nn.Module  # what the step calls (a DistributedDataParallel wrapper with nproc > 1)
    module: torch.nn.Module  # the model itself: its state dict, its norm sites
    data: object  # bnexp.data.DataBundle
    optimizer: torch.optim.Optimizer
    scheduler: object
    progress: Progress
    total_steps: int
    epochs: int
    uses_bn: bool
    min_batch: int  # a smaller last batch of an epoch is dropped (smallest_batch)
    started: float  # perf_counter() at the start, minus the time earlier sessions of the run took
    compile_s: float = 0.0
    epoch: int = 0  # the epoch being trained, from 1
    hist_due: bool = False  # this step's forward/backward should be captured for histograms
    run: Optional[Run] = None  # rank 0's; None on the other ranks, which keep no run and no listeners
    ranks: Ranks = field(default_factory=Ranks)  # this process among the data-parallel ones (one: rank 0 of 1)
    record_every: int = 0  # hist_every_steps, as a plain int (an OmegaConf read costs ~20 us)
    listeners: Optional[Callbacks] = None  # everything watching this run (set by run_loop)

    @property
    def device(self) -> torch.device:
        return self.data.train_x.device


@dataclass
class Window:
    """Running sums since the last training log."""

    seen: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    time: float = field(default_factory=time.perf_counter)


def train(cfg: DictConfig, overrides: list[str], *, run_dir: Optional[Path] = None, resume: Optional[Path] = None,
          progress: bool = True, callbacks: Iterable[Callback] = ()) -> Optional[RunRecord]:
    """Train one run to completion; returns its record (``record.dir`` is its directory).

    ``run_dir``: an existing empty directory to use (a sweep job's); ``resume``: a run directory to
    continue from its checkpoint, with ``cfg`` its saved config (longer ``epochs``/``max_steps``
    extend it). Raises :class:`Diverged` on a non-finite loss, :class:`Interrupted` on Ctrl-C or
    SIGTERM, and BnexpError for bad input found while loading.

    With ``nproc`` > 1 this process launches that many workers and waits for them
    (:mod:`bnexp.distributed`); in a worker it trains as one rank, and ranks other than 0 return None.
    """
    if cfg.nproc > 1 and not in_worker():
        return launch(cfg, overrides, run_dir=run_dir, resume=resume, progress=progress, callbacks=callbacks)
    with joined(cfg, resolve_device(cfg.device.type)) as ranks:
        return train_rank(cfg, overrides, ranks, run_dir=run_dir, resume=resume, progress=progress,
                          callbacks=callbacks)


def train_rank(cfg: DictConfig, overrides: list[str], ranks: Ranks, *, run_dir: Optional[Path],
               resume: Optional[Path], progress: bool, callbacks: Iterable[Callback]) -> Optional[RunRecord]:
    """:func:`train` in this process, as rank ``ranks.rank`` of ``ranks.size``: every rank builds the
    same model and sees its shard of each batch; rank 0 alone keeps the run and its listeners."""
    from bnexp.data import load_dataset
    from bnexp.models import build_model, synchronize_norms

    lead = ranks.rank == 0
    opened = Run.open(resume) if resume is not None and lead else None  # first: a busy run is refused early
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = ranks.device
        torch.manual_seed(cfg.seed)
        data = load_dataset(dataset_settings(cfg), device)
        uses_bn, min_batch = cfg.norm.kind != "none", smallest_batch(cfg)
        steps_per_epoch = len(epoch_batches(len(data.train_x), cfg.batch_size, cfg.seed, 0, min_batch))
        if steps_per_epoch == 0:
            where = f" with nproc={cfg.nproc}" if cfg.nproc > 1 else ""
            raise BnexpError(f"dataset {data.name} has {len(data.train_x)} training example(s); "
                             f"{'batch norm' if uses_bn else 'training'}{where} needs >= {min_batch}")
        module = build_model(cfg.model, cfg.norm, data.in_channels, data.image_size, data.num_classes).to(device)
        sync_note = synchronize_norms(module, cfg.norm, device)
        optimizer = build_optimizer(cfg.optimizer, module.parameters())
        total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or math.inf)
        scheduler = build_scheduler(cfg.optimizer, optimizer, total_steps)
        state = Progress()
        if resume is not None:
            state = restore(load_checkpoint(Path(resume) / CHECKPOINT_FILE, device), module, optimizer, scheduler)
            if state.step >= total_steps:
                name = Path(resume).name
                raise BnexpError(f"run {name} already trained {state.step} steps ({state.epoch} epochs); to train "
                                 f"longer: resume={name} epochs=N with N > {cfg.epochs}")
        model = ranks.wrap(module)
    except BaseException:
        if opened is not None:
            opened.close()  # the run's record is left exactly as it was
        raise
    if sync_note and lead:
        from bnexp.cli import error_line

        error_line(sync_note, label="note")
    execution = {**ranks.describe(), **({"norm_sync": sync_note} if sync_note else {})}
    run = (opened or create_run(cfg, overrides, run_dir, device, execution)) if lead else None
    loop = Loop(cfg=cfg, model=model, module=module, data=data, optimizer=optimizer, scheduler=scheduler,
                progress=state, total_steps=total_steps, epochs=math.ceil(total_steps / steps_per_epoch),
                uses_bn=uses_bn, min_batch=min_batch, run=run, ranks=ranks, record_every=int(cfg.hist_every_steps),
                started=time.perf_counter() - (run.record.duration_s if run else 0.0))
    resumed_at = state.step if opened is not None else None
    listeners = [*run_listeners(cfg, overrides, run, module, resumed_at, progress), *callbacks] if run else []
    outcome = run_loop(loop, Callbacks(listeners))
    return finish(outcome, run.path if run else None, run.record if run else None)


def run_listeners(cfg: DictConfig, overrides: list[str], run: Run, module, resumed_at: Optional[int],
                  progress: bool) -> list[Callback]:
    """Everything that watches a run (rank 0's alone): its record, checkpoint, TensorBoard,
    diagnostics, progress bar. ``resumed_at``: the checkpoint's step, for a continued run."""
    from bnexp.diagnostics import diagnostics
    from bnexp.telemetry import Telemetry

    resumed = resumed_at is not None
    listeners = [RunLog(run, resumed=resumed)]
    if resumed:
        listeners.append(_ConfigRefresh(cfg, overrides))
    if cfg.checkpoint:
        listeners.append(Checkpointer(run.path / CHECKPOINT_FILE, OmegaConf.to_container(cfg, resolve=True)))
    telemetry = Telemetry(run, cfg, module, purge_step=resumed_at + 1 if resumed else None)
    listeners += [telemetry, *diagnostics(cfg, run, module, telemetry.writer)]
    if progress:
        listeners.append(ProgressBar())
    return listeners


def run_loop(loop: Loop, listeners: Callbacks) -> Outcome:
    """Epochs until done, then ``on_end`` with how it went. Exceptions other than Ctrl-C and
    divergence are recorded as ``failed`` and re-raised."""
    outcome = Outcome()
    loop.listeners = listeners
    try:
        loop.compile_s = _maybe_compile(loop)
        listeners.on_start(loop)
        for epoch in range(loop.progress.epoch, loop.epochs):
            loop.epoch = epoch + 1
            train_epoch(loop, listeners)
            val_loss, val_acc = validate(loop)
            p = loop.progress
            p.epoch = loop.epoch
            if val_acc > p.best_val_acc:
                p.best_val_acc, p.best_epoch = val_acc, p.epoch
            with loop.ranks.local_statistics(loop.module):  # listeners run on rank 0 alone
                extra = listeners.on_validation(loop)
            p.metrics.update(val_loss=val_loss, val_acc=val_acc, **extra,
                             best_val_acc=p.best_val_acc, best_epoch=p.best_epoch, epoch=p.epoch, step=p.step,
                             mean_examples_per_s=mean_rate(p.metrics, p.epoch))
            listeners.on_epoch(loop, {"kind": "epoch", **p.metrics})
        outcome = Outcome("completed")
    except Diverged as exc:
        outcome = Outcome("diverged", str(exc))
    except KeyboardInterrupt:
        where = loop.run.path if loop.run else "RUN"
        outcome = Outcome("interrupted", f"stopped at step {loop.progress.step} (epoch {loop.epoch} of "
                                         f"{loop.epochs}); continue with: bnexp train resume={where}")
    except BaseException as exc:
        outcome = Outcome("failed", describe_error(exc))
        listeners.on_end(loop, outcome)
        if isinstance(exc, (OSError, BnexpError)):  # a full disk, bad data: one line, the run says why
            raise BnexpError(outcome.message + "".join(f"; {n}" for n in outcome.notes)) from exc
        raise
    listeners.on_end(loop, outcome)
    return outcome


def mean_rate(metrics: dict, epochs: int) -> float:
    """Throughput over epochs 1..``epochs``: the harmonic mean of their rates (total examples over
    total time, epochs being the same size), updated from the previous epochs' mean."""
    rate, before = metrics["examples_per_s"], metrics.get("mean_examples_per_s")
    return rate if not before or epochs < 2 else epochs / ((epochs - 1) / before + 1 / rate)


def validate(loop: Loop) -> tuple[float, float]:
    """Validation loss and accuracy with running statistics. With several ranks, each scores its
    share of the validation set with rank 0's statistics and the sums are added up."""
    ranks, data = loop.ranks, loop.data
    ranks.broadcast_buffers(loop.module)
    part = ranks.part(len(data.val_x))
    sums = evaluation_sums(loop.module, data, data.val_x[part], data.val_y[part], loop.cfg.eval_batch_size)
    loss_sum, correct = ranks.sum(*sums)
    return loss_sum / max(len(data.val_x), 1), correct / max(len(data.val_x), 1)


def train_epoch(loop: Loop, listeners: Callbacks) -> None:
    """One pass over the shuffled training set, each rank on its shard of every batch. Loss/accuracy
    sums stay on the device; the host syncs (and the ranks add up their sums) only at log steps,
    where a non-finite running loss stops the run as diverged."""
    cfg, data, p = loop.cfg, loop.data, loop.progress
    log_every = int(cfg.log_every_steps)  # read once: OmegaConf lookups cost ~20 us each
    loop.model.train()
    loss_sum = torch.zeros((), device=loop.device)
    correct = torch.zeros((), device=loop.device, dtype=torch.long)
    seen, last = 0, Window()
    epoch_start = last.time
    for batch in epoch_batches(len(data.train_x), cfg.batch_size, cfg.seed, loop.epoch - 1, loop.min_batch):
        if p.step >= loop.total_steps:
            break
        idx = loop.ranks.shard(batch).to(loop.device, non_blocking=True)
        x, y = data.normalize(data.train_x[idx]), data.train_y[idx]
        loop.hist_due = loop.record_every > 0 and (p.step == 0 or (p.step + 1) % loop.record_every == 0)
        logits = loop.model(x)
        summed = F.cross_entropy(logits, y, reduction="sum")
        loss = summed / (len(batch) / loop.ranks.size)  # DDP averages over ranks: the global batch's mean
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        loop.scheduler.step()
        p.step += 1
        seen += len(batch)
        loss_sum += summed.detach()
        correct += (logits.detach().argmax(1) == y).sum()
        listeners.on_step(loop)
        if p.step % log_every == 0 or p.step == loop.total_steps:
            now = time.perf_counter()
            total_loss, total_correct = loop.ranks.sum(loss_sum, correct)
            window = seen - last.seen
            _check_finite(total_loss, loop)
            listeners.on_log(loop, TrainLog(step=p.step, epoch=loop.epoch,
                                            loss=(total_loss - last.loss_sum) / window,
                                            acc=(total_correct - last.correct) / window,
                                            lr=loop.scheduler.get_last_lr()[0],
                                            examples_per_s=window / max(now - last.time, 1e-9)))
            last = Window(seen, total_loss, total_correct, now)
    loop.hist_due = False
    elapsed = time.perf_counter() - epoch_start
    total_loss, total_correct = loop.ranks.sum(loss_sum, correct)
    train_loss = total_loss / max(seen, 1)
    _check_finite(train_loss, loop)
    p.metrics.update(train_loss=train_loss, train_acc=total_correct / max(seen, 1),
                     lr=loop.scheduler.get_last_lr()[0], examples_per_s=seen / max(elapsed, 1e-9))


def _check_finite(loss: float, loop: Loop) -> None:
    if not math.isfinite(loss):
        raise Diverged(f"loss became {loss} by step {loop.progress.step} (epoch {loop.epoch}); "
                       f"try a lower optimizer.lr (now {loop.cfg.optimizer.lr})")


def _maybe_compile(loop: Loop) -> float:
    """Switch custom BN layers to their torch.compile'd path and compile them up front (train and
    eval graphs) on a real batch, so the one-off cost is measured and shown rather than hidden in
    the first step. Parameters and BN buffers are restored afterwards: the warm-up leaves no trace."""
    cfg, model = loop.cfg, loop.module
    if cfg.norm.kind != "custom" or not cfg.norm.compile:
        return 0.0
    import copy

    from bnexp.norm import compile_batch_norms

    started = time.perf_counter()
    compile_batch_norms(model)
    saved = copy.deepcopy(model.state_dict())
    x = loop.data.normalize(loop.data.train_x[: cfg.batch_size])
    model(x).sum().backward()
    with torch.no_grad():
        model.eval()
        model(x)
        model.train()
    model.load_state_dict(saved)
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# The run directory of a training run


def new_run_dir(cfg: DictConfig) -> Path:
    """A fresh, empty directory for a new run: ``output_dir/runs/<date>-<time>-<model>-<norm>[-name]-<hex>``."""
    return unique_dir(Path(cfg.output_dir) / "runs", run_stem(cfg.model.name, cfg.norm.kind, cfg.name))


def create_run(cfg: DictConfig, overrides: list[str], run_dir: Optional[Path], device: torch.device,
               execution: Optional[dict] = None) -> Run:
    """A new run: its directory (``run_dir``, or a fresh one under ``output_dir/runs``), config files
    and record, locked by this process. ``execution``: how it runs (processes, backend), for ``repro``."""
    made = run_dir is None
    if made:
        run_dir = new_run_dir(cfg)
    record = new_record(cfg, overrides, run_dir.name, device, execution)
    files = {CONFIG_FILE: OmegaConf.to_yaml(cfg, resolve=True),
             OVERRIDES_FILE: OmegaConf.to_yaml(OmegaConf.create(list(overrides)))}
    return Run.create(run_dir, record, files, made_dir=made)


def new_record(cfg: DictConfig, overrides: list[str], run_id: str, device: torch.device,
               execution: Optional[dict] = None) -> RunRecord:
    d = cfg.dataset
    return RunRecord(
        id=run_id, status="running", started=now_iso(), model=cfg.model.name, norm=cfg.norm.kind,
        dataset=d.name, dataset_path=d.path or d.images or (d.root if d.name in ("mnist", "fashion_mnist", "cifar10")
                                                              else None),
        experiment=override_value(overrides, "experiment"), name=cfg.name, optimizer=cfg.optimizer.name,
        lr=cfg.optimizer.lr, batch_size=cfg.batch_size, epochs=cfg.epochs, max_steps=cfg.max_steps, seed=cfg.seed,
        nproc=cfg.nproc, device=str(device), overrides=list(overrides),
        repro={**reproducibility(device), **(execution or {})},
    )


def reproducibility(device: torch.device) -> dict:
    """What it takes to run this again: command line, code version, software, machine."""
    import bnexp

    info = {"command": shlex.join(["bnexp", *sys.argv[1:]]), "cwd": os.getcwd(),
            "python": platform.python_version(), "torch": torch.__version__, "bnexp": bnexp.__version__,
            "host": socket.gethostname(), "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, timeout=5)
            info.update(git_commit=commit.stdout.strip(), git_dirty=bool(dirty.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    return info


class _ConfigRefresh(Callback):
    """A continued run that trains longer saves its new length (config.yaml, overrides, record)."""

    def __init__(self, cfg: DictConfig, overrides: list[str]):
        self.cfg, self.overrides = cfg, overrides

    def on_start(self, loop):
        run, cfg = loop.run, self.cfg
        if (run.record.epochs, run.record.max_steps) != (cfg.epochs, cfg.max_steps):
            write_atomic(run.path / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
            write_atomic(run.path / OVERRIDES_FILE, OmegaConf.to_yaml(OmegaConf.create(list(self.overrides))))
            run.record.epochs, run.record.max_steps, run.record.overrides = cfg.epochs, cfg.max_steps, self.overrides
            run.save()


def describe_error(exc: BaseException) -> str:
    """One line for the record: a user error's message, a failed write with its path, else the type."""
    if isinstance(exc, BnexpError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot write {exc.filename}: {write_failure(exc, Path(exc.filename).parent)}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def finish(outcome: Outcome, run_dir: Optional[Path], record: Optional[RunRecord]) -> Optional[RunRecord]:
    """The record of a run that ended well (None on ranks other than 0, which keep none), else the
    error its outcome calls for."""
    notes = "".join(f"; {n}" for n in outcome.notes)
    message = outcome.message or outcome.status
    if outcome.status == "interrupted":
        raise Interrupted(message + notes)
    if outcome.status == "diverged":
        raise Diverged(f"{message} (run {run_dir}, status diverged){notes}")
    if outcome.status != "completed":
        raise BnexpError(f"{message}{notes}")
    if notes:
        raise BnexpError(f"run {run_dir} completed{notes}")
    if record is not None:
        record.dir = str(run_dir)
    return record
