"""Run directories: their layout, their small ``run.json`` summary, and finding them again.

A run directory holds::

    run.json           summary: id, status, times, key config values, final metrics (read by `bnexp runs`)
    config.yaml        the composed, resolved config
    overrides.yaml     the command-line overrides that produced it
    metrics.jsonl      one JSON record per line: kind = train | epoch | activation
    norm_params.json   final per-site gamma/beta/running stats
    checkpoint.pt      model, optimizer, scheduler and RNG state (written atomically every epoch)
    events.out.tfevents.*   TensorBoard events

Nothing here imports torch, so registry commands stay fast.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from bnexp.errors import BnexpError

RUN_FILE = "run.json"
STATUSES = ("running", "completed", "failed", "diverged", "interrupted")


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def new_run_id(model: str, norm: str, name: str | None = None) -> str:
    """``20261122-181503-lenet-custom-3fa2``: sortable by time, unique within a second."""
    parts = [time.strftime("%Y%m%d-%H%M%S"), model, norm] + ([name] if name else [])
    return "-".join(parts + [secrets.token_hex(2)])


def create_run_dir(parent: Path, run_id: str) -> Path:
    """Create a fresh directory; a name clash (same second, same random suffix) gets a new suffix."""
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = parent / run_id
        try:
            path.mkdir()
            return path
        except FileExistsError:
            run_id = f"{run_id.rsplit('-', 1)[0]}-{secrets.token_hex(2)}"
    raise BnexpError(f"could not create a unique run directory under {parent}")


def find_marked_dirs(root: Path, marker: str) -> Iterator[Path]:
    """Directories under ``root`` holding the file ``marker`` (``run.json``, ``sweep.json``), in
    sorted order; the walk never descends into a run directory (runs do not nest)."""
    root = Path(root)
    if not root.is_dir():
        return
    for current, dirs, files in os.walk(root):
        if marker in files:
            yield Path(current)
        if marker in files or RUN_FILE in files:
            dirs[:] = []
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))


def iter_run_dirs(root: Path) -> Iterator[Path]:
    """Every run directory (one holding ``run.json``) under ``root``, sweeps included."""
    return find_marked_dirs(root, RUN_FILE)


def resolve_run(ref: str, root: Path) -> Path:
    """A run directory from a path or a unique prefix of a run id; ambiguity lists the candidates."""
    as_path = Path(ref).expanduser()
    if (as_path / RUN_FILE).is_file():
        return as_path
    matches = [p for p in iter_run_dirs(root) if p.name.startswith(ref)]
    if not matches:
        raise BnexpError(f"no run matches '{ref}' (not a run directory, and no run id under {root} starts with it)")
    if len(matches) > 1:
        shown = ", ".join(p.name for p in matches[:8]) + (f", ... ({len(matches)} in all)" if len(matches) > 8 else "")
        raise BnexpError(f"'{ref}' is ambiguous: it matches {shown}")
    return matches[0]
