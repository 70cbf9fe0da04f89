"""Files of the run store: their names, atomic writes, careful reads (never blocking on a FIFO,
never trusting a size or an encoding)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from bnexp.core.errors import BnexpError

RUN_FILE = "run.json"


SWEEP_FILE = "sweep.json"


CONFIG_FILE = "config.yaml"


OVERRIDES_FILE = "overrides.yaml"


METRICS_FILE = "metrics.jsonl"


CHECKPOINT_FILE = "checkpoint.pt"


NORM_PARAMS_FILE = "norm_params.json"


MAX_RECORD_BYTES = 4 << 20  # a run.json or config.yaml larger than this is not ours


MAX_METRICS_BYTES = 1 << 34  # a metrics log this large is not a run's


class UnreadableFile(BnexpError):
    """A run's file exists but is not what bnexp wrote; the message names the file and why."""


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def parse_time(text: Any) -> Optional[datetime]:
    try:
        return datetime.fromisoformat(text).astimezone()
    except (TypeError, ValueError):
        return None


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write via a temporary file and rename, so readers never see half a file; a failure (a full
    disk) removes the temporary file and leaves the old file as it was. Renaming over a symlink
    replaces the link, never what it points to."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb" if isinstance(content, bytes) else "w") as handle:
            handle.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_text(path: Path, limit: int = MAX_RECORD_BYTES) -> str:
    """A small UTF-8 text file; anything else (missing, a FIFO or device, too large, not UTF-8) is
    an :class:`UnreadableFile` naming the file. Never blocks on a FIFO."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UnreadableFile(f"{path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(f"{path}: not a regular file")
        if info.st_size > limit:
            raise UnreadableFile(f"{path}: {info.st_size:,} bytes, larger than any file bnexp writes there")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read()
    except OSError as exc:
        raise UnreadableFile(f"{path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"{path}: not UTF-8 text (byte {exc.start})") from None


def read_metrics(run_dir: Path | str) -> list[tuple[str, dict]]:
    """``(line, record)`` for each record of a run's ``metrics.jsonl`` (none when there is no file
    yet). A torn last line (the run is being written, or was killed mid-line) is left out; a
    damaged line before it is an :class:`UnreadableFile` naming the file and line."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = read_text(path, limit=MAX_METRICS_BYTES).splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
            if number == len(lines):
                break
            raise UnreadableFile(f"{path}: line {number} is not a metrics record")
        records.append((line, entry))
    return records


def read_json_object(path: Path, limit: int = MAX_RECORD_BYTES) -> dict:
    """A JSON object from a small file; any other content is an :class:`UnreadableFile`."""
    text = read_text(path, limit)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UnreadableFile(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UnreadableFile(f"{path}: a JSON {type(data).__name__ if data is not None else 'null'}, "
                             "expected an object")
    return data


def read_yaml_mapping(path: Path) -> dict:
    """A YAML mapping (``config.yaml``) parsed as plain data, never as objects."""
    import yaml

    text = read_text(path)
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise UnreadableFile(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
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
