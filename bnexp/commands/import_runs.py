"""``bnexp import PATH``: runs and sweeps from another machine into this registry."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bnexp.commands import add
from bnexp.commands._shared import console, examples, output_dir_option, output_root


def import_runs(
    source: Path = typer.Argument(..., help="Another output directory (a folder), or a .tar.gz of one, of a "
                                  "sweep or of a run folder.", show_default=False),
    rename: bool = typer.Option(False, "--rename", help="Import runs and sweeps whose id exists here under a new "
                                "id (<id>-imported-<hex>) instead of refusing."),
    output_dir: Optional[str] = output_dir_option(),
) -> None:
    """Merge runs and sweeps from another machine's output directory into this one. Only plain
    files and folders are taken (links, devices and paths leading outside refuse the import), ids
    that exist here are refused unless --rename, and an interrupted import leaves nothing behind."""
    from bnexp.store.importer import import_runs as run_import

    root = output_root(output_dir)
    out = console()
    done = run_import(source, root, rename=rename)
    runs = sum(item.runs for item in done)
    for item in done:
        renamed = f" (renamed from {item.source_id})" if item.path.name != item.source_id else ""
        jobs = f", {item.runs} runs" if item.kind == "sweep" else ""
        out.print(f"  {item.kind} {item.path}{renamed}{jobs}")
    sweeps = sum(item.kind == "sweep" for item in done)
    in_sweeps = f" ({sweeps} sweep{'s' * (sweeps != 1)})" if sweeps else ""
    out.print(f"imported {runs} run{'s' * (runs != 1)}{in_sweeps} into {root}")


def register(app: typer.Typer) -> None:
    add(app, "import", import_runs, epilog=examples("bnexp import other-machine-outputs/",
                                                    "bnexp import results.tar.gz --rename"))
