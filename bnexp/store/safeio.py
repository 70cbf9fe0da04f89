"""Opening files in a run directory that may come from anywhere: every reader and writer of the
store goes through here.

A run or sweep directory is untrusted input (copied from another machine, imported, shared over
a network file system), so:

* **writes never go through a planted link**: files are opened with ``O_NOFOLLOW`` (a symlink in
  the last component is refused with one line), temporary files are created with ``O_EXCL``, and
  a FIFO or device standing where a file should be is refused instead of blocking or being
  written to (``O_NONBLOCK`` while opening, then a regular-file check on the open descriptor);
* **reads are bounded**: a file is read only when it is regular and below a size limit, JSON
  is parsed with a bounded nesting depth, YAML with a bounded number of nodes after alias
  expansion (a "billion laughs" file is refused, not expanded), line logs are streamed with a
  bounded line length, so a hostile file is one ``unreadable`` line, never a hang, a
  ``MemoryError`` or a ``RecursionError`` that hides every other run.

Torch-free and cheap: the registry reads thousands of records through these functions.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from bnexp.core.errors import BnexpError

MAX_RECORD_BYTES = 4 << 20  # a run.json or config.yaml larger than this is not ours
MAX_DEPTH = 32  # nesting of any JSON/YAML value bnexp writes is at most 4
MAX_YAML_NODES = 200_000  # values in a config after alias expansion (a real config has ~60)
MAX_LINE_BYTES = 1 << 20  # one metrics.jsonl record (a real one is under 4 KB)


class UnreadableFile(BnexpError):
    """A run's file exists but is not what bnexp wrote; the message names the file and why."""


class UnsafeFile(BnexpError):
    """Something other than a regular file (a symlink, a FIFO, a device) stands where bnexp writes."""


# ---------------------------------------------------------------------------------------------
# Writing


def _refusal(path: Path, exc: Optional[OSError] = None, mode: Optional[int] = None) -> UnsafeFile:
    if exc is not None and exc.errno == errno.ELOOP or (mode is not None and stat.S_ISLNK(mode)):
        what = "a symbolic link"
    elif exc is not None and exc.errno == errno.ENXIO or (mode is not None and stat.S_ISFIFO(mode)):
        what = "a FIFO"
    else:
        what = "not a regular file"
    return UnsafeFile(f"refusing to write {path}: it is {what}, which bnexp never creates there (planted?); "
                      "remove it and try again")


