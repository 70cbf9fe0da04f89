"""``bnexp report TARGET... [--out DIR]``: figures and a Markdown page for a sweep or a set of runs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bnexp.errors import BnexpError


def register(app: typer.Typer) -> None:
    @app.command(
        "report",
        help="Draw what batch norm did in a set of runs: accuracy/loss curves coloured by norm, activation "
             "percentile bands with vs without BN (Ioffe & Szegedy Fig. 1b,c), final gamma/beta per layer, "
             "and a Markdown page with a table of final metrics.",
        epilog="TARGET is a run directory, a run id prefix (looked up under --root), or any directory holding "
               "runs (a sweep directory, an output_dir): every run below it is included.\n\n"
               "Output goes to TARGET/report/ for a single target (for an id: the run's or sweep's directory), else to "
               "<root>/reports/<timestamp>/, or to --out.\n\n"
               "Examples: bnexp report outputs/sweeps/20261122-181503\n\n"
               "          bnexp report 20261122-1815 20261122-1820 --out my-report",
    )
    def report(
        targets: List[str] = typer.Argument(..., help="Sweep/run directories or run id prefixes.",
                                            show_default=False),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory for the figures and report.md."),
        root: Optional[Path] = typer.Option(
            None, "--root", help="Where run id prefixes are looked up (default: $BNEXP_OUTPUT_DIR or outputs)."),
        title: Optional[str] = typer.Option(None, "--title", help="Heading of report.md."),
    ) -> None:
        from bnexp.report import build_report, collect_run_dirs, default_out_dir

        if not targets:
            raise BnexpError("no runs given: name run directories, sweep directories or run id prefixes")
        run_dirs = collect_run_dirs(targets, root)
        out_dir = out if out is not None else default_out_dir(targets, root)
        written = build_report(run_dirs, out_dir, title=title, sources=list(targets))
        typer.echo(f"report of {len(run_dirs)} run(s) written to {out_dir}/")
        for name in ("report", "curves", "activations", "norm_params"):
            typer.echo(f"  {written[name]}")
