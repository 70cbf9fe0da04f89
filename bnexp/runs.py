"""The run store: run directories, their ``run.json`` record, who may write them, and finding them.

A run directory is a small database and behaves like one:

* **one writer**: a process writing a run holds an exclusive ``flock`` on its ``.lock`` file for as
  long as it writes (the OS drops it when the process dies, even by SIGKILL); a second writer is
  refused with a message naming the owner;
* **no run looks alive when it is not**: ``running`` in ``run.json`` is believed only while that
  lock is held (same host) or the heartbeat is fresh (another host); otherwise the run is ``dead``;
* **atomic files**: ``run.json`` and the other small files are replaced by rename, never
  half-written; the checkpoint likewise (:mod:`bnexp.checkpoint`);
* **hostile files are data, not code or traps**: records are parsed as JSON and type-checked,
  non-regular files (a FIFO named ``run.json``) are refused without being opened for a blocking
  read, and nothing here follows a symlink out of the output directory when deleting.

Layout of a run directory::

    run.json           the record (RunRecord): id, status, owner, times, key config values, final metrics
    config.yaml        the composed, resolved config
    overrides.yaml     the command-line overrides that produced it
    metrics.jsonl      one JSON record per line: kind = train | epoch | activation | grad
    norm_params.json   final per-site gamma/beta/running stats
    checkpoint.pt      model, optimizer, scheduler and RNG state (plain tensors; see bnexp.checkpoint)
    .lock              held by the process writing the run
    events.out.tfevents.*   TensorBoard events

Nothing here imports torch, so registry commands stay fast.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import json
import os
import secrets
import shutil
import socket
import stat
import tempfile
import time
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from bnexp.errors import BnexpError

RUN_FILE = "run.json"
SWEEP_FILE = "sweep.json"
LOCK_FILE = ".lock"
CONFIG_FILE = "config.yaml"
OVERRIDES_FILE = "overrides.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
NORM_PARAMS_FILE = "norm_params.json"
MAX_RECORD_BYTES = 4 << 20  # a run.json or config.yaml larger than this is not ours
INDEX_FILE, INDEX_VERSION = ".index.json", 1  # the registry's cache of run.json records (RecordCache)
MAX_INDEX_BYTES = 1 << 30
MAX_METRICS_BYTES = 1 << 34  # a metrics log this large is not a run's
MAX_NAME = 64  # longest name= label: a run id must stay well inside a file name's 255 bytes
HEARTBEAT_S = 30.0  # how often a writer refreshes run.json's heartbeat while training
STALE_AFTER_S = 600.0  # a run on another host with an older heartbeat is considered dead
LOCK_WAIT_S = 2.0  # a writer retries this long: a reader's liveness probe holds the lock for microseconds


class UnreadableFile(BnexpError):
    """A run's file exists but is not what bnexp wrote; the message names the file and why."""


class RunBusy(BnexpError):
    """Another live process is writing the run."""


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def parse_time(text: Any) -> Optional[datetime]:
    try:
        return datetime.fromisoformat(text).astimezone()
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Files: atomic writes, careful reads


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


# ---------------------------------------------------------------------------------------------
# The record


