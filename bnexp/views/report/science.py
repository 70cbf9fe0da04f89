"""The report's BN-science figures and table (docs/bn-science.md): the probes over training, signal
propagation at initialization, and accuracy/loss against depth. Drawn like :mod:`.figures`."""

from __future__ import annotations

import math
from pathlib import Path

from bnexp.core.vocab import fmt_number
from bnexp.views.report.cells import Cell, legend_text
from bnexp.views.report.figures import (
    Band,
    _cells_figure,
    _cells_legend,
    _draw,
    _empty,
    _figure,
    _integer_axis,
    _save,
    aggregate,
    batch_lines,
    legend_layout,
)
from bnexp.views.report.load import _final
from bnexp.views.stats import summarize

PANELS = (  # (record kind, value, title)
    ("shift", "kl_in", "input shift: sym. KL between measurements"),
    ("shift", "kl_out", "output shift: sym. KL between measurements"),
    ("ics", "l2", "Santurkar ICS ‖G − G′‖"),
    ("ics", "cos", "Santurkar ICS cos(G, G′)"),
    ("smooth", "loss_range", "loss variation along the gradient"),
    ("smooth", "grad_pred", "gradient predictiveness max ‖g − g′‖"),
    ("smooth", "beta", "effective β-smoothness"),
    ("running_stats", "mean_err", "running-mean error |μ_EMA − μ_pop|/σ_pop"),
)
SIGNAL_PANELS = (("in_mean_sq", "input: channel mean²"), ("in_var", "input: channel variance"),
                 ("out_var", "output: channel variance"))
CAPTIONS = {
    "science": ("Covariate shift, ICS and smoothness", "The probes of docs/bn-science.md over training, each the "
                "mean over norm sites (ICS: over layers ≥ 2) per measurement, then mean ± std over seeds: the "
                "tutorials' distribution shift of each site's input and output between measurements (symmetric "
                "Gaussian KL) on a fixed probe batch, Santurkar et al.'s ICS ‖G − G′‖ and cos(G, G′), the loss "
                "landscape along the gradient at η·{0.5, 1, 2, 4} (loss range, gradient predictiveness, effective "
                "β) and, each epoch, the running-mean error against precise-BN population statistics."),
    "signal": ("Signal propagation at initialization", "Brock et al. (2021)'s signal propagation plot: for each "
               "norm site in depth order, the channel-averaged squared mean and variance of its input and the "
               "variance of its output on one batch before training (log scale), mean ± std over seeds."),
    "depth": ("Depth", "Final validation accuracy and training loss against model.depth (norm sites), one line per "
              "everything else that varies: mean ± std over seeds as error bars."),
}


def has_science(cells: list[Cell], kinds: tuple[str, ...]) -> bool:
    return any(r["kind"] in kinds for c in cells for run in c.runs for r in run.science)


def science_band(cell: Cell, kind: str, key: str) -> Band:
    """``key`` of the ``kind`` records per step, averaged over sites within a run, then over seeds."""
    per_run = []
    for run in cell.runs:
        steps: dict[int, list[float]] = {}
        for r in run.science:
            value = r.get(key)
            if r["kind"] == kind and isinstance(value, (int, float)) and math.isfinite(value):
                steps.setdefault(r["step"], []).append(value)
        per_run.append({step: sum(v) / len(v) for step, v in steps.items()})
    return aggregate(per_run)


def _log_if_positive(ax) -> None:
    ys = [y for line in ax.lines for y in line.get_ydata()]
    if ys and min(ys) > 0 and max(ys) / min(ys) > 20:
        ax.set_yscale("log")


