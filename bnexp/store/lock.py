"""Ownership: one writer per run (an ``flock`` on ``.lock``), and telling a live run from a dead one."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from bnexp.core.errors import BnexpError
from bnexp.store.files import RUN_FILE, SWEEP_FILE, UnreadableFile, now_iso, parse_time, read_json_object, read_text
from bnexp.store.safeio import open_lock

LOCK_FILE = ".lock"


HEARTBEAT_S = 30.0  # how often a writer refreshes run.json's heartbeat while training


STALE_AFTER_S = 600.0  # a run on another host with an older heartbeat is considered dead


LOCK_WAIT_S = 2.0  # a writer retries this long: a reader's liveness probe holds the lock for microseconds


class RunBusy(BnexpError):
    """Another live process is writing the run."""


def owner_info() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}


class DirLock:
    """An exclusive ``flock`` on ``<dir>/.lock``, held from :meth:`acquire` until :meth:`release`
    or the death of the process (the OS releases it: a kill -9 cannot leave a run locked)."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_FILE
        self.fd: Optional[int] = None

    def acquire(self, describe: Callable[[], str], wait_s: float = LOCK_WAIT_S) -> "DirLock":
        """Take the lock or raise :class:`RunBusy` with ``describe()`` (who holds it). The lock file
        is opened without following a planted link, and names its holder (``pid host``), so a
        refusal can name the owning process even before the record does."""
        self.fd = open_lock(self.path)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                try:
                    os.ftruncate(self.fd, 0)
                    os.pwrite(self.fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
                except OSError:  # a full disk: the lock itself still holds
                    pass
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    self.fd = None
                    raise RunBusy(describe()) from None
                time.sleep(0.05)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def is_locked(directory: Path) -> bool:
    """Whether some live process holds ``<dir>/.lock`` (probed with a non-blocking try, released at once)."""
    try:
        fd = os.open(Path(directory) / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process of this id exists on this machine (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def liveness(directory: Path, owner: Optional[dict], heartbeat: Optional[str]) -> tuple[bool, str]:
    """``(alive, why)`` for a directory whose record says ``running``. On this host the lock is the
    truth; a run owned by another host (shared filesystem) is alive while its heartbeat is fresh."""
    owner = owner or {}
    host = owner.get("host")
    if host in (None, socket.gethostname()):
        if is_locked(directory):
            return True, f"pid {owner.get('pid', '?')} is writing it"
        return False, f"its process (pid {owner.get('pid', '?')}) is gone"
    beat = parse_time(heartbeat)
    age = (datetime.now().astimezone() - beat).total_seconds() if beat else float("inf")
    if age <= STALE_AFTER_S:
        return True, f"pid {owner.get('pid', '?')} on {host}, heartbeat {age:.0f} s ago"
    return False, f"no heartbeat from {host} for {age / 60:.0f} min" if beat else f"no heartbeat from {host}"


def lock_holder(directory: Path) -> Optional[str]:
    """``pid N on HOST`` as written into ``<dir>/.lock`` by the process holding it, if readable."""
    try:
        fields = read_text(Path(directory) / LOCK_FILE, limit=4096).split()
    except UnreadableFile:
        return None
    if len(fields) >= 2 and fields[0].isdigit():
        return f"pid {fields[0]} on {fields[1]}"
    return None


def busy_message(directory: Path, what: str = "run") -> str:
    """Who holds a directory's lock, for the refusal message: the pid the lock file names (its
    holder wrote it there), else the owner of the record."""
    try:
        owner = read_json_object(Path(directory) / (SWEEP_FILE if what == "sweep" else RUN_FILE)).get("owner") or {}
    except UnreadableFile:
        owner = {}
    owner = owner if isinstance(owner, dict) else {}
    who = lock_holder(directory) or (f"pid {owner.get('pid')} on {owner.get('host')}" if owner.get("pid")
                                     else "another process")
    return (f"{what} {Path(directory).name} is being written by {who} (since {owner.get('since', '?')}); "
            f"wait for it to end or stop it first")