@dataclass
class RunRecord:
    """What ``run.json`` holds: every command reads and writes runs through this one type.

    ``dir`` and ``sweep`` say where the run was found and are not stored; ``recorded_status`` is
    set by the registry when the status shown differs from the one stored (``running`` -> ``dead``).
    """

    id: str
    status: str = "running"
    started: Optional[str] = None
    ended: Optional[str] = None
    duration_s: float = 0.0
    heartbeat: Optional[str] = None
    owner: Optional[dict] = None  # {"pid", "host", "since"} while a process writes the run
    model: Optional[str] = None
    norm: Optional[str] = None
    dataset: Optional[str] = None
    dataset_path: Optional[str] = None
    experiment: Optional[str] = None
    name: Optional[str] = None
    optimizer: Optional[str] = None
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    epochs: Optional[int] = None
    max_steps: Optional[int] = None
    seed: Optional[int] = None
    nproc: int = 1
    device: Optional[str] = None
    overrides: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    message: Optional[str] = None
    compile_s: float = 0.0
    repro: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as they were
    dir: Optional[str] = field(default=None, metadata={"stored": False})
    sweep: Optional[str] = field(default=None, metadata={"stored": False})
    recorded_status: Optional[str] = field(default=None, metadata={"stored": False})

    @classmethod
    def from_json(cls, data: Any, source: str = RUN_FILE) -> "RunRecord":
        """Type-checked: a wrong type anywhere is an :class:`UnreadableFile` naming the field."""
        if not isinstance(data, dict):
            raise UnreadableFile(f"{source}: expected a JSON object")
        types = _field_types()
        known, extra = {}, {}
        for key, value in data.items():
            if key in types:
                if type(value) not in types[key][0]:  # exact types: a bool is no number here
                    raise UnreadableFile(f"{source}: field {key!r} is {_describe(value)}, expected {types[key][1]}")
                known[key] = value
            else:
                extra[key] = value
        if type(known.get("id")) is not str:
            raise UnreadableFile(f"{source}: no run id")
        for name, values, accepted in (("overrides", known.get("overrides") or (), {str}),
                                       ("metrics", (known.get("metrics") or {}).values(), NUMBERS | {type(None)})):
            for value in values:
                if type(value) not in accepted:
                    raise UnreadableFile(f"{source}: a value in {name!r} is {_describe(value)}, expected "
                                         f"{'a string' if name == 'overrides' else 'a number'}")
        return cls(**known, extra=extra)

    def to_json(self) -> dict:
        return {**self.extra, **{name: getattr(self, name) for name in _STORED}}

    def as_dict(self) -> dict:
        """The record with where it was found (for ``--json`` output)."""
        return {**self.to_json(), "dir": self.dir, "sweep": self.sweep,
                **({"recorded_status": self.recorded_status} if self.recorded_status else {})}

    def metric(self, key: str) -> Optional[float]:
        value = self.metrics.get(key)
        return float(value) if _is_number(value) else None


_NOT_STORED = {f.name for f in dataclasses.fields(RunRecord) if not f.metadata.get("stored", True)}
_STORED = [f.name for f in dataclasses.fields(RunRecord) if f.name not in _NOT_STORED and f.name != "extra"]


NUMBERS = {int, float}


@functools.lru_cache(maxsize=None)
def _field_types() -> dict[str, tuple[frozenset, str]]:
    """Per stored field: the JSON types its value may have, and what it expects in words. Built once
    from the dataclass's annotations (evaluating them per record costs milliseconds)."""
    accepted = {str: {str}, float: NUMBERS, int: {int}, list: {list}, dict: {dict}}
    fields = {}
    for name, hint in typing.get_type_hints(RunRecord).items():
        if name in _NOT_STORED or name == "extra":
            continue
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint)
        fields[name] = (frozenset(accepted[base] | ({type(None)} if type(None) in args else set())), _expected(hint))
    return fields


def _is_number(value: Any) -> bool:
    return type(value) in NUMBERS


def _expected(hint: Any) -> str:
    names = {str: "a string", float: "a number", int: "an integer", list: "a list of strings", dict: "an object"}
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return f"{names.get(args[0], 'a value')} or null" if args else names.get(hint, str(hint))


def _describe(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__} ({json.dumps(value, default=str)[:40]})"


def read_record(run_dir: Path | str, cache: Optional["RecordCache"] = None) -> RunRecord:
    """A run's record; with a ``cache``, a run.json unchanged since it was cached is not read again
    (and a cached record that fails its checks is read again from the file, never trusted)."""
    path = os.path.join(run_dir, RUN_FILE)
    if cache is not None:
        data, cached = cache.read(path)
        try:
            return RunRecord.from_json(data, path)
        except UnreadableFile:
            if not cached:
                raise
            cache.seen.pop(path)
            cache.changed = True
    return RunRecord.from_json(read_json_object(Path(path)), path)


class RecordCache:
    """The run.json records of one output directory, kept in ``<root>/.index.json`` (hidden from the
    walk) and keyed by each file's inode, size and modification time: a record is reread only after
    it changed (every write renames a new file in, so its inode changes). Thousands of small reads
    become one; what is cached is still type-checked when used, and a damaged or foreign index is
    simply rebuilt. Saving is best effort: a read-only output directory just goes uncached."""

    def __init__(self, root: Path | str):
        self.path = Path(root) / INDEX_FILE
        self.seen: dict[str, list] = {}
        try:
            index = read_json_object(self.path, limit=MAX_INDEX_BYTES)
            self.known = index.get("records") if index.get("version") == INDEX_VERSION else {}
        except UnreadableFile:
            self.known = {}
        self.known = self.known if isinstance(self.known, dict) else {}
        self.changed = False

    def read(self, path: str) -> tuple[dict, bool]:
        """``(data, whether it came from the index)``."""
        try:
            info = os.stat(path)
        except OSError:
            return read_json_object(Path(path)), False  # its own one-line error
        key = [info.st_ino, info.st_size, info.st_mtime_ns]
        cached = self.known.get(path)
        hit = isinstance(cached, list) and len(cached) == 2 and cached[0] == key and isinstance(cached[1], dict)
        if hit:
            data = cached[1]
        else:
            data = read_json_object(Path(path))  # raises for a FIFO, garbage, ...: never cached
            self.changed = True
        self.seen[path] = [key, data]
        return data, hit

    def save(self) -> None:
        if self.changed or len(self.seen) != len(self.known):
            try:
                write_atomic(self.path, json.dumps({"version": INDEX_VERSION, "records": self.seen},
                                                   separators=(",", ":")))
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# Ownership: one writer per run, and telling a live run from a dead one


