"""The shared training loop: every model, norm and dataset goes through :func:`train`.

The data live on the target device as tensors; each step indexes a shuffled permutation,
normalizes the batch in one op and runs forward/backward/step. Shuffling is seeded per epoch,
so a run resumed from a checkpoint sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from bnexp.errors import BnexpError
from bnexp.runs import create_run_dir, new_run_id, now_iso, read_json, write_atomic, write_json
from bnexp.telemetry import Telemetry


class Diverged(BnexpError):
    exit_code = 3


@dataclass
class TrainState:
    """What a checkpoint needs to continue a run exactly where it stopped."""

    epoch: int = 0  # completed epochs
    step: int = 0
    best_val_acc: float = -1.0
    best_epoch: int = 0
    metrics: dict = field(default_factory=dict)


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


def make_optimizer(cfg: DictConfig, params) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def make_scheduler(cfg: DictConfig, optimizer, total_steps: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, drop_single: bool) -> list[torch.Tensor]:
    """Index batches for one epoch; a last batch of one example is dropped when BN is training."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    batches = list(order.split(batch_size))
    if drop_single and len(batches[-1]) < 2:
        batches.pop()
    return batches


@torch.no_grad()
def evaluate(model, data, x_all, y_all, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode (BN uses its running statistics)."""
    model.eval()
    loss_sum = torch.zeros((), device=x_all.device)
    correct = torch.zeros((), device=x_all.device, dtype=torch.long)
    for start in range(0, len(x_all), batch_size):
        x = data.normalize(x_all[start:start + batch_size])
        y = y_all[start:start + batch_size]
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train()
    n = max(len(x_all), 1)
    return loss_sum.item() / n, correct.item() / n


def save_checkpoint(path: Path, model, optimizer, scheduler, state: TrainState, cfg: DictConfig) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a truncated checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": asdict(state),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }, tmp)
    os.replace(tmp, path)


class Run:
    """A run directory being written: config files, run.json and metrics.jsonl."""

    def __init__(self, path: Path, summary: dict):
        self.path, self.summary = path, summary

    @classmethod
    def create(cls, cfg: DictConfig, overrides: list[str], run_dir: Optional[Path], device: torch.device) -> "Run":
        if run_dir is None:
            run_dir = create_run_dir(Path(cfg.output_dir) / "runs", new_run_id(cfg.model.name, cfg.norm.kind, cfg.name))
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_atomic(run_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
        summary = {
            "id": run_dir.name, "status": "running", "started": now_iso(), "ended": None, "duration_s": 0.0,
            "model": cfg.model.name, "norm": cfg.norm.kind, "dataset": cfg.dataset.name,
            "optimizer": cfg.optimizer.name, "lr": cfg.optimizer.lr, "batch_size": cfg.batch_size,
            "epochs": cfg.epochs, "seed": cfg.seed, "overrides": list(overrides), "device": str(device),
            "metrics": {}, "message": None,
        }
        run = cls(run_dir, summary)
        run.save()
        return run

    @classmethod
    def reopen(cls, path: Path) -> "Run":
        summary = read_json(path / "run.json")
        summary.update(status="running", ended=None, message=None)
        run = cls(path, summary)
        run.save()
        return run

    def save(self) -> None:
        write_json(self.path / "run.json", self.summary)

    def log(self, record: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def truncate_metrics(self, last_step: int) -> None:
        """Drop records written after the checkpoint a resumed run restarts from."""
        path = self.path / "metrics.jsonl"
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= last_step]
            write_atomic(path, "".join(line + "\n" for line in kept))


def train(cfg: DictConfig, overrides: list[str], *, run_dir: Optional[Path] = None, resume: Optional[Path] = None,
          progress: bool = True) -> dict:
    """Train one run to completion; returns its ``run.json`` summary plus ``dir``. Raises
    :class:`Diverged` on a non-finite loss and BnexpError for bad input found while loading."""
    from bnexp.data import load_dataset
    from bnexp.models import build_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device.type)
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset, device)
    uses_bn = cfg.norm.kind != "none"
    if uses_bn and len(data.train_x) < 2:
        raise BnexpError(f"dataset {data.name} has {len(data.train_x)} training example(s); batch norm needs >= 2")
    model = build_model(cfg.model, cfg.norm, data.in_channels, data.image_size, data.num_classes).to(device)
    optimizer = make_optimizer(cfg.optimizer, model.parameters())
    steps_per_epoch = len(epoch_batches(len(data.train_x), cfg.batch_size, cfg.seed, 0, uses_bn))
    total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or math.inf)
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = make_scheduler(cfg.optimizer, optimizer, total_steps)

    state = TrainState()
    if resume is not None:
        run = Run.reopen(resume)
        checkpoint = torch.load(resume / "checkpoint.pt", map_location=device, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = TrainState(**checkpoint["state"])
        torch.set_rng_state(checkpoint["rng"])
        if checkpoint["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
        run.truncate_metrics(state.step)
    else:
        run = Run.create(cfg, overrides, run_dir, device)
    compile_seconds = _maybe_compile(cfg, model, data)
    telemetry = Telemetry(run.path, cfg, model, purge_step=state.step + 1 if resume else None)
    started = time.perf_counter() - run.summary.get("duration_s", 0.0)
    status, message = "failed", None
    try:
        with telemetry.progress(total_steps, state.step, enabled=progress) as bar:
            for epoch in range(state.epoch, epochs):
                _train_epoch(cfg, model, data, optimizer, scheduler, state, epoch, total_steps, uses_bn,
                             run, telemetry, bar)
                val_loss, val_acc = evaluate(model, data, data.val_x, data.val_y, cfg.eval_batch_size)
                state.epoch = epoch + 1
                if val_acc > state.best_val_acc:
                    state.best_val_acc, state.best_epoch = val_acc, state.epoch
                state.metrics.update(val_loss=val_loss, val_acc=val_acc, best_val_acc=state.best_val_acc,
                                     best_epoch=state.best_epoch, epoch=state.epoch, step=state.step)
                record = {"kind": "epoch", **state.metrics}
                run.log(record)
                telemetry.log_epoch(record)
                bar.show_epoch(state.epoch, epochs, state.metrics)
                if cfg.checkpoint:
                    save_checkpoint(run.path / "checkpoint.pt", model, optimizer, scheduler, state, cfg)
                _update_summary(run, state, started, compile_seconds)
        status = "completed"
    except Diverged as exc:
        status, message = "diverged", str(exc)
    except KeyboardInterrupt:
        status, message = "interrupted", f"interrupted at step {state.step}; continue with: bnexp train resume={run.path}"
    except Exception as exc:
        message = str(exc) if isinstance(exc, BnexpError) else f"{type(exc).__name__}: {exc}"
        raise
    finally:
        run.summary.update(status=status, message=message)
        _update_summary(run, state, started, compile_seconds, ended=True)
        if status in ("completed", "diverged"):
            telemetry.finish(state.metrics, status)
            write_json(run.path / "norm_params.json", telemetry.norm_params())
        telemetry.close()
    if status == "interrupted":
        raise KeyboardInterrupt
    if status == "diverged":
        raise Diverged(f"{message} (run {run.path}, status diverged)")
    return {**run.summary, "dir": str(run.path)}


def _train_epoch(cfg, model, data, optimizer, scheduler, state: TrainState, epoch: int, total_steps: int,
                 uses_bn: bool, run: Run, telemetry: Telemetry, bar) -> None:
    """One pass over the shuffled training set. Loss/accuracy sums stay on the device; the host
    syncs only at log steps, where a non-finite running loss stops the run as diverged."""
    model.train()
    device = data.train_x.device
    log_every = int(cfg.log_every_steps)  # read once: OmegaConf lookups cost ~20 us each
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, logged = 0, (0, 0.0, 0, time.perf_counter())  # (seen, loss_sum, correct, time) at the last log
    epoch_start = logged[3]
    for idx in epoch_batches(len(data.train_x), cfg.batch_size, cfg.seed, epoch, uses_bn):
        if state.step >= total_steps:
            break
        idx = idx.to(device, non_blocking=True)
        x, y = data.normalize(data.train_x[idx]), data.train_y[idx]
        telemetry.probe.armed = telemetry.histograms_due(state.step + 1)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        state.step += 1
        seen += len(y)
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        bar.advance()
        if telemetry.probe.armed:
            telemetry.log_histograms(state.step, epoch + 1, run)
        if state.step % log_every == 0 or state.step == total_steps:
            now, total_loss, total_correct = time.perf_counter(), loss_sum.item(), correct.item()
            window = seen - logged[0]
            record = {"kind": "train", "step": state.step, "epoch": epoch + 1,
                      "loss": (total_loss - logged[1]) / window, "acc": (total_correct - logged[2]) / window,
                      "lr": scheduler.get_last_lr()[0], "examples_per_s": window / max(now - logged[3], 1e-9)}
            _check_finite(total_loss, state.step, epoch, cfg)
            run.log(record)
            telemetry.log_train(record)
            bar.show_train(record)
            logged = (seen, total_loss, total_correct, now)
    elapsed = time.perf_counter() - epoch_start
    train_loss = loss_sum.item() / max(seen, 1)
    _check_finite(train_loss, state.step, epoch, cfg)
    state.metrics.update(train_loss=train_loss, train_acc=correct.item() / max(seen, 1),
                         lr=scheduler.get_last_lr()[0], examples_per_s=seen / max(elapsed, 1e-9))


def _check_finite(loss: float, step: int, epoch: int, cfg) -> None:
    if not math.isfinite(loss):
        raise Diverged(f"loss became {loss} by step {step} (epoch {epoch + 1}); "
                       f"try a lower optimizer.lr (now {cfg.optimizer.lr})")


def _maybe_compile(cfg: DictConfig, model, data) -> float:
    """Switch custom BN layers to their torch.compile'd path and compile them up front (train and
    eval graphs) on a real batch, so the one-off cost is measured and shown rather than hidden in
    the first step. Parameters and BN buffers are restored afterwards: the warm-up leaves no trace."""
    if cfg.norm.kind != "custom" or not cfg.norm.compile:
        return 0.0
    import copy

    from bnexp.norm import compile_batch_norms

    started = time.perf_counter()
    compile_batch_norms(model)
    saved = copy.deepcopy(model.state_dict())
    x = data.normalize(data.train_x[: cfg.batch_size])
    model(x).sum().backward()
    with torch.no_grad():
        model.eval()
        model(x)
        model.train()
    model.load_state_dict(saved)
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def _update_summary(run: Run, state: TrainState, started: float, compile_seconds: float, ended: bool = False) -> None:
    run.summary["metrics"] = dict(state.metrics)
    run.summary["duration_s"] = round(time.perf_counter() - started, 3)
    run.summary["compile_s"] = round(compile_seconds, 3)
    if ended:
        run.summary["ended"] = now_iso()
    run.save()