def open_file(path: Path | str, flags: int, mode: int = 0o644, dir_fd: Optional[int] = None) -> int:
    """``os.open`` that never follows a symlink in the last component and never blocks on a FIFO;
    the result is a descriptor of a regular file, or :class:`UnsafeFile` naming the path (other
    OS errors, a full disk or a missing folder, are raised as they are)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            raise _refusal(Path(path), exc) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _refusal(Path(path), mode=info.st_mode)
    return fd


def open_append(path: Path | str, dir_fd: Optional[int] = None) -> int:
    """A log file opened for appending (created if missing)."""
    return open_file(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, dir_fd=dir_fd)


def open_lock(path: Path | str) -> int:
    """A lock file (created if missing), for ``flock``."""
    return open_file(path, os.O_RDWR | os.O_CREAT)


def open_temporary(path: Path | str, dir_fd: Optional[int] = None) -> int:
    """A temporary file at a fixed name, created with ``O_EXCL``: a regular file left there by a
    killed writer is replaced; a symlink or anything else planted there is refused."""
    try:
        info = os.lstat(path, dir_fd=dir_fd)
    except FileNotFoundError:
        info = None
    if info is not None:
        if not stat.S_ISREG(info.st_mode):
            raise _refusal(Path(path), mode=info.st_mode)
        os.unlink(path, dir_fd=dir_fd)
    try:
        return open_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, dir_fd=dir_fd)
    except FileExistsError:  # something appeared between the check and the creation
        raise UnsafeFile(f"refusing to write {path}: another file appeared there while writing") from None


def write_atomic(path: Path | str, content: str | bytes, dir_fd: Optional[int] = None) -> None:
    """Write via a new temporary file (``O_EXCL``) and rename, so readers never see half a file; a
    failure (a full disk) removes the temporary file and leaves the old file as it was. Renaming
    over a symlink replaces the link, never what it points to. With ``dir_fd`` the names are
    relative to that open directory (a run directory moved while it is written stays the target)."""
    path = Path(path)
    data = content.encode() if isinstance(content, str) else content
    if dir_fd is None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.fchmod(fd, 0o644)
    else:
        tmp = f".{path.name}.{os.urandom(4).hex()}"
        fd = open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path.name if dir_fd is not None else path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as exc:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise naming(exc, path) from exc
        raise


def naming(exc: OSError, path: Path | str) -> OSError:
    """``exc`` naming ``path``: a failed ``write`` (a full disk) names no file; its errno is kept."""
    return exc if exc.filename is not None else OSError(exc.errno, exc.strerror, str(path))


def write_record(path: Path | str, data: Any, dir_fd: Optional[int] = None) -> None:
    """A record (run.json, sweep.json) written atomically; on a full disk, overwritten in place
    instead, compactly (its old blocks are reused, so that works when no new block can be had): a
    torn record is still better than a final status lost, a run or sweep left looking alive."""
    try:
        write_json(path, data, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        try:
            with os.fdopen(open_file(Path(path).name if dir_fd is not None else path, os.O_WRONLY, dir_fd=dir_fd),
                           "w") as handle:
                info = os.fstat(handle.fileno())
                text = _fitting(data, max(info.st_size, info.st_blocks * 512))
                if text is None:  # not even the short form fits in the old blocks: leave the old record whole
                    raise exc
                handle.write(text)
                handle.truncate()
        except OSError:
            raise exc from None


def _fitting(data: Any, room: int) -> Optional[str]:
    """``data`` as compact JSON in at most ``room`` bytes: whole, or with each job row of a sweep
    record kept to its id, status and message; None if neither fits."""
    text = json.dumps(data, separators=(",", ":"), default=str)
    if len(text.encode()) > room and isinstance(data, dict) and isinstance(data.get("jobs"), list):
        jobs = [{k: j.get(k) for k in ("id", "status", "message")} for j in data["jobs"] if isinstance(j, dict)]
        text = json.dumps({**data, "jobs": jobs}, separators=(",", ":"), default=str)
    return text if len(text.encode()) <= room else None


def write_json(path: Path | str, data: Any, dir_fd: Optional[int] = None) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n", dir_fd=dir_fd)


# ---------------------------------------------------------------------------------------------
# Reading


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UnreadableFile(f"{path}: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnreadableFile(f"{path}: not a regular file")
    return fd, info


def read_bytes(path: Path | str, limit: int = MAX_RECORD_BYTES) -> bytes:
    """A small regular file's bytes; anything else (missing, a FIFO or device, too large) is an
    :class:`UnreadableFile` naming the file. Never blocks on a FIFO."""
    path = Path(path)
    fd, info = _open_regular(path)
    try:
        if info.st_size > limit:
            raise UnreadableFile(f"{path}: {info.st_size:,} bytes, larger than any file bnexp writes there")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:  # grew while being read
            raise UnreadableFile(f"{path}: larger than any file bnexp writes there")
        return data
    except OSError as exc:
        raise UnreadableFile(f"{path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_text(path: Path | str, limit: int = MAX_RECORD_BYTES) -> str:
    """A small UTF-8 text file (see :func:`read_bytes`)."""
    data = read_bytes(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"{path}: not UTF-8 text (byte {exc.start})") from None


def iter_lines(path: Path | str, max_line: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str]]:
    """``(number, line)`` of a text log, streamed: memory stays bounded by ``max_line`` however
    large (or sparse) the file is; a longer line, or bytes that are not UTF-8, is an
    :class:`UnreadableFile` naming the file and line. The last line is given even without its
    newline (a torn write)."""
    path = Path(path)
    fd, _ = _open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        for number, raw in enumerate(iter(lambda: handle.readline(max_line + 1), b""), start=1):
            if len(raw) > max_line:
                raise UnreadableFile(f"{path}: line {number} is longer than {max_line:,} bytes "
                                     "(not a metrics record)")
            try:
                yield number, raw.decode("utf-8").rstrip("\n")
            except UnicodeDecodeError:
                raise UnreadableFile(f"{path}: line {number} is not UTF-8 text") from None


def check_depth(value: Any, source: Any, limit: int = MAX_DEPTH, _depth: int = 0) -> Any:
    """``value`` if its lists/objects nest at most ``limit`` deep, else an :class:`UnreadableFile`."""
    if isinstance(value, (dict, list)):
        if _depth >= limit:
            raise UnreadableFile(f"{source}: nested more than {limit} levels deep (not what bnexp writes)")
        for item in (value.values() if isinstance(value, dict) else value):
            if isinstance(item, (dict, list)):
                check_depth(item, source, limit, _depth + 1)
    return value


def loads(text: str, source: Any) -> Any:
    """JSON from a file: a value nested past Python's recursion limit is an :class:`UnreadableFile`,
    not a ``RecursionError`` (callers bound the depth they keep with :func:`check_depth`)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise UnreadableFile(f"{source}: nested too deeply to be a bnexp file") from None
    except ValueError as exc:
        raise UnreadableFile(f"{source}: not valid JSON ({exc})") from None