def owner_info() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}


class DirLock:
    """An exclusive ``flock`` on ``<dir>/.lock``, held from :meth:`acquire` until :meth:`release`
    or the death of the process (the OS releases it: a kill -9 cannot leave a run locked)."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_FILE
        self.fd: Optional[int] = None

    def acquire(self, describe: Callable[[], str]) -> "DirLock":
        """Take the lock or raise :class:`RunBusy` with ``describe()`` (who holds it)."""
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
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

    @property
    def held(self) -> bool:
        return self.fd is not None


def is_locked(directory: Path) -> bool:
    """Whether some live process holds ``<dir>/.lock`` (probed with a non-blocking try, released at once)."""
    try:
        fd = os.open(Path(directory) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


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


def busy_message(directory: Path, what: str = "run") -> str:
    """Who holds a directory's lock, for the refusal message."""
    try:
        owner = read_json_object(Path(directory) / (SWEEP_FILE if what == "sweep" else RUN_FILE)).get("owner") or {}
    except UnreadableFile:
        owner = {}
    who = f"pid {owner.get('pid')} on {owner.get('host')}" if owner.get("pid") else "another process"
    return (f"{what} {Path(directory).name} is being written by {who} (since {owner.get('since', '?')}); "
            f"wait for it to end or stop it first")


# ---------------------------------------------------------------------------------------------
# Writing a run


