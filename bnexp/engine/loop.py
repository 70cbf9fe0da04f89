"""The shared training loop: every model, norm and dataset goes through :func:`run_loop` (started by
:func:`bnexp.launch.trainer.train`).

The data live on the target device as tensors, normalized once; each step gathers a batch at a
shuffled permutation's indices and runs forward/backward/step. Shuffling is seeded per epoch,
so a run resumed from its checkpoint sees exactly the batches an uninterrupted run would.
Everything that watches training (run record, TensorBoard, progress bar, checkpoints,
diagnostics) is a listener (:mod:`bnexp.engine.callbacks`); the loop itself fits on one screen.
With ``nproc`` > 1 the same loop runs in every process of a data-parallel run, each on its shard
of every batch (``loop.ranks``, :mod:`bnexp.engine.ranks`); only rank 0 has listeners.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from bnexp.config.groups import NORMS, OPTIMIZERS, import_object
from bnexp.core.errors import BnexpError, Diverged, describe_error
from bnexp.engine.callbacks import Callbacks, Outcome, TrainLog
from bnexp.engine.evaluate import evaluation_sums
from bnexp.engine.ranks import stop_requested, stops_between_steps
from bnexp.engine.state import TrainingState
from bnexp.store.run import RunMoved


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
    """The optimizer ``cfg.name`` names in :data:`bnexp.config.groups.OPTIMIZERS`, given the keys it takes."""
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
    """The fewest examples a training batch may hold: one per rank, or the norm's own minimum
    (:class:`~bnexp.config.groups.NormSpec`: two for BN, one example has no batch statistics) per
    rank, or in all for synchronized statistics."""
    needs = NORMS[cfg.norm.kind].min_batch
    return max((1 if cfg.norm.sync else needs) * cfg.nproc, needs)


@dataclass
class Window:
    """Running sums since the last training log."""

    seen: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    time: float = field(default_factory=time.perf_counter)


def run_loop(loop: TrainingState, listeners: Callbacks) -> Outcome:
    """Epochs until done, then ``on_end`` with how it went. Exceptions other than Ctrl-C and
    divergence are recorded as ``failed`` and re-raised. SIGTERM or Ctrl-C stops the run after the
    step under way, as ``interrupted`` (see :func:`stops_between_steps`)."""
    with stops_between_steps():
        return _run_loop(loop, listeners)


def _run_loop(loop: TrainingState, listeners: Callbacks) -> Outcome:
    outcome = Outcome()
    loop.listeners = listeners
    try:
        _epochs(loop, listeners)
        outcome = Outcome("completed")
    except Diverged as exc:
        outcome = Outcome("diverged", str(exc))
    except RunMoved as exc:
        outcome = Outcome("interrupted", str(exc))
    except KeyboardInterrupt:
        outcome = Outcome("interrupted", stop_message(loop))
    except BaseException as exc:
        if not (isinstance(exc, (OSError, BnexpError)) and loop.run is not None and loop.run.moved()):
            outcome = Outcome("failed", failure(loop, exc))
            listeners.on_end(loop, outcome)
            if isinstance(exc, (OSError, BnexpError)):  # a full disk, bad data: one line, the run says why
                raise BnexpError(outcome.message + "".join(f"; {n}" for n in outcome.notes)) from exc
            raise
        # a write by path (checkpoint, TensorBoard) failed because the run was moved after the check
        outcome = Outcome("interrupted", str(RunMoved.at(loop.run.path.name, loop.progress.step)))
    listeners.on_end(loop, outcome)
    return outcome


def failure(loop: TrainingState, exc: BaseException) -> str:
    """Why a run failed, in one line; a failed write that names no file (TensorBoard's writer on a
    full disk) names the run directory."""
    from bnexp.store.safeio import naming

    if isinstance(exc, OSError) and loop.run is not None:
        exc = naming(exc, loop.run.path)
    return describe_error(exc)


def stop_message(loop: TrainingState) -> str:
    """What an interrupted run says: where it stopped, the step it will continue from when that is
    not where it stopped (no step checkpoint on the way out: the last epoch's), and the command to
    continue it, or that it cannot be continued."""
    p, cfg = loop.progress, loop.cfg
    where = f"stopped at step {p.step} (epoch {loop.epoch} of {loop.epochs})"
    continue_at = p.step if p.partial else (p.metrics.get("step") if p.epoch >= 1 else None)
    if loop.run is not None and cfg.checkpoint and continue_at is not None:
        saved = "" if continue_at == p.step else f"; it continues from step {continue_at}"
        return f"{where}{saved}; continue with: bnexp train resume={loop.run.path}"
    again = (loop.run.record.repro.get("command") if loop.run is not None else None) or "bnexp train ..."
    why = "checkpoint=false" if not cfg.checkpoint else "nothing was saved before it stopped"
    return f"{where}; it cannot be resumed ({why}, no checkpoint); start it again with: {again}"


def _epochs(loop: TrainingState, listeners: Callbacks) -> None:
    """Every epoch still to train, each validated and handed to the listeners."""
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


def mean_rate(metrics: dict, epochs: int) -> float:
    """Throughput over epochs 1..``epochs``: the harmonic mean of their rates (total examples over
    total time, epochs being the same size), updated from the previous epochs' mean."""
    rate, before = metrics["examples_per_s"], metrics.get("mean_examples_per_s")
    return rate if not before or epochs < 2 else epochs / ((epochs - 1) / before + 1 / rate)


def validate(loop: TrainingState) -> tuple[float, float]:
    """Validation loss and accuracy with running statistics. With several ranks, each scores its
    share of the validation set with rank 0's statistics and the sums are added up."""
    ranks, data = loop.ranks, loop.data
    ranks.broadcast_buffers(loop.module)
    part = ranks.part(len(data.val_x))
    sums = evaluation_sums(loop.module, data, data.val_x[part], data.val_y[part], loop.cfg.eval_batch_size)
    loss_sum, correct = ranks.sum(*sums)
    return loss_sum / max(len(data.val_x), 1), correct / max(len(data.val_x), 1)


def train_epoch(loop: TrainingState, listeners: Callbacks) -> None:
    """One pass over the shuffled training set, each rank on its shard of every batch. Loss/accuracy
    sums stay on the device; the host syncs (and the ranks add up their sums) only at log steps,
    where a non-finite running loss stops the run as diverged."""
    cfg, data, p = loop.cfg, loop.data, loop.progress
    log_every = int(cfg.log_every_steps)  # read once: OmegaConf lookups cost ~20 us each
    step_schedule = cfg.optimizer.schedule != "constant"  # a constant learning rate needs no scheduler step
    loop.model.train()
    loss_sum = torch.zeros((), device=loop.device)
    correct = torch.zeros((), device=loop.device, dtype=torch.long)
    seen, last = 0, Window()
    epoch_start = last.time
    batches = epoch_batches(len(data.train_x), cfg.batch_size, cfg.seed, loop.epoch - 1, loop.min_batch)
    done = 0
    if p.partial:  # continuing a run stopped mid-epoch: its sums so far, its batches skipped
        done = p.step - (loop.epoch - 1) * len(batches)
        loss_sum.fill_(p.partial["loss_sum"])
        correct.fill_(p.partial["correct"])
        seen = p.partial["seen"]
        last = Window(*p.partial["window"])
        p.partial = {}
    for batch in batches[done:]:
        if p.step >= loop.total_steps:
            break
        idx = loop.ranks.shard(batch).to(loop.device, non_blocking=True)
        x, y = data.train_batch(idx), data.train_y[idx]
        loop.hist_due = loop.hist_every_steps > 0 and (p.step == 0 or (p.step + 1) % loop.hist_every_steps == 0)
        logits = loop.model(x)
        summed = F.cross_entropy(logits, y, reduction="sum")
        loss = summed / (len(batch) / loop.ranks.size)  # DDP averages over ranks: the global batch's mean
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        if step_schedule:
            loop.scheduler.step()
        p.step += 1
        seen += len(batch)
        loss_sum += summed.detach()
        correct += (logits.detach().argmax(1) == y).sum()
        listeners.on_step(loop)
        stop = loop.ranks.size == 1 and stop_requested()  # several ranks agree on their stop in ranks.sum
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
        if stop:  # Ctrl-C/SIGTERM: stop after this step (and its log), saving the epoch's sums so far
            p.partial = {"seen": seen, "loss_sum": loss_sum.item(), "correct": int(correct.item()),
                         "window": [last.seen, float(last.loss_sum), int(last.correct)]}
            raise KeyboardInterrupt
    loop.hist_due = False
    elapsed = time.perf_counter() - epoch_start
    total_loss, total_correct = loop.ranks.sum(loss_sum, correct)
    train_loss = total_loss / max(seen, 1)
    _check_finite(train_loss, loop)
    p.metrics.update(train_loss=train_loss, train_acc=total_correct / max(seen, 1),
                     lr=loop.scheduler.get_last_lr()[0], examples_per_s=seen / max(elapsed, 1e-9))


def _check_finite(loss: float, loop: TrainingState) -> None:
    if not math.isfinite(loss):
        raise Diverged(f"loss became {loss} by step {loop.progress.step} (epoch {loop.epoch}); "
                       f"try a lower optimizer.lr (now {loop.cfg.optimizer.lr})")


def _maybe_compile(loop: TrainingState) -> float:
    """Switch custom BN layers to their torch.compile'd path and compile them up front (train and
    eval graphs) on a real batch, so the one-off cost is measured and shown rather than hidden in
    the first step. Parameters and BN buffers are restored afterwards: the warm-up leaves no trace."""
    cfg, model = loop.cfg, loop.module
    if not (NORMS[cfg.norm.kind].compile and cfg.norm.compile):
        return 0.0
    import copy

    from bnexp.nn.batchnorm import compile_batch_norms

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