def read_json_object(path: Path | str, limit: int = MAX_RECORD_BYTES) -> dict:
    """A JSON object from a small file; any other content is an :class:`UnreadableFile`."""
    data = loads(read_text(path, limit), path)
    if not isinstance(data, dict):
        raise UnreadableFile(f"{path}: a JSON {type(data).__name__ if data is not None else 'null'}, "
                             "expected an object")
    return data


def load_yaml(text: str, source: Any) -> Any:
    """YAML as plain data (safe loader), with aliases expanded into at most ``MAX_YAML_NODES``
    values and ``MAX_DEPTH`` levels: a file of nested aliases is refused in microseconds instead of
    exhausting memory in whatever walks it next."""
    import yaml

    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise UnreadableFile(f"{source}: not valid YAML ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise UnreadableFile(f"{source}: nested too deeply to be a bnexp file") from None
    if "*" in text or "&" in text:  # only a file with anchors can expand: count what it expands to
        _count_nodes(data, source)
    return check_depth(data, source)


def _count_nodes(data: Any, source: Any) -> None:
    stack, seen = [data], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > MAX_YAML_NODES:
            raise UnreadableFile(f"{source}: expands to more than {MAX_YAML_NODES:,} values (nested YAML "
                                 "aliases?); not a config bnexp wrote")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        if len(stack) > MAX_YAML_NODES:
            raise UnreadableFile(f"{source}: expands to more than {MAX_YAML_NODES:,} values")


def write_user_file(path: Path | str, content: str | bytes) -> Path:
    """Write a file the user named (``--out``), as a user expects: a symlink they named is followed
    (its target is replaced, the link stays), an existing file keeps its permissions (a private
    0600 file stays private), and a FIFO, device or directory there is refused with one line
    (:class:`UnsafeFile`) instead of being replaced. Atomic, like every write of bnexp.
    Returns the file actually written."""
    target = Path(os.path.realpath(Path(path).expanduser()))
    try:
        info = os.stat(target)
    except FileNotFoundError:
        info = None
    if info is not None and not stat.S_ISREG(info.st_mode):
        what = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a directory" if stat.S_ISDIR(info.st_mode) else \
            "not a regular file (a device?)"
        raise UnsafeFile(f"{path} is {what}; write to a regular file, or leave --out out for stdout")
    data = content.encode() if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        os.fchmod(fd, stat.S_IMODE(info.st_mode) if info is not None else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
