"""How far a live run got, read cheaply and often (``bnexp watch``): its last metrics records, and
whether its heartbeat is late.

Liveness itself is :func:`bnexp.store.lock.liveness` (the lock on this host, the heartbeat from
another): a run whose writer is gone is ``dead`` and never looks alive. A run that is alive but
whose heartbeat is late is ``stalled`` (aim's definition, aimhubio/aim#2094: no heartbeat for
longer than the interval it is expected at): a training process writes its heartbeat every
``HEARTBEAT_S`` while it steps, so a live process silent for ``STALL_AFTER_S`` is hung, swapping,
stopped (SIGSTOP), or in a validation far slower than its steps.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime
from pathlib import Path
from typing import Optional

from bnexp.store.files import METRICS_FILE, parse_time
from bnexp.store.lock import HEARTBEAT_S

STALL_AFTER_S = 3 * HEARTBEAT_S  # three missed heartbeats

TAIL_BYTES = 64 * 1024  # the end of metrics.jsonl read per refresh: the last few hundred records


def heartbeat_age(heartbeat: Optional[str], now: Optional[datetime] = None) -> Optional[float]:
    """Seconds since ``heartbeat`` (an ISO time), or None when there is none."""
    beat = parse_time(heartbeat)
    if beat is None:
        return None
    return max(0.0, ((now or datetime.now().astimezone()) - beat).total_seconds())


def live_status(status: str, heartbeat: Optional[str], stall_after: float = STALL_AFTER_S,
                now: Optional[datetime] = None) -> str:
    """``stalled`` for a run shown ``running`` (its liveness already checked) whose heartbeat is
    older than ``stall_after`` seconds; otherwise ``status`` unchanged (``dead`` stays dead)."""
    if status != "running":
        return status
    age = heartbeat_age(heartbeat, now)
    return "stalled" if age is None or age > stall_after else status


def last_records(run_dir: Path | str, kinds: tuple[str, ...] = ("train", "epoch"),
                 limit: int = TAIL_BYTES) -> dict[str, dict]:
    """The last record of each of ``kinds`` in the final ``limit`` bytes of the run's metrics.jsonl
    (``{}`` when there is none yet). Never blocks on a FIFO, never follows a planted link, skips a
    torn or damaged line instead of failing: a live view shows what it can."""
    path = Path(run_dir) / METRICS_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return {}
        start = max(0, info.st_size - limit)
        data = os.pread(fd, limit, start)
    except OSError:
        return {}
    finally:
        os.close(fd)
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # the first line is cut
    found: dict[str, dict] = {}
    for raw in reversed(lines):
        try:
            entry = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        kind = entry.get("kind") if isinstance(entry, dict) else None
        if kind in kinds and kind not in found:
            found[kind] = entry
            if len(found) == len(kinds):
                break
    return found
