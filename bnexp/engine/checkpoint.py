"""A run's checkpoint, written and read in this one place.

``checkpoint.pt`` holds plain tensors and plain Python values only (state dicts, RNG states as
byte tensors, progress counters, the config as a dict), so it is read with
``torch.load(weights_only=True)``: a planted pickle that asks to run code is refused, not executed.
It is written to a temporary file and renamed over the old one, so a crash (kill -9, a full disk)
leaves the previous checkpoint intact and no temporary file behind.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from bnexp.core.errors import BnexpError, write_failure

TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


@dataclass
class Progress:
    """How far a run got: what a checkpoint needs, besides the weights, to continue exactly."""

    epoch: int = 0  # completed epochs
    step: int = 0
    best_val_acc: float = -1.0
    best_epoch: int = 0
    metrics: dict = field(default_factory=dict)


@dataclass
class Checkpoint:
    model: dict
    optimizer: dict
    scheduler: dict
    progress: Progress
    rng: torch.Tensor
    cuda_rng: Optional[list]


def save_checkpoint(path: Path, model, optimizer, scheduler, progress: Progress, config: dict) -> None:
    """Write atomically; a failure (a full disk) removes the temporary file and names the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": asdict(progress),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "config": config,
    }
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)):  # torch's writer reports a failed write as RuntimeError
            raise BnexpError(f"cannot write {path}: {write_failure(exc, path.parent)}") from exc
        raise


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Read a checkpoint as plain data; one-line errors for a missing, damaged or hostile file."""
    path = Path(path)
    if not path.is_file():
        raise BnexpError(f"{path}: no checkpoint (the run stopped before its first epoch ended)")
    try:
        raw: Any = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        culprit = next((line for line in lines if "GLOBAL" in line), None)
        if culprit is None:  # torch wraps the unpickler's own complaint in advice; keep the complaint
            reason = next((line for line in lines if not line.startswith(TORCH_ADVICE)), lines[0] if lines else "")
            raise BnexpError(f"{path}: damaged checkpoint ({reason[:160]})") from None
        raise BnexpError(f"{path}: refused to load: it asks to import or run code ({culprit[:120]}), which a "
                         "bnexp checkpoint never does; it may have been tampered with") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BnexpError(f"{path}: damaged checkpoint ({str(exc).splitlines()[0][:160]})") from None
    try:
        return Checkpoint(model=raw["model"], optimizer=raw["optimizer"], scheduler=raw["scheduler"],
                          progress=Progress(**raw["progress"]), rng=raw["rng"], cuda_rng=raw.get("cuda_rng"))
    except (KeyError, TypeError) as exc:
        raise BnexpError(f"{path}: not a bnexp checkpoint (missing or wrong {exc})") from None


def restore(checkpoint: Checkpoint, model, optimizer, scheduler) -> Progress:
    """Put a checkpoint's weights, optimizer/scheduler state and RNG back; returns its progress."""
    try:
        model.load_state_dict(checkpoint.model)
        optimizer.load_state_dict(checkpoint.optimizer)
        scheduler.load_state_dict(checkpoint.scheduler)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise BnexpError(f"the checkpoint does not fit this run's model ({str(exc).splitlines()[0][:160]})") from None
    torch.set_rng_state(checkpoint.rng.cpu())
    if checkpoint.cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in checkpoint.cuda_rng])
    return checkpoint.progress
