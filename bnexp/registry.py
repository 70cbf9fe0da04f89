"""The run registry: find, filter and sort runs and sweeps from their small JSON summaries.

Only ``run.json`` / ``sweep.json`` are read (never TensorBoard events) and nothing here imports
torch or Hydra, so ``bnexp runs`` stays fast with hundreds of runs. A sweep is a directory holding
``sweep.json`` whose job sub-directories are ordinary run directories.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from bnexp.errors import BnexpError
from bnexp.runs import RUN_FILE, find_marked_dirs, iter_run_dirs, read_json

SWEEP_FILE = "sweep.json"
# Overrides that say where or how fast a run ran, not what it is; hidden from "key overrides".
PLUMBING_KEYS = ("output_dir", "threads", "resume", "checkpoint", "log_every_steps", "hist_every_steps",
                 "log_channels")
# Group choices already shown in their own columns of `bnexp runs`.
SHOWN_GROUPS = ("model", "norm", "dataset")
METRIC_KEYS = ("best_val_acc", "val_acc", "val_loss", "train_acc", "train_loss")
STATUS_STYLE = {"completed": "green", "diverged": "yellow", "running": "cyan", "interrupted": "magenta"}  # else red
AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def default_root() -> Path:
    """Where runs live when no --output-dir is given: the config's default output_dir
    (``${oc.env:BNEXP_OUTPUT_DIR,outputs}``), read without composing the config."""
    return Path(os.environ.get("BNEXP_OUTPUT_DIR") or "outputs")


def override_key(override: str) -> str:
    """``+optimizer.lr=0.1`` -> ``optimizer.lr``."""
    return override.split("=", 1)[0].lstrip("+~")


def key_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides worth showing next to a run: no plumbing, no choices shown in other columns."""
    return [o for o in overrides if override_key(o) not in PLUMBING_KEYS + SHOWN_GROUPS]


def load_runs(root: Path) -> list[dict[str, Any]]:
    """Every run's ``run.json`` under ``root`` plus ``dir`` and ``sweep`` (the id of the sweep it
    belongs to, or None). An unreadable summary is listed with status ``unreadable``."""
    records = []
    sweep_of: dict[Path, Optional[str]] = {}
    for path in iter_run_dirs(root):
        try:
            summary = read_json(path / RUN_FILE)
        except (OSError, ValueError):
            summary = {"id": path.name, "status": "unreadable", "metrics": {}}
        parent = path.parent
        if parent not in sweep_of:
            sweep_of[parent] = parent.name if (parent / SWEEP_FILE).is_file() else None
        records.append({**summary, "dir": str(path), "sweep": sweep_of[parent]})
    return records


