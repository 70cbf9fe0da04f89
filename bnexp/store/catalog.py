"""Naming and finding runs and sweeps: one walk of the output directory, references resolved."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, NamedTuple, Optional

from bnexp.core.errors import BnexpError
from bnexp.store.files import RUN_FILE, SWEEP_FILE

if TYPE_CHECKING:
    from bnexp.store.index import Index


class Entry(NamedTuple):
    """A run or sweep directory found by :func:`scan`: its path, the names of the files in it and,
    for a run, the id of the sweep it belongs to (None for a plain run)."""

    kind: str  # run | sweep
    path: str
    files: frozenset
    sweep: Optional[str] = None


def natural_key(name: str) -> list:
    """Sort key putting numbers in numeric order: a sweep's jobs 0, 1, 2, ... 10, not 0, 1, 10, 2."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def scan(root: Path | str, index: Optional["Index"] = None) -> Iterator[Entry]:
    """Every run and sweep directory under ``root``, in sorted order (a sweep before its jobs), with
    what the walk saw anyway: file names and sweep membership. Plain strings and one ``scandir``
    per directory keep this cheap over thousands of runs; it never descends into a run, a hidden
    folder (the trash) or through a symlink. With the output directory's ``index``, a directory
    whose mtime is unchanged is not listed again: one ``stat`` instead (:mod:`bnexp.store.index`)."""
    def listing(directory: str, mtime: Optional[int]) -> Optional[tuple[frozenset, list[str]]]:
        cached = index.listing(directory, mtime) if index is not None and mtime is not None else None
        if cached is not None:
            return cached
        try:
            entries = sorted(os.scandir(directory), key=lambda e: natural_key(e.name))
        except OSError:
            return None
        files = frozenset(e.name for e in entries if not e.is_dir(follow_symlinks=False))
        subdirs = [e.name for e in entries if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
        if index is not None and mtime is not None:
            index.put_listing(directory, mtime, files, subdirs)
        return files, subdirs

    def modified(directory: str, follow: bool) -> Optional[int]:
        if index is None:
            return None
        try:
            info = os.stat(directory, follow_symlinks=follow)
        except OSError:
            return None
        return info.st_mtime_ns if stat.S_ISDIR(info.st_mode) else None

    def visit(directory: str, sweep: Optional[str], mtime: Optional[int]) -> Iterator[Entry]:
        listed = listing(directory, mtime)
        if listed is None:
            return
        files, subdirs = listed
        if RUN_FILE in files:
            yield Entry("run", directory, files, sweep)
            return
        inner = None
        if SWEEP_FILE in files:
            inner = os.path.basename(directory)
            yield Entry("sweep", directory, files)
        prefix = directory if directory.endswith(os.sep) else directory + os.sep  # os.path.join, cheaper
        for name in subdirs:
            yield from visit(prefix + name, inner, modified(prefix + name, follow=False))

    if os.path.isdir(root):
        yield from visit(str(root), None, modified(str(root), follow=True))


def iter_run_entries(root: Path | str, index: Optional["Index"] = None) -> Iterator[Entry]:
    return (entry for entry in scan(root, index) if entry.kind == "run")


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
        from bnexp.store.index import Index, no_gc

        runs, sweeps = [], []
        with Index(root, writable=False) as index, no_gc():
            for entry in scan(root, index):
                (runs if entry.kind == "run" else sweeps).append(Path(entry.path))
        return cls(Path(root), runs, sweeps)

    def resolve(self, ref: str) -> tuple[str, Path]:
        """``("sweep" | "run", directory)`` for an id, a unique id prefix or a unique ``name=``.
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
        found = [("sweep", p) for p in self.sweeps if name_of(p.name) == ref]
        found += [("run", p) for p in self.runs if p.parent not in sweep_set and name_of(p.name) == ref]
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


def name_of(dir_name: str) -> Optional[str]:
    """The ``name=`` inside a run id (``<date>-<time>-<model>-<norm>-<name>-<hex>``) or a
    sweep id (``<date>-<time>-sweep-<name>-<hex>``), if any."""
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
