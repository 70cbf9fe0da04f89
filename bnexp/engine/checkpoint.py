"""A run's checkpoint, written and read in this one place.

``checkpoint.pt`` holds plain tensors and plain Python values only (state dicts, RNG states as
byte tensors, progress counters, the config as a dict), so it is read with
``torch.load(weights_only=True)``: a planted pickle that asks to run code is refused, not executed.
It is written to a temporary file and renamed over the old one, so a crash (kill -9, a full disk)
leaves the previous checkpoint intact and no temporary file behind.
"""

from __future__ import annotations

import errno
import os
import pickle
import stat
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from bnexp.core.errors import BnexpError, write_failure
from bnexp.store.safeio import open_temporary

MAX_COUNTER = 10**12  # epochs or steps beyond this are not a real run's
TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


@dataclass
class Progress:
    """How far a run got: what a checkpoint needs, besides the weights, to continue exactly."""

    epoch: int = 0  # completed epochs
    step: int = 0
    best_val_acc: float = -1.0
    best_epoch: int = 0
    metrics: dict = field(default_factory=dict)
    # a run stopped mid-epoch: the epoch's running sums at its last step (seen, loss_sum, correct,
    # and those at the last log), so that continuing from that step ends exactly as if never stopped
    partial: dict = field(default_factory=dict)


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
        with os.fdopen(open_temporary(tmp), "wb") as handle:  # O_EXCL, O_NOFOLLOW: never through a planted link
            torch.save(payload, handle)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)):  # torch's writer reports a failed write as RuntimeError
            raise BnexpError(f"cannot write {path}: {write_failure(exc, path.parent)}") from exc
        raise


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Read a checkpoint as plain data; one-line errors for a missing, damaged or hostile file."""
    path = Path(path)
    if not os.path.lexists(path):
        raise BnexpError(f"{path}: no checkpoint (the run stopped before its first epoch ended)")
    try:
        with open_checkpoint(path) as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's protocol warning for a damaged file: noise
            raw: Any = torch.load(handle, map_location=device, weights_only=True)
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
    except BnexpError:  # open_checkpoint's own refusals (a link, not a regular file)
        raise
    except Exception as exc:  # random bytes read as an old-style pickle fail in many ways (KeyError: 248, ...)
        reason = " ".join(str(exc).split())[:120]
        raise BnexpError(f"{path}: damaged checkpoint ({type(exc).__name__}{': ' if reason else ''}{reason})") \
            from None
    problem = structure_problem(raw)
    if problem:
        raise BnexpError(f"{path}: not a bnexp checkpoint ({problem})")
    return Checkpoint(model=raw["model"], optimizer=raw["optimizer"], scheduler=raw["scheduler"],
                      progress=Progress(**raw["progress"]), rng=raw["rng"], cuda_rng=raw.get("cuda_rng"))


def open_checkpoint(path: Path):
    """The checkpoint file for reading: a regular file, never through a symlink (bnexp writes none)
    and never a FIFO or device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BnexpError(f"{path}: a symbolic link, which bnexp never writes as a checkpoint; refused "
                             "(planted?)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BnexpError(f"{path}: not a regular file; refused")
    return os.fdopen(fd, "rb")


def _is_byte_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1


def _plain(value: Any, depth: int = 0) -> bool:
    """Tensors, numbers, strings, None, and lists/tuples/dicts of them (an optimizer's state)."""
    if isinstance(value, (torch.Tensor, bool, int, float, str)) or value is None:
        return True
    if depth > 6 or not isinstance(value, (list, tuple, dict)):
        return False
    items = value.values() if isinstance(value, dict) else value
    return all(_plain(item, depth + 1) for item in items)


def structure_problem(raw: Any) -> Optional[str]:
    """What is wrong with a loaded checkpoint's structure or ranges, in words; None when it is what
    :func:`save_checkpoint` writes. Checked before any of it is used, so a hostile or damaged file
    is one line, never a TypeError deep in torch or a loop over a negative epoch counter."""
    if not isinstance(raw, dict):
        return f"a {type(raw).__name__} instead of a dict of model, optimizer, scheduler, progress, rng"
    missing = [k for k in ("model", "optimizer", "scheduler", "progress", "rng") if k not in raw]
    if missing:
        return f"missing {', '.join(missing)}"
    model, optimizer = raw["model"], raw["optimizer"]
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in model.items()):
        return "model is not a state dict of named tensors"
    if (not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict)
            or not isinstance(optimizer.get("param_groups"), list)
            or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                       and all(type(i) is int for i in g["params"]) for g in optimizer["param_groups"])
            or not all(isinstance(v, dict) and all(isinstance(x, (torch.Tensor, int, float)) for x in v.values())
                       for v in optimizer["state"].values())
            or not _plain(optimizer["param_groups"])):
        return "optimizer state has the wrong structure or types"
    if not isinstance(raw["scheduler"], dict) or not _plain(raw["scheduler"]):
        return "scheduler state is not a dict of plain values"
    if not _is_byte_tensor(raw["rng"]):
        return "rng is not a byte tensor"
    cuda = raw.get("cuda_rng")
    if cuda is not None and not (isinstance(cuda, list) and all(_is_byte_tensor(t) for t in cuda)):
        return "cuda_rng is not a list of byte tensors"
    progress = raw["progress"]
    if not isinstance(progress, dict) or set(progress) - set(Progress.__dataclass_fields__):
        return "progress is not what bnexp records"
    counters = {k: progress.get(k, 0) for k in ("epoch", "step", "best_epoch")}
    for key, value in counters.items():
        if type(value) is not int or not 0 <= value <= MAX_COUNTER:
            return f"progress.{key} is {value!r}, expected an integer in [0, {MAX_COUNTER:,}]"
    if counters["epoch"] > counters["step"] or counters["best_epoch"] > counters["epoch"]:
        return f"progress counters disagree (epoch {counters['epoch']}, step {counters['step']})"
    if type(progress.get("best_val_acc", 0.0)) not in (int, float) or not isinstance(progress.get("metrics", {}), dict):
        return "progress.best_val_acc or progress.metrics has the wrong type"
    if not isinstance(progress.get("partial", {}), dict) or not _plain(progress.get("partial", {})):
        return "progress.partial has the wrong type"
    return None


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
