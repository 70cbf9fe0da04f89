"""The registry's index of one output directory, ``<root>/.index.sqlite``: what the last command
learned about every directory and run, so the next one reads only what changed.

It keeps, per directory, its listing (file names, sub-directories in walk order) with the
directory's mtime, and, per run, its ``run.json`` record (checked when it was read), its labels,
the values runs are sorted by and the run's ``--json`` text, with the stamps (inode, size, mtime)
of the files they came from. A command then stats each directory and record instead of listing
every directory and reading, parsing and checking every record:

* a directory whose mtime is unchanged has the same entries (creating, removing or renaming a
  file changes it; bnexp writes every record and label by renaming a new file in);
* a record or labels file whose stamp is unchanged has the same content (an edit in place
  changes its mtime or size, a replacement its inode).

Nothing is cached while it may still change within the clock's resolution (mtime within
:data:`SETTLE_NS` of now), running records are always shown with their live status, and records
that cannot be read are never cached (read again each time, listed as ``unreadable``).

The index is only a cache. Every row carries a digest of its content: a row that fails it is
read again from the run. A file that SQLite cannot read (garbage, a truncated or damaged
database, another program's file, a wrong schema) is replaced by a fresh index; anything at that
name that is not a regular file (a link, a FIFO) is left alone and the index kept in memory for
this command only. A read-only output directory, or another command holding the index, costs
only the cache.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import pathlib
import sqlite3
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

INDEX_FILE = ".index.sqlite"
SCHEMA_VERSION = 2
SETTLE_NS = 2_000_000_000  # files and directories changed this recently are not cached yet
BUSY_TIMEOUT_S = 2.0
# The rollback journal stays (emptied) between commands: creating and deleting it would change the
# output directory's mtime on every save, and so make the next command list it again.
JOURNAL_MODE = "PERSIST"

# Typed columns (CHECK): whatever writes the file, a value read back has the type sorting expects.
SCHEMA = """CREATE TABLE dirs (path TEXT PRIMARY KEY, mtime INTEGER NOT NULL CHECK (typeof(mtime) = 'integer'),
    files TEXT NOT NULL CHECK (typeof(files) = 'text'), subdirs TEXT NOT NULL CHECK (typeof(subdirs) = 'text'),
    digest TEXT NOT NULL);
CREATE TABLE runs (path TEXT PRIMARY KEY, stamp TEXT NOT NULL CHECK (typeof(stamp) = 'text'),
    labels_stamp TEXT NOT NULL CHECK (typeof(labels_stamp) = 'text'), id TEXT NOT NULL CHECK (typeof(id) = 'text'),
    status TEXT NOT NULL CHECK (typeof(status) = 'text'), started TEXT CHECK (typeof(started) IN ('text', 'null')),
    duration REAL CHECK (typeof(duration) IN ('real', 'null')), model TEXT CHECK (typeof(model) IN ('text', 'null')),
    norm TEXT CHECK (typeof(norm) IN ('text', 'null')), metrics TEXT NOT NULL CHECK (typeof(metrics) = 'text'),
    record TEXT NOT NULL, labels TEXT NOT NULL, rendered TEXT NOT NULL, digest TEXT NOT NULL);
CREATE TABLE configs (path TEXT PRIMARY KEY, stamp TEXT NOT NULL, flat TEXT NOT NULL, digest TEXT NOT NULL);"""
TABLES = {statement.strip() for statement in SCHEMA.split(";") if statement.strip()}
HEAD_COLUMNS = ("path", "stamp", "labels_stamp", "id", "status", "started", "duration", "model", "norm", "metrics")
BODY_COLUMNS = ("record", "labels", "rendered")
RUN_COLUMNS = HEAD_COLUMNS + BODY_COLUMNS
MAX_STALE_CONFIGS = 1000
SEP = "/"  # joins names in a listing: the one character no file name can hold (with NUL)


def stamp_of(info: os.stat_result) -> str:
    return f"{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def dir_digest(path: str, mtime: int, files: str, subdirs: str) -> str:
    return digest(f"{path}\0{mtime}\0{files}\0{subdirs}")


@contextmanager
def no_gc() -> Iterator[None]:
    """Cyclic garbage collection paused: a walk allocates tens of thousands of small objects and
    no cycles, and the collector's passes over them cost up to a third of its time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclass
class RunRow:
    """What the index holds for one run (see the module docstring). The body (``record``,
    ``labels``, ``rendered``) is read from the file only for the runs a command shows."""

    path: str
    stamp: str
    labels_stamp: str
    id: str
    status: str
    started: Optional[str]
    duration: Optional[float]
    model: Optional[str]
    norm: Optional[str]
    metrics: str  # JSON object
    record: Optional[str] = None  # the record's JSON, as stored in run.json (checked when it was read)
    labels: Optional[str] = None  # JSON {"tags": [...], "note": ...}
    rendered: Optional[str] = None  # the run's --json text up to its dir and sweep (bnexp.store.listing)

    def content_digest(self) -> str:
        return digest("\0".join("" if v is None else str(v) for v in (getattr(self, c) for c in RUN_COLUMNS)))


class Index:
    """The index of ``root`` (see the module docstring). Use it for one command: :meth:`save` at
    the end writes what changed (best effort), :meth:`close` releases it. ``writable=False``
    (resolving references: ``show``, ``rm``, a dry run) only reads an index that is there, and
    never creates, repairs or updates one."""

    def __init__(self, root: str | os.PathLike, writable: bool = True):
        self.root, self.writable = os.fspath(root), writable
        self.now_ns = time.time_ns()
        self.db = self._connect()
        self.dirs: dict[str, tuple[int, str, str]] = {}
        self.rows: dict[str, RunRow] = {}
        self.seen_dirs: set[str] = set()
        self.seen_runs: set[str] = set()
        self.new_dirs: dict[str, tuple[int, str, str]] = {}
        self.new_rows: dict[str, RunRow] = {}
        self.new_configs: dict[str, tuple[str, str]] = {}
        try:
            with no_gc():
                for path, mtime, files, subdirs, check in self.db.execute("SELECT path, mtime, files, subdirs, digest "
                                                                           "FROM dirs"):
                    if check == dir_digest(path, mtime, files, subdirs):
                        self.dirs[path] = (mtime, files, subdirs)
                for values in self.db.execute(f"SELECT {', '.join(HEAD_COLUMNS)} FROM runs"):
                    self.rows[values[0]] = RunRow(*values)
        except sqlite3.Error:
            self.dirs, self.rows = {}, {}
            self.db = self._fresh(self._path()) if writable else self._memory()

    def _path(self) -> str:
        return os.path.join(self.root, INDEX_FILE)

    def _connect(self) -> sqlite3.Connection:
        path = self._path()
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            info = None
        except OSError:
            return self._memory()
        if info is not None and not stat.S_ISREG(info.st_mode):
            return self._memory()  # a link or FIFO planted there: neither followed nor removed
        if not os.path.isdir(self.root) or (info is None and not self.writable):
            return self._memory()
        try:
            if self.writable:
                db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
                db.execute(f"PRAGMA journal_mode = {JOURNAL_MODE}")
            else:
                db = sqlite3.connect(f"{pathlib.Path(os.path.abspath(path)).as_uri()}?mode=ro", uri=True,
                                     timeout=BUSY_TIMEOUT_S, isolation_level=None)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {sql for (sql,) in db.execute("SELECT sql FROM sqlite_master WHERE type = 'table'")}
            if version == SCHEMA_VERSION and tables == TABLES:
                return db
            db.close()
        except (sqlite3.Error, TypeError):
            pass
        return self._fresh(path) if self.writable else self._memory()

    def _fresh(self, path: str) -> sqlite3.Connection:
        """A new, empty index at ``path`` in place of whatever was there (or in memory)."""
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                os.unlink(path)
        except OSError:
            pass
        try:
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            db.execute(f"PRAGMA journal_mode = {JOURNAL_MODE}")
            db.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            return db
        except sqlite3.Error:
            return self._memory()

    @staticmethod
    def _memory() -> sqlite3.Connection:
        db = sqlite3.connect(":memory:", isolation_level=None)
        db.executescript(f"{SCHEMA} PRAGMA user_version = {SCHEMA_VERSION};")
        return db

    # --- directory listings -----------------------------------------------------------------

    def listing(self, path: str, mtime: int) -> Optional[tuple[frozenset, list[str]]]:
        """``(file names, sub-directory names in walk order)`` of ``path`` if its mtime is the one
        cached, else None."""
        self.seen_dirs.add(path)
        cached = self.dirs.get(path)
        if cached is None or cached[0] != mtime:
            return None
        files, subdirs = cached[1], cached[2]
        return frozenset(files.split(SEP)) if files else frozenset(), subdirs.split(SEP) if subdirs else []

    def put_listing(self, path: str, mtime: int, files: frozenset, subdirs: list[str]) -> None:
        if mtime >= self.now_ns - SETTLE_NS:
            return  # may change again within the clock's resolution
        entry = (mtime, SEP.join(sorted(files)), SEP.join(subdirs))
        self.dirs[path] = self.new_dirs[path] = entry

    # --- runs ---------------------------------------------------------------------------------

    def row(self, path: str, stamp: str, labels_stamp: str) -> Optional[RunRow]:
        """The cached row of the run at ``path`` if its record and labels are unchanged."""
        self.seen_runs.add(path)
        row = self.rows.get(path)
        if row is None or row.stamp != stamp or row.labels_stamp != labels_stamp:
            return None
        return row

    def put_row(self, row: RunRow, mtimes: tuple[int, ...]) -> None:
        if max(mtimes) >= self.now_ns - SETTLE_NS:
            self.rows.pop(row.path, None)
            return
        self.rows[row.path] = self.new_rows[row.path] = row

    def bodies(self, rows: list[RunRow]) -> None:
        """Fill in the bodies of ``rows`` from the file; a row whose digest fails (a damaged or
        tampered index) gets ``record = None``: the caller reads that run again."""
        wanted = {row.path: row for row in rows if row.record is None}
        paths = list(wanted)
        try:
            for start in range(0, len(paths), 500):
                chunk = paths[start:start + 500]
                query = (f"SELECT path, {', '.join(BODY_COLUMNS)}, digest FROM runs "
                         f"WHERE path IN ({', '.join('?' * len(chunk))})")
                for path, record, labels, rendered, check in self.db.execute(query, chunk):
                    row = wanted.get(path)
                    if row is None:
                        continue
                    row.record, row.labels, row.rendered = record, labels, rendered
                    if check != row.content_digest():
                        row.record = row.labels = row.rendered = None
        except sqlite3.Error:
            for row in wanted.values():
                row.record = row.labels = row.rendered = None

    # --- saved configs (config.yaml, flattened) ---------------------------------------------

    def configs(self, stamps: dict[str, str]) -> dict[str, str]:
        """The cached flattened configs (JSON) of the runs in ``stamps`` (path -> config.yaml's
        stamp) whose file is unchanged."""
        found, paths = {}, list(stamps)
        try:
            for start in range(0, len(paths), 500):
                chunk = paths[start:start + 500]
                query = f"SELECT path, stamp, flat, digest FROM configs WHERE path IN ({', '.join('?' * len(chunk))})"
                for path, stamp, flat, check in self.db.execute(query, chunk):
                    if stamp == stamps.get(path) and check == digest(f"{path}\0{stamp}\0{flat}"):
                        found[path] = flat
        except sqlite3.Error:
            return {}
        return found

    def put_config(self, path: str, stamp: str, flat: str, mtime: int) -> None:
        if mtime < self.now_ns - SETTLE_NS:
            self.new_configs[path] = (stamp, flat)

    def save(self) -> None:
        """Write what changed and forget what is gone (only after a walk of the whole root)."""
        if not self.writable:
            return
        gone_dirs = [p for p in self.dirs if p not in self.seen_dirs] if self.seen_dirs else []
        gone_runs = [p for p in self.rows if p not in self.seen_runs] if self.seen_runs else []
        if not (self.new_dirs or self.new_rows or self.new_configs or gone_dirs or gone_runs):
            return
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany("DELETE FROM dirs WHERE path = ?", [(p,) for p in gone_dirs])
                self.db.executemany("DELETE FROM runs WHERE path = ?", [(p,) for p in gone_runs])
                self.db.executemany("INSERT OR REPLACE INTO dirs VALUES (?, ?, ?, ?, ?)",
                                    [(p, *e, dir_digest(p, *e)) for p, e in self.new_dirs.items()])
                self.db.executemany(f"INSERT OR REPLACE INTO runs VALUES ({', '.join('?' * (len(RUN_COLUMNS) + 1))})",
                                    [(*(getattr(r, c) for c in RUN_COLUMNS), r.content_digest())
                                     for r in self.new_rows.values()])
                self.db.executemany("INSERT OR REPLACE INTO configs VALUES (?, ?, ?, ?)",
                                    [(p, stamp, flat, digest(f"{p}\0{stamp}\0{flat}"))
                                     for p, (stamp, flat) in self.new_configs.items()])
                if self.new_configs:  # configs of runs long gone: start over past twice the runs known
                    (count,) = self.db.execute("SELECT count(*) FROM configs").fetchone()
                    if count > 2 * max(len(self.dirs), len(self.rows)) + MAX_STALE_CONFIGS:
                        self.db.execute("DELETE FROM configs")
        except sqlite3.Error:
            pass  # read-only, busy or damaged: this command simply leaves the index as it was

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, kind, *_) -> None:
        """Saves what was learned unless the walk failed part-way (its picture is incomplete)."""
        try:
            if kind is None:
                self.save()
        finally:
            self.close()


def json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=True)
