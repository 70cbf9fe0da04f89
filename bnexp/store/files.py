"""Files of the run store: their names, and readers of what a run holds. The careful opening itself
(no write through a planted link, bounded reads) lives in :mod:`bnexp.store.safeio`."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from bnexp.store.safeio import (  # noqa: F401  (the store's readers and writers, re-exported)
    MAX_RECORD_BYTES,
    UnreadableFile,
    UnsafeFile,
    iter_lines,
    load_yaml,
    loads,
    read_json_object,
    read_text,
    write_atomic,
    write_json,
)

RUN_FILE = "run.json"


SWEEP_FILE = "sweep.json"


CONFIG_FILE = "config.yaml"


OVERRIDES_FILE = "overrides.yaml"


METRICS_FILE = "metrics.jsonl"


CHECKPOINT_FILE = "checkpoint.pt"


NORM_PARAMS_FILE = "norm_params.json"






def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def parse_time(text: Any) -> Optional[datetime]:
    try:
        return datetime.fromisoformat(text).astimezone()
    except (TypeError, ValueError):
        return None


def read_metrics(run_dir: Path | str) -> list[tuple[str, dict]]:
    """``(line, record)`` for each record of a run's ``metrics.jsonl`` (none when there is no file
    yet), streamed line by line (a huge or sparse file costs no memory). A torn last line (the run
    is being written, or was killed mid-line) is left out; a damaged line before it (not a JSON
    object with a string ``kind``, nested too deep, too long) is an :class:`UnreadableFile` naming
    the file and line."""
    path = Path(run_dir) / METRICS_FILE
    if not os.path.lexists(path):
        return []
    records, bad = [], None
    for number, line in iter_lines(path):
        if bad is not None:  # a damaged line followed by more: not a torn last line
            raise UnreadableFile(f"{path}: line {bad} is not a metrics record")
        try:
            entry = loads(line, path)
        except UnreadableFile:
            entry = None
        if not is_metrics_record(entry):
            bad = number
            continue
        records.append((line, entry))
    return records


_COUNTERS = ("step", "epoch", "best_epoch")
_LABELS = ("kind", "site")


def is_metrics_record(entry: Any) -> bool:
    """What the trainer writes: a string ``kind`` (and ``site``), integer counters, and numbers (or
    null), flat or in one level of objects (activation percentiles). Anything else, a string where a
    number goes included, is not a record: the views compare and plot these values."""
    if type(entry) is not dict or type(entry.get("kind")) is not str:
        return False
    for key, value in entry.items():
        kind = type(value)
        if key in _LABELS:
            if kind is not str:
                return False
        elif key in _COUNTERS:
            if kind is not int:
                return False
        elif kind is dict:
            if not all(type(v) in _SCALARS for v in value.values()):
                return False
        elif kind not in _SCALARS:
            return False
    return True


_SCALARS = (int, float, type(None))


def read_yaml_mapping(path: Path) -> dict:
    """A YAML mapping (``config.yaml``) parsed as plain data, never as objects, aliases bounded."""
    data = load_yaml(read_text(path), path)
    if not isinstance(data, dict):
        raise UnreadableFile(f"{path}: expected a mapping of config keys")
    return data


def is_inside(path: Path, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


def remove_dir(path: Path) -> None:
    """Delete a run or sweep directory without following symlinks: a link is removed itself (its
    target stays), and links inside are unlinked, never descended into."""
    path = Path(path)
    if path.is_symlink():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
