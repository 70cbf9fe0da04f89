"""``bnexp import``: runs and sweeps from another machine's output directory (a folder or a
``.tar.gz`` of it) merged into this one, as a database would take them.

- Nothing lands outside the output directory: archive members with absolute paths or ``..``,
  symlinks, hard links, devices and FIFOs refuse the whole import (named in the error); a source
  folder is copied file by file, its links and special files refused likewise.
- Nothing is half-imported: everything is first unpacked into a hidden staging folder inside the
  output directory (``.import-<pid>-<hex>``, which the registry never lists), checked, then each
  run or sweep is moved into place with one ``rename``; an interruption while moving puts back
  what was moved. A staging folder left by a killed import is removed by the next import.
- Ids stay unique: a run or sweep id that exists here is refused, unless ``rename`` gives the
  newcomer a fresh suffix (its record's id and a sweep's job ids follow).
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

from bnexp.core.errors import BnexpError
from bnexp.store.catalog import scan
from bnexp.store.files import RUN_FILE, SWEEP_FILE, UnreadableFile, read_json_object, write_json
from bnexp.store.lock import pid_alive

STAGING_PREFIX = ".import-"
COPY_CHUNK = 1 << 20


@dataclass
class Imported:
    kind: str  # "run" or "sweep"
    source_id: str
    path: Path  # where it is now
    runs: int


def remove_stale_staging(root: Path) -> None:
    """Staging folders whose import process is gone (killed mid-import) are deleted."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir(follow_symlinks=False):
            pid = entry.name[len(STAGING_PREFIX):].split("-")[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(entry.path, ignore_errors=True)


def _safe_member_path(name: str) -> Optional[PurePosixPath]:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        return None
    return path


def check_archive(archive: tarfile.TarFile, source: Path) -> list[tarfile.TarInfo]:
    """Every member must be a plain file or folder at a relative path below the archive's root."""
    members = archive.getmembers()
    for member in members:
        kind = ("a symlink" if member.issym() else "a hard link" if member.islnk() else
                "a FIFO" if member.isfifo() else "a device file" if member.isdev() else
                None if member.isfile() or member.isdir() else "not a plain file")
        if kind:
            raise BnexpError(f"{source}: member {member.name!r} is {kind}; refusing to import (only plain files "
                             "and folders are taken)")
        if _safe_member_path(member.name) is None:
            raise BnexpError(f"{source}: member {member.name!r} points outside the archive; refusing to import")
    return members


def unpack_archive(source: Path, staging: Path) -> None:
    try:
        archive = tarfile.open(source, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise BnexpError(f"{source}: not a readable tar archive ({exc})") from None
    with archive:
        members = check_archive(archive, source)
        try:  # the "data" filter refuses anything unsafe a second time, on extraction itself
            archive.extractall(staging, members=members, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise BnexpError(f"{source}: could not unpack ({exc})") from None


def copy_folder(source: Path, staging: Path) -> None:
    """Copy a folder's plain files and folders; a symlink or special file anywhere refuses it all
    (checked before anything is copied)."""
    plan = []
    for folder, dirs, files in os.walk(source, followlinks=False):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise BnexpError(f"{path}: a symlink; refusing to import (only plain files and folders are taken)")
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise BnexpError(f"{path}: not a plain file; refusing to import")
            plan.append((path, stat.S_ISDIR(mode)))
    for path, is_dir in plan:
        target = staging / path.relative_to(source)
        if is_dir:
            target.mkdir(exist_ok=True)
            continue
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb") as src, open(target, "xb") as dst:
            shutil.copyfileobj(src, dst, COPY_CHUNK)


def _rename_id(path: Path, file: str, old: str, new: str) -> None:
    """Rewrite the ``id`` of a record (and a sweep's job list) after a renamed import."""
    record = path / file
    if not record.is_file():
        return
    try:
        data = read_json_object(record)
    except UnreadableFile:  # stays as it is: the registry will say why
        return
    data["id"] = new if data.get("id") == old else data.get("id")
    write_json(record, data)


def _fresh_id(name: str, taken: set[str]) -> str:
    while True:
        candidate = f"{name}-imported-{secrets.token_hex(2)}"
        if candidate not in taken:
            return candidate


def import_runs(source: Path, root: Path, rename: bool = False,
                progress: Optional[Callable[[str], None]] = None) -> list[Imported]:
    """Import every run and sweep found in ``source`` (a folder or a tar archive) into ``root``."""
    source = Path(source).expanduser()
    if not source.exists():
        raise BnexpError(f"{source}: no such file or folder")
    root = Path(root)
    if source.is_dir() and (source.resolve() == root.resolve() or root.resolve().is_relative_to(source.resolve())
                            or source.resolve().is_relative_to(root.resolve())):
        raise BnexpError(f"{source}: overlaps the output directory {root}; nothing to import")
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(root)
    staging = root / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    staging.mkdir()
    moved: list[tuple[Path, Path]] = []
    try:
        if progress:
            progress(f"reading {source}")
        if source.is_dir():
            copy_folder(source, staging)
        elif tarfile.is_tarfile(source):
            unpack_archive(source, staging)
        else:
            raise BnexpError(f"{source}: neither a folder nor a tar archive (.tar.gz)")
        items = [e for e in scan(staging) if e.kind == "sweep" or e.sweep is None]
        if not items:
            raise BnexpError(f"{source}: no runs or sweeps in it (no {RUN_FILE} or {SWEEP_FILE})")
        if any(Path(e.path) == staging for e in items):
            raise BnexpError(f"{source}: holds a run's files without its folder; archive the run folder itself")
        existing = {os.path.basename(e.path) for e in scan(root)}  # the hidden staging folder is not scanned
        clashes = [os.path.basename(e.path) for e in items if os.path.basename(e.path) in existing]
        if clashes and not rename:
            raise BnexpError(f"{len(clashes)} id{'s' * (len(clashes) > 1)} already here: {', '.join(clashes[:5])}"
                             f"{' ...' if len(clashes) > 5 else ''}; nothing imported (--rename imports them "
                             "under new ids)")
        plan = []
        for entry in items:
            here = Path(entry.path)
            name = here.name
            new = _fresh_id(name, existing) if name in existing else name
            existing.add(new)
            plan.append((entry.kind, name, here, new))
        results = []
        for kind, name, here, new in plan:
            parent = root / ("sweeps" if kind == "sweep" else "runs")
            parent.mkdir(exist_ok=True)
            target = parent / new
            if kind == "run" and new != name:
                _rename_id(here, RUN_FILE, name, new)
            elif kind == "sweep":
                _move_sweep_jobs(here, target, name, new)
            runs = sum(1 for e in scan(here) if e.kind == "run")
            os.rename(here, target)  # refuses to replace an existing folder that appeared meanwhile
            moved.append((target, here))
            results.append(Imported(kind, name, target, runs))
        moved.clear()  # all in place: nothing to put back
        return results
    except BaseException:
        for target, here in reversed(moved):  # interrupted while moving: take back what was moved
            try:
                os.rename(target, here)
            except OSError:
                pass
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_sweep_jobs(here: Path, target: Path, old: str, new: str) -> None:
    """A sweep about to move to ``target`` (renamed ``new`` if it clashed): its jobs' folders and
    ids follow the sweep's id, and ``sweep.json`` lists them where they will be."""
    if new != old:
        _rename_id(here, SWEEP_FILE, old, new)
        for entry in list(scan(here)):
            job = Path(entry.path)
            if entry.kind == "run" and job.name.startswith(old + "-"):
                renamed = job.with_name(new + job.name[len(old):])
                _rename_id(job, RUN_FILE, job.name, renamed.name)
                os.rename(job, renamed)
    try:
        sweep = read_json_object(here / SWEEP_FILE)
    except UnreadableFile:
        return
    for job in sweep.get("jobs") or []:
        if isinstance(job, dict) and isinstance(job.get("id"), str):
            if new != old and job["id"].startswith(old + "-"):
                job["id"] = new + job["id"][len(old):]
            if job.get("dir"):
                job["dir"] = str(target / job["id"])
    write_json(here / SWEEP_FILE, sweep)
