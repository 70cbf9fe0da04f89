"""Soft delete: ``bnexp rm`` moves runs and sweeps into ``<output_dir>/.trash``; ``bnexp restore``
moves them back; ``rm --purge`` and ``rm --empty-trash`` delete for good.

Each removal is one entry ``.trash/<time>-<4 hex>/`` holding the moved directory (or symlink: a
link is moved itself, its target never touched) and ``origin.json`` saying where it came from.
The registry's walk skips dot-folders, so trashed runs vanish from every command until restored.
A move is a rename: instant, never a copy; across file systems it is refused (use ``--purge``).
Torch-free.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bnexp.core.errors import BnexpError
from bnexp.store.catalog import name_of
from bnexp.store.files import RUN_FILE, SWEEP_FILE, UnreadableFile, now_iso, read_json_object, remove_dir, write_json
from bnexp.store.run import unique_dir

TRASH_DIR = ".trash"
ORIGIN_FILE = "origin.json"


@dataclass
class Trashed:
    """One entry of the trash: ``name`` (the run or sweep id) moved from ``origin`` at ``deleted``."""

    entry: Path
    name: str
    kind: str
    origin: Path
    deleted: Optional[str]

    @property
    def payload(self) -> Path:
        return self.entry / self.name


def trash_dir(root: Path) -> Path:
    return Path(root) / TRASH_DIR


def move_to_trash(path: Path, kind: str, root: Path) -> Trashed:
    """Move ``path`` (a run or sweep directory, or a symlink to one) into the trash of ``root``."""
    path = Path(path)
    entry = unique_dir(trash_dir(root), _stamp())
    origin = path.parent.resolve() / path.name  # the link itself when path is a symlink
    item = Trashed(entry, path.name, kind, origin, now_iso())
    try:
        write_json(entry / ORIGIN_FILE, {"name": item.name, "kind": kind, "origin": str(origin),
                                         "deleted": item.deleted})
        os.rename(path, item.payload)
    except OSError as exc:
        remove_dir(entry)
        why = ("it is on another file system than the trash" if exc.errno == errno.EXDEV
               else exc.strerror or str(exc))
        raise BnexpError(f"cannot move {path} to {trash_dir(root)} ({why}); nothing moved; "
                         "bnexp rm --purge deletes it for good instead") from None
    return item


def _stamp() -> str:
    import time

    return time.strftime("%Y%m%d-%H%M%S")


def list_trash(root: Path) -> list[Trashed]:
    """What the trash holds, oldest first. Entries without a readable origin or payload are skipped."""
    folder = trash_dir(root)
    if not folder.is_dir():
        return []
    items = []
    for entry in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
        try:
            data = read_json_object(entry / ORIGIN_FILE)
        except UnreadableFile:
            continue
        name, origin = data.get("name"), data.get("origin")
        if not isinstance(name, str) or not isinstance(origin, str) or "/" in name:
            continue
        item = Trashed(entry, name, str(data.get("kind") or "run"), Path(origin), data.get("deleted"))
        if os.path.lexists(item.payload):
            items.append(item)
    return items


def find_trashed(refs: list[str], items: list[Trashed]) -> list[Trashed]:
    """The entries named by ids, unique id prefixes or ``name=`` labels, as for runs in place (an
    exact id wins; of one id trashed twice, the newest)."""
    found: dict[Path, Trashed] = {}
    for ref in refs:
        exact = [i for i in items if i.name == ref]
        matches = (exact[-1:] or [i for i in items if i.name.startswith(ref)]
                   or [i for i in items if name_of(i.name) == ref])
        if not matches:
            known = ", ".join(i.name for i in items[-5:]) or "the trash is empty"
            raise BnexpError(f"nothing in the trash matches '{ref}' ({known})")
        if len({i.name for i in matches}) > 1:
            raise BnexpError(f"'{ref}' is ambiguous in the trash: it matches "
                             f"{', '.join(sorted({i.name for i in matches})[:8])}")
        found.setdefault(matches[-1].entry, matches[-1])
    return list(found.values())


def restore(item: Trashed, root: Path) -> Path:
    """Move an entry back where it came from; refused if that place is taken or its folder is gone.
    ``origin.json`` is data from a folder anyone could have written: an entry goes back only to a
    place inside the output directory ``root``, and only when it is a run or sweep directory (or a
    link that ``rm`` moved), never a file planted to be moved over ``~/.ssh/authorized_keys``."""
    inside = os.path.abspath(Path(root).resolve())
    parent = os.path.abspath(item.origin.parent.resolve()) if item.origin.parent.is_dir() else None
    if (not item.origin.is_absolute() or item.origin.name in ("", ".", "..") or item.origin.name != item.name
            or (parent is not None and parent != inside and not parent.startswith(inside + os.sep))):
        raise BnexpError(f"cannot restore {item.name}: its origin.json names {item.origin}, outside {root} "
                         "(or not where an entry named so came from); refused")
    payload = item.payload
    if not payload.is_symlink() and not (payload.is_dir() and ((payload / RUN_FILE).is_file()
                                                               or (payload / SWEEP_FILE).is_file())):
        raise BnexpError(f"cannot restore {item.name}: {payload} is not a run or sweep directory; refused")
    if os.path.lexists(item.origin):
        raise BnexpError(f"cannot restore {item.name}: {item.origin} exists again; move it away first")
    if not item.origin.parent.is_dir():
        raise BnexpError(f"cannot restore {item.name}: its folder {item.origin.parent} is gone "
                         "(restore the sweep it belonged to first)")
    try:
        os.rename(item.payload, item.origin)
    except OSError as exc:
        raise BnexpError(f"cannot restore {item.name} to {item.origin}: {exc.strerror or exc}") from None
    remove_dir(item.entry)
    return item.origin


def purge(item: Trashed) -> None:
    remove_dir(item.entry)  # never follows a symlink: a trashed link goes, its target stays
