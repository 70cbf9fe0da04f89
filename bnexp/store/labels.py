"""Tags and a note on a run, kept in ``<run>/labels.json`` beside (not inside) ``run.json``.

The trainer rewrites ``run.json`` from memory while it trains, so a tag written there could be
lost; ``labels.json`` is only ever written by ``bnexp tag`` / ``bnexp note``: atomically, under a
small lock of its own (``.labels.lock``, never the trainer's ``.lock``), so two commands tagging
one run at once both count. Registry commands read it only where it exists. Torch-free.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from bnexp.core.errors import BnexpError
from bnexp.store.files import UnreadableFile, read_json_object, write_json
from bnexp.store.safeio import open_lock

LABELS_FILE = "labels.json"
LOCK_FILE = ".labels.lock"
MAX_TAG = 64
MAX_NOTE = 4000


@dataclass
class Labels:
    tags: list[str] = field(default_factory=list)
    note: Optional[str] = None

    def as_dict(self) -> dict:
        return {"tags": list(self.tags), "note": self.note}


def read_labels(run_dir: Path) -> Labels:
    """A run's labels (none when it has no labels.json); a file that is not what bnexp wrote is an
    :class:`UnreadableFile` naming it."""
    path = Path(run_dir) / LABELS_FILE
    if not path.exists():
        return Labels()
    data = read_json_object(path)
    tags, note = data.get("tags", []), data.get("note")
    tags_ok = isinstance(tags, list) and all(isinstance(t, str) for t in tags)
    if not tags_ok or not (note is None or isinstance(note, str)):
        raise UnreadableFile(f"{path}: expected {{\"tags\": [strings], \"note\": string or null}}")
    return Labels(tags, note)


def check_tag(tag: str) -> str:
    if not tag or len(tag) > MAX_TAG or any(ch.isspace() or not ch.isprintable() for ch in tag) or tag.startswith("-"):
        raise BnexpError(f"tag {tag!r}: a tag is 1 to {MAX_TAG} printable characters without spaces, "
                         "not starting with '-'")
    return tag


def check_note(note: str) -> str:
    if len(note) > MAX_NOTE:
        raise BnexpError(f"note: at most {MAX_NOTE} characters (this one has {len(note)})")
    if any(not ch.isprintable() and ch not in "\n\t" for ch in note):
        raise BnexpError("note: control characters are not allowed (only text, tabs and line breaks)")
    return note


def update_labels(run_dir: Path, *, add: Iterable[str] = (), remove: Iterable[str] = (),
                  note: Optional[str] = None, clear_note: bool = False) -> Labels:
    """Add/remove tags and set/clear the note of one run, read-modify-write under the labels lock."""
    add, remove = [check_tag(t) for t in add], set(remove)
    if note is not None:
        check_note(note)
    run_dir = Path(run_dir)
    try:
        fd = open_lock(run_dir / LOCK_FILE)  # never through a planted link
    except OSError as exc:
        raise BnexpError(f"cannot label {run_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        labels = read_labels(run_dir)
        labels.tags = [t for t in dict.fromkeys([*labels.tags, *add]) if t not in remove]
        if clear_note:
            labels.note = None
        elif note is not None:
            labels.note = note
        try:
            write_json(run_dir / LABELS_FILE, labels.as_dict())
        except OSError as exc:
            raise BnexpError(f"cannot write {run_dir / LABELS_FILE}: {exc.strerror or exc}") from None
        return labels
    finally:
        os.close(fd)
