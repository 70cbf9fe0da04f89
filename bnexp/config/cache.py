"""bnexp's own cache directory (``$BNEXP_CACHE_DIR``, default ``~/.cache/bnexp``): small JSON entries
that only save time, such as one Hydra composition per override set.

The directory lies outside ``outputs/`` and anyone with the user's rights may write into it, so an
entry is untrusted input: it is read without following links, only from a regular file of this
user of bounded size, parsed as JSON (never executed), and used only when its envelope names the
key asked for (by its SHA-256) and its digest matches its content. Anything else, and any error at all, reads as a
miss. Entries are written to a private temporary file and renamed over the old one, so concurrent
writers never leave half an entry; a cache that cannot be written is simply not kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Optional

FORMAT = 1  # bump when the envelope changes: older entries then read as misses
MAX_ENTRY_BYTES = 1 << 20
MAX_ENTRIES = 1000  # per section; past this many the section starts over (entries are ~2 kB)
ENTRY_NAME = re.compile(r"[0-9a-f]{32}\.json")


def cache_root() -> Path:
    """``$BNEXP_CACHE_DIR``, else ``$XDG_CACHE_HOME/bnexp``, else ``~/.cache/bnexp``."""
    explicit = os.environ.get("BNEXP_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bnexp"


def entry_path(section: str, key: str) -> Path:
    """Where the entry for ``key`` (any string) lives in ``section``."""
    return cache_root() / section / f"{_digest(key)[:32]}.json"


def read(section: str, key: str) -> Optional[Any]:
    """The value stored for ``key``, or None when there is none usable (see the module docstring)."""
    try:
        fd = os.open(entry_path(section, key), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_size > MAX_ENTRY_BYTES:
            return None
        raw = os.read(fd, MAX_ENTRY_BYTES + 1)
        envelope = json.loads(raw)
        if (not isinstance(envelope, dict) or envelope.get("format") != FORMAT or envelope.get("key") != _digest(key)
                or envelope.get("digest") != _digest(_canonical(envelope.get("value")))):
            return None
        return envelope["value"]
    except Exception:  # noqa: BLE001 - any damage at all (bad JSON, deep nesting, I/O) is a miss
        return None
    finally:
        os.close(fd)


def write(section: str, key: str, value: Any) -> None:
    """Store ``value`` (JSON-serializable) for ``key``: atomically; silently not at all on failure."""
    path = entry_path(section, key)
    envelope = {"format": FORMAT, "key": _digest(key), "digest": _digest(_canonical(value)), "value": value}
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _prune(path.parent)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(envelope))
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except (OSError, TypeError, ValueError):
        pass


def _prune(directory: Path) -> None:
    """Remove this section's entries (only files named like one) once there are MAX_ENTRIES."""
    names = [e.name for e in os.scandir(directory) if ENTRY_NAME.fullmatch(e.name)]
    if len(names) < MAX_ENTRIES:
        return
    for name in names:
        try:
            os.unlink(directory / name)
        except OSError:
            pass


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
