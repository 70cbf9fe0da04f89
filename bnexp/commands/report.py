"""``bnexp report TARGET... [--out DIR]``: figures and a Markdown page for a sweep or a set of runs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bnexp.commands import add
from bnexp.commands._shared import output_dir_option

EPILOG = ("TARGET is a run directory, a run id prefix or name (looked up under --output-dir), or any directory "
          "holding runs (a sweep directory, an output_dir): every run below it is included.\n\n"
          "Output goes to TARGET/report/ for a single target (for an id: the run's or sweep's directory), else to "
          "<output-dir>/reports/<timestamp>/, or to --out. Runs whose run.json cannot be read are left out, "
          "with a warning.\n\n"
          "Examples: bnexp report outputs/sweeps/20261122-181503\n\n"
          "          bnexp report 20261122-1815 20261122-1820 --out my-report")


def report(
    targets: Optional[List[str]] = typer.Argument(None, help="Sweep/run directories, run id prefixes or names "
                                                  "(none: every run --where selects).", show_default=False),
    where: Optional[str] = typer.Option(None, "--where", "-w", help="Only runs matching this query, e.g. "
                                        "\"norm.kind != 'none' and val_acc > 0.9\" (docs/query.md)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory for the figures and report.md."),
    output_dir: Optional[str] = output_dir_option(),
    title: Optional[str] = typer.Option(None, "--title", help="Heading of report.md."),
    html: bool = typer.Option(False, "--html", help="Also write report.html: one self-contained page (works "
                              "offline) with parallel coordinates of the swept parameters vs final metrics, "
                              "interactive curves with seed bands, the seed tables and the BN figures."),
) -> None:
    """Draw what batch norm did in a set of runs: accuracy/loss curves coloured by norm, activation
    percentile bands with vs without BN (Ioffe & Szegedy Fig. 1b,c), final gamma/beta per layer, the
    train/eval gap and recalibration effect, accuracy vs batch size when it varies, and a Markdown page
    with the tables. Runs that differ only by seed are aggregated: mean ± std bands and values, and
    Welch's t-test says whether a difference between settings exceeds seed noise."""
    from rich.console import Console

    from bnexp.commands._shared import output_root, select_run_dirs
    from bnexp.views.report.load import collect_run_dirs
    from bnexp.views.report.markdown import build_report, check_out_dir, default_out_dir

    targets = list(targets or [])
    if where:
        run_dirs = select_run_dirs(targets, where, output_root(output_dir))
    else:
        run_dirs = collect_run_dirs(targets, output_dir)
    if out is None:
        out = default_out_dir(targets, output_dir)
        check_out_dir(out)
    skipped: list[str] = []
    sources = targets + ([f"--where {where}"] if where else [])
    written = build_report(run_dirs, out, title=title, sources=sources, skipped=skipped, html=html)
    for problem in skipped:
        Console(stderr=True).print(f"[yellow]skipped[/yellow] {problem}", highlight=False)
    typer.echo(f"report of {len(run_dirs) - len(skipped)} run(s) written to {out}/")
    for name in ("report", *(n for n in written if n != "report")):
        typer.echo(f"  {written[name]}")


def register(app: typer.Typer) -> None:
    add(app, "report", report, epilog=EPILOG)