def plot_science(cells: list[Cell], path: Path) -> Path:
    """One panel per probe some run recorded, over training steps."""
    recorded = {(r["kind"], k) for c in cells for run in c.runs for r in run.science for k in r}
    panels = [p for p in PANELS if p[:2] in recorded]
    ncols = min(4, len(panels))
    fig, axes = _cells_figure("science", cells, math.ceil(len(panels) / ncols), ncols)
    flat = [ax for row in axes for ax in row]
    for ax, (kind, key, title) in zip(flat, panels):
        for cell in cells:
            _draw(ax, science_band(cell, kind, key), cell)
        ax.set_title(title, fontsize="small")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            _log_if_positive(ax)
        else:
            _empty(ax, "not recorded")
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    _cells_legend(fig, cells)
    return _save(fig, path)


def plot_signal(cells: list[Cell], path: Path) -> Path:
    """Per-depth channel mean² and variance at initialization."""
    fig, axes = _cells_figure("signal", cells, 1, len(SIGNAL_PANELS))
    for ax, (key, title) in zip(axes[0], SIGNAL_PANELS):
        depths: list[float] = []
        for cell in cells:
            band = aggregate([{r["depth"]: r[key] for r in run.science if r["kind"] == "signal"
                               and isinstance(r.get(key), (int, float))} for run in cell.runs])
            _draw(ax, band, cell)
            depths += band.x
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("depth (norm site)")
        ax.grid(alpha=0.3)
        if depths:
            _integer_axis(ax, depths)
            if all(y > 0 for line in ax.lines for y in line.get_ydata()):
                ax.set_yscale("log")
        else:
            _empty(ax, "not recorded")
    _cells_legend(fig, cells)
    return _save(fig, path)


def plot_depth(cells: list[Cell], keys: list[str], path: Path) -> Path:
    """Final validation accuracy and training loss against ``model.depth``."""
    from matplotlib.lines import Line2D

    lines = batch_lines(cells, keys, "model.depth")
    labels = [legend_text(line.label) for line in lines]
    fig, axes = _figure("depth", 1, 2, legend_rows=legend_layout(labels)[1])
    panels = (("val_acc", "final validation accuracy"), ("train_loss", "final training loss"))
    handles = []
    for label, line in zip(labels, lines):
        style = {**line.cells[0].line(), "label": label, "marker": "o", "markersize": 4}
        handles.append(Line2D([], [], **style))
        style.pop("label")
        for ax, (key, _) in zip(axes[0], panels):
            points = [(c.settings.get("model.depth"), summarize(_final(r, key) for r in c.runs)) for c in line.cells]
            points = [(x, s) for x, s in points if isinstance(x, (int, float)) and s is not None]
            if points:
                ax.errorbar([x for x, _ in points], [s.mean for _, s in points], yerr=[s.std for _, s in points],
                            capsize=3, **style)
    for ax, (key, title) in zip(axes[0], panels):
        ax.set_xlabel("depth (model.depth)")
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
        if not ax.lines:
            _empty(ax, "not recorded in these runs")
        elif key == "train_loss":
            _log_if_positive(ax)
    fig.legend(handles=handles, loc="outside lower center", ncols=legend_layout(labels)[0], fontsize="small",
               frameon=False)
    return _save(fig, path)


def science_table(cells: list[Cell]) -> list[dict[str, str]]:
    """Per cell, each probe's mean over the run (over sites and measurements): mean ± std (n) over seeds."""
    rows = []
    for cell in cells:
        row = {"cell": cell.label}
        for kind, key, _ in PANELS:
            per_run = []
            for run in cell.runs:
                values = [r[key] for r in run.science if r["kind"] == kind and isinstance(r.get(key), (int, float))
                          and math.isfinite(r[key])]
                if values:
                    per_run.append(sum(values) / len(values))
            s = summarize(per_run)
            if s is not None:
                row[f"{kind} {key}"] = (f"{fmt_number(s.mean)} ± {fmt_number(s.std)} ({s.n})" if s.n > 1
                                        else fmt_number(s.mean))
        if len(row) > 1:
            rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return [{k: row.get(k, "—") for k in columns} for row in rows]