class Run:
    """A run directory open for writing: holds its lock, its record, and appends its metrics.

    Use :meth:`create` for a new run and :meth:`open` to continue one; both take the lock first
    and give it back in :meth:`close` (or at process death).
    """

    def __init__(self, path: Path, record: RunRecord, lock: DirLock):
        self.path, self.record, self.lock = Path(path), record, lock
        self._saved_at = 0.0

    @classmethod
    def create(cls, run_dir: Path, record: RunRecord, files: dict[str, str], made_dir: bool) -> "Run":
        """Lock ``run_dir`` (already created) and write ``files`` and the record. If anything cannot be
        written (a full disk), a directory this call's caller created is removed again: no empty or
        half-made run is left behind."""
        lock = DirLock(run_dir)
        try:
            lock.acquire(lambda: busy_message(run_dir))
            for name, text in files.items():
                write_atomic(run_dir / name, text)
            run = cls(run_dir, record, lock)
            run.record.owner, run.record.heartbeat = owner_info(), now_iso()
            run.save()
            return run
        except BaseException as exc:
            lock.release()
            if made_dir:
                shutil.rmtree(run_dir, ignore_errors=True)
            if isinstance(exc, OSError):
                raise BnexpError(f"cannot write the run directory {run_dir}: {exc.strerror or exc}") from exc
            raise

    @classmethod
    def open(cls, run_dir: Path) -> "Run":
        """Lock an existing run to continue it; its record is read but not changed until :meth:`begin`."""
        lock = DirLock(run_dir).acquire(lambda: busy_message(run_dir))
        try:
            return cls(run_dir, read_record(run_dir), lock)
        except BaseException:
            lock.release()
            raise

    def begin(self) -> None:
        """Mark the run as running, owned by this process."""
        self.record.status, self.record.ended, self.record.message = "running", None, None
        self.record.owner, self.record.heartbeat = owner_info(), now_iso()
        self.save()

    def save(self) -> None:
        """Replace run.json atomically; on a full disk, overwrite it in place instead (its old blocks
        are reused, so that works when no new block can be had): a torn record is still better than
        a final status lost."""
        text = json.dumps(self.record.to_json(), indent=2, default=str) + "\n"
        try:
            write_atomic(self.path / RUN_FILE, text)
        except OSError as exc:
            if exc.errno != errno.ENOSPC or not (self.path / RUN_FILE).is_file():
                raise
            try:
                with open(self.path / RUN_FILE, "r+") as handle:
                    handle.write(text)
                    handle.truncate()
            except OSError:
                raise exc from None
        self._saved_at = time.monotonic()

    def heartbeat(self) -> None:
        """Refresh the heartbeat in run.json, at most every HEARTBEAT_S seconds."""
        if time.monotonic() - self._saved_at >= HEARTBEAT_S:
            self.record.heartbeat = now_iso()
            self.save()

    def log(self, entry: dict) -> None:
        with open(self.path / METRICS_FILE, "a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def truncate_metrics(self, last_step: int) -> None:
        """Drop records written after the checkpoint a continued run restarts from (and a torn last
        line: see :func:`read_metrics`)."""
        if (self.path / METRICS_FILE).exists():
            kept = [line for line, entry in read_metrics(self.path)
                    if isinstance(entry.get("step"), int) and entry["step"] <= last_step]
            write_atomic(self.path / METRICS_FILE, "".join(line + "\n" for line in kept))

    def finish(self, status: str, message: Optional[str]) -> Optional[str]:
        """Record how the run ended. Returns None, or why the status could not be written (a full
        disk): the caller reports that beside the original error instead of hiding it."""
        self.record.status, self.record.message, self.record.ended = status, message, now_iso()
        self.record.owner = None
        try:
            self.save()
        except OSError as exc:
            return f"its status ({status}) could not be written to {self.path / RUN_FILE}: {exc.strerror or exc}"
        return None

    def close(self) -> None:
        self.lock.release()


# ---------------------------------------------------------------------------------------------
# Naming and finding runs


def unique_dir(parent: Path, stem: str) -> Path:
    """Create ``<parent>/<stem>-<4 hex>``, retrying on the rare clash (two runs in the same second
    with the same random suffix): the one helper behind run and sweep directories."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BnexpError(f"cannot create {parent}: {exc.strerror or exc}") from None
    for _ in range(100):
        path = parent / f"{stem}-{secrets.token_hex(2)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise BnexpError(f"the run name is too long for a directory name: {path.name}") from None
            raise BnexpError(f"cannot create {path}: {exc.strerror or exc}") from None
    raise BnexpError(f"could not create a unique directory under {parent}")


def run_stem(model: str, norm: str, name: Optional[str] = None) -> str:
    """``20261122-181503-lenet-custom[-name]``: sortable by time; :func:`unique_dir` adds a suffix."""
    return "-".join([time.strftime("%Y%m%d-%H%M%S"), model, norm] + ([name] if name else []))


@dataclass(frozen=True)
class Entry:
    """A run or sweep directory found by :func:`scan`: its path, the names of the files in it and,
    for a run, the id of the sweep it belongs to (None for a plain run)."""

    kind: str  # run | sweep
    path: str
    files: frozenset
    sweep: Optional[str] = None


def scan(root: Path | str) -> Iterator[Entry]:
    """Every run and sweep directory under ``root``, in sorted order (a sweep before its jobs), with
    what the walk saw anyway: file names and sweep membership. Plain strings and one ``scandir``
    per directory keep this cheap over thousands of runs; it never descends into a run, a hidden
    folder (the trash) or through a symlink."""
    def visit(directory: str, sweep: Optional[str]) -> Iterator[Entry]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        files = frozenset(e.name for e in entries if not e.is_dir(follow_symlinks=False))
        if RUN_FILE in files:
            yield Entry("run", directory, files, sweep)
            return
        inner = None
        if SWEEP_FILE in files:
            inner = os.path.basename(directory)
            yield Entry("sweep", directory, files)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                yield from visit(entry.path, inner)

    if os.path.isdir(root):
        yield from visit(str(root), None)


def iter_run_entries(root: Path | str) -> Iterator[Entry]:
    return (entry for entry in scan(root) if entry.kind == "run")


def iter_run_dirs(root: Path) -> Iterator[Path]:
    """Every run directory (one holding ``run.json``) under ``root``, sweeps included."""
    return (Path(entry.path) for entry in iter_run_entries(root))


@dataclass
class Catalog:
    """Every run and sweep directory under a root, found in one walk; resolves many references."""

    root: Path
    runs: list[Path]
    sweeps: list[Path]

    @classmethod
    def scan(cls, root: Path) -> "Catalog":
        runs, sweeps = [], []
        for entry in scan(root):
            (runs if entry.kind == "run" else sweeps).append(Path(entry.path))
        return cls(Path(root), runs, sweeps)

    def resolve(self, ref: str) -> tuple[str, Path]:
        """``("sweep" | "run", directory)`` for an id, a unique id prefix or a unique ``name=`` label.
        An exact id wins, then prefixes (a sweep over its own jobs, whose ids start with it), then
        labels of runs and sweeps."""
        sweep_set = set(self.sweeps)
        for match in (lambda name: name == ref, lambda name: name.startswith(ref)):
            sweeps = [p for p in self.sweeps if match(p.name)]
            inside = set(sweeps)
            found = [("sweep", p) for p in sweeps] + [("run", p) for p in self.runs
                                                       if match(p.name) and p.parent not in inside]
            if found:
                return _one(ref, found)
        found = [("sweep", p) for p in self.sweeps if label_of(p.name) == ref]
        found += [("run", p) for p in self.runs if p.parent not in sweep_set and label_of(p.name) == ref]
        if found:
            return _one(ref, found)
        raise BnexpError(f"no run or sweep matches '{ref}' (not a directory, and no id under {self.root} "
                         "starts with it, nor is it a run's name)")


def _one(ref: str, found: list[tuple[str, Path]]) -> tuple[str, Path]:
    if len(found) > 1:
        shown = ", ".join(f"{p.name} ({kind})" for kind, p in found[:8])
        more = f", ... ({len(found)} in all)" if len(found) > 8 else ""
        raise BnexpError(f"'{ref}' is ambiguous: it matches {shown}{more}")
    return found[0]


def label_of(dir_name: str) -> Optional[str]:
    """The ``name=`` label inside a run id (``<date>-<time>-<model>-<norm>-<label>-<hex>``) or a
    sweep id (``<date>-<time>-sweep-<label>-<hex>``), if any."""
    parts = dir_name.split("-")
    if len(parts) < 5 or not parts[0].isdigit():
        return None
    return "-".join(parts[3:-1] if parts[2] == "sweep" else parts[4:-1]) or None


def as_directory(ref: str) -> Optional[tuple[str, Path]]:
    """``("sweep" | "run" | "dir", path)`` when ``ref`` is a directory; None when it could be an id."""
    path = Path(ref).expanduser()
    if not path.is_dir():
        if os.sep in ref or ref.startswith("."):
            raise BnexpError(f"{ref}: no such directory (give a run or sweep directory, an id prefix or a name)")
        return None
    if (path / SWEEP_FILE).exists():
        return "sweep", path
    if (path / RUN_FILE).exists():
        return "run", path
    return "dir", path


def resolve_all(refs: Iterable[str], root: Path, *, allow_plain_dirs: bool = False) -> list[tuple[str, Path]]:
    """Resolve every reference (directory, id, id prefix, name) with at most one walk of ``root``.
    ``allow_plain_dirs``: a directory that is neither run nor sweep comes back as ``("dir", path)``
    (for commands that take any folder of runs); otherwise it is an error."""
    refs = list(refs)
    resolved = [as_directory(ref) for ref in refs]
    for ref, found in zip(refs, resolved):
        if found and found[0] == "dir" and not allow_plain_dirs:
            raise BnexpError(f"{ref} is a directory but neither a run (no {RUN_FILE}) nor a sweep (no {SWEEP_FILE})")
    if any(found is None for found in resolved):
        catalog = Catalog.scan(root)
        resolved = [found or catalog.resolve(ref) for found, ref in zip(resolved, refs)]
    return resolved  # type: ignore[return-value]


def resolve(ref: str, root: Path) -> tuple[str, Path]:
    return resolve_all([ref], root)[0]


def expand(refs: Iterable[str], root: Path) -> list[Path]:
    """Run directories named by ``refs``; a sweep (or any folder) stands for every run below it.
    Order kept, no repeats."""
    refs = list(refs)
    found: dict[Path, None] = {}
    for ref, (kind, path) in zip(refs, resolve_all(refs, root, allow_plain_dirs=True)):
        runs = [path] if kind == "run" else list(iter_run_dirs(path))
        if not runs:
            raise BnexpError(f"{ref}: no runs in this directory (no {RUN_FILE} below it)")
        for run_dir in runs:
            found.setdefault(run_dir.resolve(), None)
    return list(found)


def sweep_of(run_dir: Path) -> Optional[str]:
    parent = Path(run_dir).parent
    return parent.name if (parent / SWEEP_FILE).is_file() else None


# ---------------------------------------------------------------------------------------------
# Removing


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