def metric(record: dict, key: str) -> Optional[float]:
    value = (record.get("metrics") or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def fmt_number(value: Any, digits: int = 4) -> str:
    """Metrics and config values for tables: ``0.9531``, ``3``, ``2.387e+12``, ``-`` for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if value != 0 and not 1e-3 <= abs(value) < 1e4 else f"{value:.{digits}f}"


def parse_since(text: str, now: Optional[datetime] = None) -> datetime:
    """``2026-11-20``, ``2026-11-20T14:00`` (local time unless an offset is given) or an age such as
    ``30m``, ``12h``, ``3d``, ``2w``."""
    now = now or datetime.now().astimezone()
    age = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if age:
        return now - timedelta(**{AGE_UNITS[age.group(2)]: float(age.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BnexpError(f"--since {text!r}: use a date (2026-11-20), a date and time (2026-11-20T14:00) "
                         "or an age (30m, 12h, 3d, 2w)") from None
    return moment.astimezone()  # naive means local time


def started_at(record: dict) -> Optional[datetime]:
    try:
        return datetime.fromisoformat(record["started"]).astimezone()
    except (KeyError, TypeError, ValueError):
        return None


def filter_runs(records: list[dict], *, status: Iterable[str] = (), model: Iterable[str] = (),
                norm: Iterable[str] = (), sweep: Optional[str] = None, since: Optional[datetime] = None) -> list[dict]:
    """Keep records matching every given filter; several values of one filter mean "any of"."""
    status, model, norm = set(status), set(model), set(norm)

    def keep(r: dict) -> bool:
        if status and r.get("status") not in status:
            return False
        if model and r.get("model") not in model:
            return False
        if norm and r.get("norm") not in norm:
            return False
        if sweep is not None and not (r.get("sweep") or "").startswith(sweep):
            return False
        if since is not None:
            started = started_at(r)
            if started is None or started < since:
                return False
        return True

    return [r for r in records if keep(r)]


# sort key -> (value of a record, natural order is descending). Runs without the value go last.
SORTS: dict[str, tuple[Callable[[dict], Any], bool]] = {
    "started": (lambda r: r.get("started"), True),
    "duration": (lambda r: r.get("duration_s"), True),
    "id": (lambda r: r.get("id"), False),
    "model": (lambda r: r.get("model"), False),
    "norm": (lambda r: r.get("norm"), False),
    "status": (lambda r: r.get("status"), False),
    **{key: ((lambda r, k=key: metric(r, k)), "acc" in key) for key in METRIC_KEYS},
}


def sort_runs(records: list[dict], by: str = "started", reverse: bool = False) -> list[dict]:
    """Sort by ``by`` in its natural order (newest, most accurate, longest, lowest loss, A-Z first);
    ``reverse`` flips it. Records lacking the value always come last."""
    if by not in SORTS:
        raise BnexpError(f"--sort {by}: valid keys are {', '.join(SORTS)}")
    value, descending = SORTS[by]
    present = [r for r in records if value(r) is not None]
    missing = [r for r in records if value(r) is None]
    return sorted(present, key=value, reverse=descending != reverse) + missing


def iter_sweep_dirs(root: Path) -> Iterator[Path]:
    """Every sweep directory (one holding ``sweep.json``) under ``root``."""
    return find_marked_dirs(root, SWEEP_FILE)


def resolve(ref: str, root: Path) -> tuple[str, Path]:
    """``("sweep", dir)`` or ``("run", dir)`` for a directory or a unique id prefix. A sweep id wins
    over the ids of its own jobs (which start with it); anything else ambiguous lists the candidates."""
    path = Path(ref).expanduser()
    if (path / SWEEP_FILE).is_file():
        return "sweep", path
    if (path / RUN_FILE).is_file():
        return "run", path
    if path.is_dir():
        raise BnexpError(f"{ref} is a directory but neither a run (no {RUN_FILE}) nor a sweep (no {SWEEP_FILE})")
    sweeps = [p for p in iter_sweep_dirs(root) if p.name.startswith(ref)]
    exact = [p for p in sweeps if p.name == ref]
    if exact:
        return "sweep", exact[0]
    runs = [p for p in iter_run_dirs(root) if p.name.startswith(ref) and p.parent not in sweeps]
    candidates = [("sweep", p) for p in sweeps] + [("run", p) for p in runs]
    if not candidates:
        raise BnexpError(f"no run or sweep matches '{ref}' (not a directory, and no id under {root} starts with it)")
    if len(candidates) > 1:
        shown = ", ".join(f"{p.name} ({kind})" for kind, p in candidates[:8])
        more = f", ... ({len(candidates)} in all)" if len(candidates) > 8 else ""
        raise BnexpError(f"'{ref}' is ambiguous: it matches {shown}{more}")
    return candidates[0]


def expand(refs: Iterable[str], root: Path) -> list[Path]:
    """Run directories named by ``refs``; a sweep stands for all of its jobs. Order kept, no repeats."""
    found: dict[Path, None] = {}
    for ref in refs:
        kind, path = resolve(ref, root)
        for run_dir in (iter_run_dirs(path) if kind == "sweep" else [path]):
            found[run_dir.resolve()] = None
    return list(found)


def run_config(run_dir: Path) -> dict[str, Any]:
    """A run's saved config (``config.yaml``) flattened to ``{'optimizer.lr': 0.1, ...}``."""
    from omegaconf import OmegaConf

    from bnexp.config import flatten

    try:
        return flatten(OmegaConf.load(Path(run_dir) / "config.yaml"))
    except (OSError, ValueError) as exc:
        raise BnexpError(f"cannot read the config of {run_dir}: {' '.join(str(exc).split())}") from None


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Flattened config keys whose value is not the same in every config (plumbing keys aside)."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if k.split(".")[0] not in PLUMBING_KEYS
            and len({repr(c.get(k)) for c in configs}) > 1]


def read_sweep(sweep_dir: Path) -> dict:
    try:
        return read_json(sweep_dir / SWEEP_FILE)
    except (OSError, ValueError) as exc:
        raise BnexpError(f"cannot read {sweep_dir / SWEEP_FILE}: {exc}") from None
