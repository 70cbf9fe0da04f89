"""What the registry commands share: where runs live, JSON output, the console, status cells.

A private module (its name starts with ``_``): ``bnexp.cli`` registers no commands from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

OUTPUT_DIR_HELP = "Where runs live (default: $BNEXP_OUTPUT_DIR or ./outputs, as in the config)."
WIDE_HELP = "Show every column at full width, even wider than the terminal."


def output_root(output_dir: Optional[str]) -> Path:
    from bnexp.store.registry import default_root

    return Path(output_dir) if output_dir else default_root()


def complete_runs(ctx, incomplete: str) -> list[str]:
    """Shell completion of run and sweep references: the ids and ``name=`` labels under the output
    directory (``--output-dir`` if already typed) that start with what was typed."""
    from bnexp.store.catalog import name_of, scan

    root = output_root((ctx.params or {}).get("output_dir"))
    names = [os.path.basename(entry.path) for entry in scan(root)]
    found = dict.fromkeys(n for n in [*names, *filter(None, map(name_of, names))] if n.startswith(incomplete))
    return sorted(found)[:500]


def refs_argument(help_text: str, required: bool = True):
    """The positional RUN/SWEEP references of a command, with shell completion of ids and names."""
    return typer.Argument(... if required else None, help=help_text, autocompletion=complete_runs)


def output_dir_option():
    return typer.Option(None, "--output-dir", help=OUTPUT_DIR_HELP)


def wide_option():
    return typer.Option(False, "--wide", help=WIDE_HELP)


def print_json(data) -> None:
    """Indented for a person at a terminal, compact for a pipe (``jq`` reads either)."""
    import json
    import sys

    from bnexp.core.text import finite

    typer.echo(json.dumps(finite(data), indent=2 if sys.stdout.isatty() else None, default=str, allow_nan=False))


def console():
    from rich.console import Console

    return Console(highlight=False, markup=False, emoji=False)


def show(renderable, wide: bool = False) -> None:
    """Print a table; ``wide`` lines are not cropped at the terminal's edge."""
    console().print(renderable, crop=not wide)


def problem(label: str, what: str, message) -> None:
    """One red ``label what: message`` line (the message printed as it is, never as markup)."""
    from rich.text import Text

    from bnexp.core.text import escape

    console().print(Text(f"{label}", style="red") + Text(escape(f" {what}: {message}")))


def status_cell(status: Optional[str]) -> tuple[str, str]:
    from bnexp.core.vocab import STATUS_STYLE

    return str(status), STATUS_STYLE.get(status or "", "red")


def short_names(ids: list[str]) -> list[str]:
    """Run ids without the prefix they all share (a sweep's id), cut at a '-'."""
    common = os.path.commonprefix(ids)
    cut = common.rfind("-") + 1 if len(ids) > 1 else 0
    return [i[cut:] or i for i in ids]


def examples(*lines: str) -> str:
    """An epilog of example command lines, one under the other."""
    return "Examples: " + "\n          ".join(lines)


WHERE_HELP = ("Only runs matching this query over their record and config, e.g. \"val_acc > 0.9 and "
              "optimizer.lr < 0.5 and norm.kind in ('custom','builtin')\" (docs/query.md).")


def where_option():
    return typer.Option(None, "--where", "-w", help=WHERE_HELP)


def select_run_dirs(refs: Optional[list[str]], where: Optional[str], root: Path) -> list[Path]:
    """The run directories a command works on: those ``refs`` name (a sweep: all its jobs), kept
    where ``--where`` matches; with a query and no refs, every run under ``root`` that matches."""
    from bnexp.core.errors import BnexpError
    from bnexp.store.catalog import expand
    from bnexp.store.registry import load_record, load_runs, where_filter, with_labels

    if refs:
        dirs = expand(refs, root)
        if not where:
            return dirs
        records = [with_labels(load_record(d), d) for d in dirs]
    elif where:
        records = load_runs(root)
    else:
        raise BnexpError("name runs or sweeps (ids, prefixes, names or directories), or select them with --where")
    chosen = where_filter(records, where)
    if not chosen:
        raise BnexpError(f"--where {where!r}: none of the {len(records)} runs "
                         f"{'named' if refs else f'in {root}'} matches")
    return [Path(r.dir) for r in chosen]
