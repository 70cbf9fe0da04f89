"""``bnexp tag`` and ``bnexp note``: label runs so they can be found again (``runs --tag``).

Labels live in each run's ``labels.json`` (see :mod:`bnexp.store.labels`), so tagging a run that is
training is safe: the trainer never writes that file.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from bnexp.commands import add
from bnexp.commands._shared import console, examples, output_dir_option, output_root, refs_argument
from bnexp.core.errors import BnexpError
from bnexp.core.text import escape


def tag(
    ref: str = refs_argument("A run, or a sweep (every job of it): id prefix, name or directory."),
    tags: Optional[List[str]] = typer.Argument(None, help="Tags to add (or remove with --remove)."),
    remove: bool = typer.Option(False, "--remove", help="Remove these tags instead of adding them."),
    output_dir: Optional[str] = output_dir_option(),
) -> None:
    """Add tags to a run (or every job of a sweep), or remove them with --remove; without tags,
    print the run's tags. Find tagged runs with bnexp runs --tag TAG."""
    from bnexp.store.catalog import expand
    from bnexp.store.labels import check_tag, read_labels, update_labels

    run_dirs = expand([ref], output_root(output_dir))
    out = console()
    if not tags:
        if remove:
            raise BnexpError("--remove needs the tags to remove")
        for run_dir in run_dirs:
            out.print(escape(f"{run_dir.name}: {' '.join(read_labels(run_dir).tags) or '(no tags)'}"))
        return
    for t in tags:
        check_tag(t)  # every tag checked before any run is changed
    for run_dir in run_dirs:
        labels = update_labels(run_dir, remove=tags) if remove else update_labels(run_dir, add=tags)
        out.print(escape(f"{run_dir.name}: {' '.join(labels.tags) or '(no tags)'}"))


def note(
    ref: str = refs_argument("A run: id prefix, name or directory."),
    text: Optional[str] = typer.Argument(None, help="The note (quote it). None: print the current note."),
    clear: bool = typer.Option(False, "--clear", help="Remove the note."),
    output_dir: Optional[str] = output_dir_option(),
) -> None:
    """Attach a free-text note to a run (replacing any earlier one), shown by bnexp show and in
    bnexp runs --json; without text, print it."""
    from bnexp.store.catalog import resolve
    from bnexp.store.labels import read_labels, update_labels

    kind, run_dir = resolve(ref, output_root(output_dir))
    if kind != "run":
        raise BnexpError(f"{ref} names a sweep; a note belongs to one run (bnexp tag labels a whole sweep)")
    out = console()
    if clear:
        if text is not None:
            raise BnexpError("--clear removes the note: give no text with it")
        update_labels(run_dir, clear_note=True)
        out.print(f"{run_dir.name}: note removed")
    elif text is None:
        out.print(escape(read_labels(run_dir).note or "(no note)", keep="\n\t"), markup=False)
    elif not text.strip():
        raise BnexpError(f"note {ref} {text!r}: the note is empty; give some text, or --clear to remove the note")
    else:
        update_labels(run_dir, note=text)
        out.print(f"{run_dir.name}: note saved")


def register(app: typer.Typer) -> None:
    add(app, "tag", tag, epilog=examples("bnexp tag noted baseline keep", "bnexp tag noted keep --remove",
                                         "bnexp runs --tag baseline"))
    add(app, "note", note, epilog=examples('bnexp note noted "lr 0.5 diverges without BN"', "bnexp note noted --clear"))
