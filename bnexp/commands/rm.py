"""``bnexp rm`` (to the trash, or ``--purge`` for good) and ``bnexp restore`` (back from the trash).

Safety first, whatever the mode: everything is resolved and checked before anything moves; a run
or sweep being written is refused (``--force`` stops it first); a symlink is moved or removed
itself, never followed; a real directory outside the output directory goes only because the user
named it, and the prompt says so.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, List, Optional

import typer

from bnexp.commands import add
from bnexp.commands._shared import (
    console,
    examples,
    output_dir_option,
    output_root,
    refs_argument,
    select_run_dirs,
    show,
)
from bnexp.core.errors import BnexpError

STOP_WAIT_S = 30.0  # rm --force: how long a stopped run may take to end before its directory goes


def _removal_targets(refs: list[str], root: Path) -> list[tuple[str, Path, str]]:
    """``(kind, path, note)`` for each reference, checked before anything is deleted. A symlink is
    removed itself, never what it points to; a real directory outside the output directory is
    removed only because the user named it, and the prompt says so."""
    from bnexp.store.catalog import as_directory, resolve_all
    from bnexp.store.files import is_inside

    targets: dict[Path, tuple[str, Path, str]] = {}
    for ref, (kind, path) in zip(refs, resolve_all(refs, root)):
        named = as_directory(ref) is not None
        if named and Path(ref).expanduser().is_symlink():
            target = Path(ref).expanduser()
            note = f"a symlink to {target.resolve()}: only the link is removed"
            targets[target.absolute()] = (kind, target, note)
            continue
        note = "" if is_inside(path, root) else f"outside {root}: removed because you named it"
        targets[path.resolve()] = (kind, path, note)
    return list(targets.values())


def _stop_writer(path: Path, force: bool) -> None:
    """A run or sweep being written is refused, or with ``--force`` stopped (SIGTERM to its owner on
    this host, which ends it as interrupted) and waited for before its directory goes."""
    import os
    import signal
    import socket
    import time

    from bnexp.store.catalog import iter_run_dirs
    from bnexp.store.files import RUN_FILE, SWEEP_FILE, read_json_object
    from bnexp.store.lock import busy_message, is_locked

    busy = [d for d in [path, *iter_run_dirs(path)] if is_locked(d)] if path.is_dir() and not path.is_symlink() else []
    if not busy:
        return
    what = "sweep" if (busy[0] / SWEEP_FILE).exists() else "run"
    if not force:
        raise BnexpError(f"{busy_message(busy[0], what)}; refusing to delete it (--force stops it first)")
    for directory in busy:
        owner = read_json_object(directory / (SWEEP_FILE if (directory / SWEEP_FILE).exists() else RUN_FILE)).get("owner") or {}
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            try:
                os.kill(owner["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_WAIT_S
    while any(is_locked(d) for d in busy):
        if time.monotonic() > deadline:
            raise BnexpError(f"{path.name} is still being written {STOP_WAIT_S:.0f} s after being asked to stop; "
                             "nothing deleted")
        time.sleep(0.2)


@contextlib.contextmanager
def _held(path: Path) -> Iterator[None]:
    """Hold the lock of a run (or of a sweep and each of its jobs) while it is moved or deleted, so
    no writer can start on it in between: one that did since the prompt is refused, naming its pid
    (a symlink is removed itself, nothing to hold)."""
    from bnexp.store.catalog import iter_run_dirs
    from bnexp.store.files import SWEEP_FILE
    from bnexp.store.lock import DirLock, RunBusy, busy_message

    held: list = []
    try:
        if path.is_dir() and not path.is_symlink():
            for directory in [path, *iter_run_dirs(path)] if (path / SWEEP_FILE).exists() else [path]:
                what = "sweep" if directory == path and (path / SWEEP_FILE).exists() else "run"
                try:
                    held.append(DirLock(directory).acquire(lambda d=directory, w=what: busy_message(d, w), wait_s=0))
                except RunBusy as exc:
                    raise BnexpError(f"{exc}; it started after the prompt: refusing to delete it "
                                     "(--force stops it first)") from None
        yield
    finally:
        for lock in held:
            lock.release()


def _plural(count: int) -> str:
    return f"{count} directories" if count != 1 else "1 directory"


def _empty_trash(root: Path, yes: bool) -> None:
    from bnexp.store.trash import list_trash, purge, trash_dir

    items = list_trash(root)
    out = console()
    if not items:
        out.print(f"the trash ({trash_dir(root)}) is empty")
        return
    if not yes and not typer.confirm(f"Delete the {len(items)} entries of {trash_dir(root)} for good?"):
        out.print("nothing deleted")
        raise typer.Exit(1)
    for item in items:
        purge(item)
    out.print(f"deleted {len(items)} for good")


def rm(
    refs: Optional[List[str]] = refs_argument("Runs or sweeps: directories, unique id prefixes or names.", False),
    where: Optional[str] = typer.Option(None, "--where", "-w", help="Remove the runs this query selects (among "
                                        "the runs named, or all), e.g. \"status == 'failed'\" (docs/query.md)."),
    purge: bool = typer.Option(False, "--purge", help="Delete for good instead of moving to the trash."),
    empty_trash: bool = typer.Option(False, "--empty-trash", help="Delete everything in the trash for good."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    force: bool = typer.Option(False, "--force", help="Also remove runs that are training: stop them first."),
    output_dir: Optional[str] = output_dir_option(),
) -> None:
    """Move runs or whole sweeps to the trash (<output-dir>/.trash; bnexp restore brings them back),
    after confirmation; --purge deletes for good. Runs being trained are refused (--force stops
    them first); symlinks are removed, never followed."""
    from bnexp.store.catalog import iter_run_dirs
    from bnexp.store.files import remove_dir
    from bnexp.store.trash import move_to_trash, trash_dir

    root = output_root(output_dir)
    if empty_trash:
        if refs:
            raise BnexpError("--empty-trash takes no runs: it deletes what the trash holds")
        return _empty_trash(root, yes)
    if where:  # the runs themselves, never their whole sweep
        refs = [str(d) for d in select_run_dirs(refs, where, root)]
    if not refs:
        raise BnexpError("name the runs or sweeps to remove (ids, prefixes, names or directories), or select "
                         "them with --where")
    targets = _removal_targets(list(refs), root)  # everything is resolved before anything moves
    if not force:
        for _, path, _ in targets:
            _stop_writer(path, force=False)
    from rich.text import Text

    out = console()
    for kind, path, note in targets:
        jobs = f" ({sum(1 for _ in iter_run_dirs(path))} runs)" if kind == "sweep" and not path.is_symlink() else ""
        out.print(Text(f"  {kind} {path}{jobs}") + (Text(f"  ({note})", style="yellow") if note else Text()))
    what = f"{'these' if len(targets) != 1 else 'this'} {_plural(len(targets))}"
    question = (f"Delete {what} for good?" if purge else f"Move {what} to the trash ({trash_dir(root)})?")
    if not yes and not typer.confirm(question):
        out.print("nothing deleted")
        raise typer.Exit(1)
    for kind, path, _ in targets:
        if force:
            _stop_writer(path, force=True)
        with _held(path):  # a run that started since the prompt is refused, never removed while live
            if purge:
                remove_dir(path)
            else:
                move_to_trash(path, kind, root)
    if purge:
        out.print(f"deleted {len(targets)}")
    else:
        out.print(f"moved {len(targets)} to the trash: bnexp restore {targets[0][1].name} brings "
                  f"{'it' if len(targets) == 1 else 'one'} back; bnexp rm --empty-trash deletes for good")


def restore(
    refs: Optional[List[str]] = typer.Argument(None, help="Trashed runs or sweeps: ids, unique id prefixes or "
                                               "names. None: list what the trash holds."),
    output_dir: Optional[str] = output_dir_option(),
) -> None:
    """Move runs or sweeps that bnexp rm put in the trash back where they were; without arguments,
    list the trash."""
    from bnexp.store.trash import find_trashed, list_trash, trash_dir
    from bnexp.store.trash import restore as put_back
    from bnexp.views.terminal import Column, FittedTable

    root = output_root(output_dir)
    items = list_trash(root)
    out = console()
    if not refs:
        if not items:
            out.print(f"the trash ({trash_dir(root)}) is empty")
            return
        rows = [[i.name, i.kind, (i.deleted or "-")[:19].replace("T", " "), str(i.origin.parent)] for i in items]
        show(FittedTable([Column("id"), Column("kind", priority=2), Column("removed", priority=1),
                          Column("from", wrap=True, priority=3)], rows,
                         title=f"{len(items)} in the trash ({trash_dir(root)}); bnexp restore ID puts one back"))
        return
    for item in find_trashed(list(refs), items):
        out.print(f"restored {item.kind} {put_back(item, root)}")


def register(app: typer.Typer) -> None:
    add(app, "rm", rm, epilog=examples("bnexp rm 20261122-181503   (to the trash)", "bnexp restore 20261122-181503",
                                       "bnexp rm --purge 20261122-181503 --yes   (for good)"))
    add(app, "restore", restore)
