"""``bnexp curves RUN...``: training curves in the terminal (also ``show --curves``, ``compare --curves``).

A per-epoch table and character plots of validation accuracy and loss, one marker per run, from
each run's ``metrics.jsonl``: readable over SSH at 80 columns and without colour, no TensorBoard.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bnexp.commands import add
from bnexp.commands._shared import (
    console,
    examples,
    output_dir_option,
    output_root,
    refs_argument,
    short_names,
    show,
    wide_option,
)

PLOT_HEIGHT = 12
# per-epoch columns: (record key, header, priority)
EPOCH_COLUMNS = (("epoch", "epoch", 0), ("step", "step", 1), ("train_loss", "train loss", 2),
                 ("train_acc", "train acc", 2), ("val_loss", "val loss", 0), ("val_acc", "val acc", 0),
                 ("val_acc_batch_stats", "val acc (batch stats)", 5), ("val_acc_recalibrated", "val acc (recal.)", 5),
                 ("lr", "lr", 4), ("examples_per_s", "examples/s", 3))


def epoch_table(run_id: str, epochs: list[dict], wide: bool):
    """Every epoch of one run: losses, accuracies, learning rate, throughput."""
    from bnexp.core.vocab import fmt_number, fmt_rate
    from bnexp.views.terminal import Column, FittedTable

    present = [c for c in EPOCH_COLUMNS if any(c[0] in e for e in epochs)]
    best = max(range(len(epochs)), key=lambda i: epochs[i].get("val_acc", -1.0)) if epochs else None
    rows = [[fmt_rate(e.get(key)) if key == "examples_per_s" else fmt_number(e.get(key)) for key, _, _ in present]
            for e in epochs]
    title = f"per-epoch history of {run_id}"
    if best is not None:
        title += f" (best val acc: epoch {epochs[best].get('epoch')}, in bold)"
    return FittedTable([Column(header, "right", priority) for _, header, priority in present], rows, title=title,
                       wide=wide, row_styles=["bold" if i == best else None for i in range(len(epochs))])


def side_by_side(names: list[str], histories: list[list[dict]], key: str, wide: bool):
    """One metric of several runs by epoch: a column per run (blocks below on a narrow terminal)."""
    from bnexp.core.vocab import fmt_number
    from bnexp.views.terminal import Column, FittedTable

    by_epoch = [{e.get("epoch"): e.get(key) for e in epochs} for epochs in histories]
    numbers = sorted({n for h in by_epoch for n in h if isinstance(n, int)})
    rows = [[str(n), *[fmt_number(h.get(n)) for h in by_epoch]] for n in numbers]
    return FittedTable([Column("epoch", "right"), *[Column(name, "right") for name in names]], rows,
                       title=f"{key.replace('_', ' ')} by epoch", wide=wide, overflow="blocks")


def print_curves(run_dirs: list[Path], *, steps: bool = False, wide: bool = False,
                 names: Optional[list[str]] = None) -> None:
    """The per-epoch table(s) and plots of ``run_dirs``. Per-step training curves with ``steps``, or
    when no run has two epochs to draw a line through."""
    from bnexp.store.history import read_history
    from bnexp.views.terminal import Series, line_plot

    names = names or short_names([d.name for d in run_dirs])
    histories = [read_history(d) for d in run_dirs]
    epochs = [h["epoch"] for h in histories]
    out = console()
    if len(run_dirs) == 1:
        if epochs[0]:
            show(epoch_table(run_dirs[0].name, epochs[0], wide), wide)
        else:
            out.print(f"{run_dirs[0].name}: no epoch finished yet")
    else:
        show(side_by_side(names, epochs, "val_acc", wide), wide)
    width = out.width
    if steps or max(len(e) for e in epochs) < 2:
        if not steps:
            out.print("(fewer than two epochs: training curves by logged step instead)", style="dim")
        plots = [("loss", "train loss by step"), ("acc", "train accuracy by step")]
        source, x_key = [h["train"] for h in histories], "step"
    else:
        plots = [("val_acc", "validation accuracy by epoch"), ("val_loss", "validation loss by epoch")]
        source, x_key = epochs, "epoch"
    for key, title in plots:
        series = [Series(name, [r.get(x_key) for r in records], [r.get(key) for r in records])
                  for name, records in zip(names, source)]
        out.print()
        for line in line_plot(series, width, PLOT_HEIGHT, title=title, x_label=x_key):
            out.print(line)


def curves(
    refs: List[str] = refs_argument("Runs and/or sweeps (a sweep stands for all its jobs)."),
    steps: bool = typer.Option(False, "--steps", help="Plot training loss/accuracy by logged step instead of "
                               "validation by epoch."),
    wide: bool = wide_option(),
    output_dir: Optional[str] = output_dir_option(),
) -> None:
    """Training curves in the terminal: a per-epoch table and plots of validation accuracy and loss
    for one or several runs (one marker per run; readable without colour)."""
    from bnexp.store.catalog import expand

    print_curves(expand(refs, output_root(output_dir)), steps=steps, wide=wide)


def register(app: typer.Typer) -> None:
    add(app, "curves", curves, epilog=examples("bnexp curves noted   (a run's name= label)",
                                               "bnexp curves 20261122-120000-sweep-eeee   (every job of a sweep)",
                                               "bnexp curves noted --steps"))
