"""The report's figures, drawn on matplotlib's Agg canvas (see :mod:`bnexp.views.report`)."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from bnexp.store.files import (
    write_atomic,
)
from bnexp.views.report.cells import (
    MARKERS,
    NORM_ORDER,
    NORM_TITLES,
    Cell,
    _value_order,
    _value_text,
    legend_text,
    short_names,
)
from bnexp.views.report.load import RunData, _final, _sites
from bnexp.views.stats import summarize

DPI = 100
WIDTH_IN = 15.0
# Height of each figure without its legend, in inches; the legend adds LEGEND_ROW_IN per row.
HEIGHTS_IN = {"curves": 4.5, "activations": 8.0, "norm_params": 4.5, "bn_gap": 4.5, "batch_size": 4.5,
              "gradients": 4.5, "science": 3.6, "signal": 4.5, "depth": 4.5, "search_objective": 4.5,
              "search_history": 4.5}
FIGURE_WIDTH_PX = round(WIDTH_IN * DPI)
BASE_HEIGHT_PX = {name: round(h * DPI) for name, h in HEIGHTS_IN.items()}
LEGEND_ROW_IN, LEGEND_PAD_IN = 0.24, 0.3
CHAR_PX, HANDLE_PX = 6.6, 64  # legend text at fontsize "small": width per character; line sample and spacing
MIN_BAND_POINTS = 3  # fewer histogram records than this make no band: the panel says so
MAX_BAND_CELLS = 4  # percentile bands per activation panel (more hide each other)
MAX_BOX_CELLS = 12  # cells in the gamma/beta box plots
GAPS = (("val_acc_batch_stats", "batch statistics − running statistics"),
        ("val_acc_recalibrated", "recalibrated − running statistics"))


# --- collecting runs ------------------------------------------------------------------------------


# --- cells and their labels -----------------------------------------------------------------------


# --- aggregation ----------------------------------------------------------------------------------


@dataclass
class Band:
    """A cell's curve: mean and standard deviation (0 where only one run has the point) per x."""

    x: list[float]
    mean: list[float]
    std: list[float]
    n: list[int]

    @property
    def banded(self) -> bool:
        return any(n > 1 for n in self.n)


def aggregate(per_run: list[dict[Any, float]]) -> Band:
    """Mean and std over runs at each x some run has."""
    xs = sorted({x for points in per_run for x in points})
    out = Band([], [], [], [])
    for x in xs:
        summary = summarize(points.get(x) for points in per_run)
        if summary is not None:
            out.x.append(x)
            out.mean.append(summary.mean)
            out.std.append(summary.std)
            out.n.append(summary.n)
    return out


def epoch_series(cell: Cell, key: str, minus: Optional[str] = None) -> Band:
    """``key`` (minus ``minus``, run by run) per epoch, over the cell's runs."""
    def number(e: dict, k: Optional[str]) -> bool:
        return k is None or isinstance(e.get(k), (int, float))

    return aggregate([{e["epoch"]: e[key] - (e[minus] if minus else 0.0) for e in r.epochs
                       if number(e, key) and number(e, minus)} for r in cell.runs])


def _draw(ax, series: Band, cell: Cell, **extra: Any) -> None:
    """A cell's mean line (markers on at most ~10 points, staggered between cells so equal curves
    do not stack them) and its ±1 std band."""
    if not series.x:
        return
    ax.plot(series.x, series.mean, markevery=_markevery(len(series.x), cell), **cell.line(**extra))
    if series.banded:
        _band_fill(ax, series.x, [m - s for m, s in zip(series.mean, series.std)],
                   [m + s for m, s in zip(series.mean, series.std)], cell)


MARKS_PER_LINE = 10
BAND_ALPHA = 0.08  # faint fill: several overlapping bands stay readable; their edges say where each ends
BAND_EDGE_ALPHA = 0.55


def _markevery(points: int, cell: Cell) -> Any:
    """Every point when there are few; else about MARKS_PER_LINE, starting at an offset that differs
    between cells."""
    if points <= MARKS_PER_LINE * 2:
        return None
    every = points // MARKS_PER_LINE
    return (MARKERS.index(cell.marker) * every // len(MARKERS) if cell.marker in MARKERS else 0, every)


def _band_fill(ax, x: list, lo: list, hi: list, cell: Cell) -> None:
    """A ±1 std band: a faint fill edged by thin lines in the cell's colour and line style, so
    overlapping bands of several cells stay apart instead of mixing into one grey."""
    from matplotlib.colors import to_rgba

    ax.fill_between(x, lo, hi, facecolor=to_rgba(cell.color, BAND_ALPHA), edgecolor=to_rgba(cell.color,
                    BAND_EDGE_ALPHA), linewidth=0.7, linestyle=cell.style, zorder=1.5)


def _missing_note(ax, missing: list[Cell], why: str = "no data") -> None:
    """Say under a panel which cells of the legend it does not draw (a panel must never silently
    drop a series the legend promises)."""
    if not missing:
        return
    names = ", ".join(legend_text(c.label) for c in missing[:4]) + (f" and {len(missing) - 4} more"
                                                                      if len(missing) > 4 else "")
    room = int(FIGURE_WIDTH_PX / max(len(ax.figure.axes), 1) / 7)
    ax.set_xlabel(ax.get_xlabel() + "\n" + textwrap.fill(f"not drawn ({why}): {names}", room), color="#8a2b00")


# --- figures --------------------------------------------------------------------------------------


def legend_layout(labels: list[str]) -> tuple[int, int]:
    """Columns and rows of a legend below the axes: as many columns as the longest label allows."""
    if not labels:
        return 1, 0
    column_px = max(len(label) for label in labels) * CHAR_PX + HANDLE_PX
    ncols = max(1, min(len(labels), int(FIGURE_WIDTH_PX * 0.96 // column_px)))
    return ncols, math.ceil(len(labels) / ncols)


def _figure(name: str, nrows: int = 1, ncols: int = 1, sharey: bool | str = False, legend_rows: int = 0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = HEIGHTS_IN[name] + (legend_rows * LEGEND_ROW_IN + LEGEND_PAD_IN if legend_rows else 0)
    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    return fig, axes


def _cells_figure(name: str, cells: list[Cell], nrows: int = 1, ncols: int = 1, sharey: bool | str = False):
    """A figure with room below its axes for a legend of ``cells``."""
    _, rows = legend_layout([legend_text(c.label) for c in cells])
    return _figure(name, nrows, ncols, sharey, legend_rows=rows)


def _cells_legend(fig, cells: list[Cell], **line: Any) -> None:
    """One legend for the whole figure, below the axes: a line sample per cell."""
    from matplotlib.lines import Line2D

    if not cells:
        return
    handles = [Line2D([], [], **{**c.line(), **line}) for c in cells]
    ncols, _ = legend_layout([h.get_label() for h in handles])
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize="small", frameon=False)


def _save(fig, path: Path) -> Path:
    """PNG of the canvas, drawn once, reduced to a 256-colour palette (a third of the bytes, same look)."""
    import io

    from PIL import Image

    fig.canvas.draw()
    image = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    out = io.BytesIO()
    image.convert("RGB").quantize(colors=256).save(out, format="PNG", optimize=True)
    write_atomic(path, out.getvalue())
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#555555", wrap=True)


def _integer_axis(ax, xs: Iterable[float]) -> None:
    """Whole-number ticks on x (epochs, steps); a single x gets room on both sides, not a zoom into it."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    xs = set(xs)
    if len(xs) == 1:
        x = next(iter(xs))
        ax.set_xlim(x - 1, x + 1)


def plot_curves(cells: list[Cell], path: Path) -> Path:
    """Validation accuracy and loss per epoch, training loss per step (per example seen when the
    cells' batch sizes differ: a step of 256 examples is not a step of 16); mean ± std over seeds."""
    fig, axes = _cells_figure("curves", cells, 1, 3)
    (ax_acc, ax_loss, ax_train) = axes[0]
    for ax, key, title in ((ax_acc, "val_acc", "validation accuracy"), (ax_loss, "val_loss", "validation loss")):
        xs: list[float] = []
        missing = []
        for cell in cells:
            series = epoch_series(cell, key)
            _draw(ax, series, cell)
            xs += series.x
            if not series.x:
                missing.append(cell)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        _integer_axis(ax, xs)
        ax.grid(alpha=0.3)
        if not xs:
            _empty(ax, "no epoch records")
        else:
            _missing_note(ax, missing, "no epoch records")
    per_example = len({_batch_size(r) for c in cells for r in c.runs}) > 1
    steps: list[float] = []
    smoothed = 1
    missing = []
    for cell in cells:
        series = aggregate([{t["step"] * ((_batch_size(r) or 1) if per_example else 1): t["loss"] for t in r.train
                             if isinstance(t.get("loss"), (int, float))} for r in cell.runs])
        if not series.x:
            missing.append(cell)
            continue
        window = max(1, len(series.x) // 60)
        smoothed = max(smoothed, window)
        mean, std = _moving_average(series.mean, window), _moving_average(series.std, window)
        ax_train.plot(series.x, mean, markevery=_markevery(len(series.x), cell), **cell.line())
        if series.banded:  # a log axis: the band's lower edge is kept above zero
            _band_fill(ax_train, series.x, [max(m - s, m * 1e-3) for m, s in zip(mean, std)],
                       [m + s for m, s in zip(mean, std)], cell)
        steps += series.x
    ax_train.set_title("training loss" + (f" (moving average of {smoothed} logged windows)" if smoothed > 1 else ""))
    ax_train.set_xlabel("examples seen (step × batch size)" if per_example else "step")
    _integer_axis(ax_train, steps)
    ax_train.grid(alpha=0.3)
    if steps:
        ax_train.set_yscale("log")
        _missing_note(ax_train, missing, "no training records")
    else:
        _empty(ax_train, "no training records")
    _cells_legend(fig, cells)
    return _save(fig, path)


def _batch_size(run: RunData) -> Optional[int]:
    value = run.config.get("batch_size", run.summary.get("batch_size"))
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _moving_average(values, window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (the first points average what exists so far)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _band(records: list[dict], site: str, part: str) -> tuple[list[int], list[float], list[float], list[float]]:
    steps, lo, mid, hi = [], [], [], []
    for r in records:
        q = r.get(part) or {}
        if r.get("site") == site and all(k in q for k in ("p15", "p50", "p85")):
            steps.append(r["step"])
            lo.append(q["p15"])
            mid.append(q["p50"])
            hi.append(q["p85"])
    return steps, lo, mid, hi


def _norm_groups(cells: list[Cell]) -> list[tuple[str, list[Cell]]]:
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.norm, []).append(cell)
    order = [n for n in NORM_ORDER if n in groups] + sorted(set(groups) - set(NORM_ORDER))
    return [(n, groups[n]) for n in order]


def _few_points_note(run: RunData, points: int) -> str:
    every = run.config.get("hist_every_steps")
    steps = _final(run, "step")
    why = f" (hist_every_steps={every}, {steps} steps)" if every and steps else ""
    return (f"only {points} histogram point{'s' if points != 1 else ''}{why}: "
            "too few for a band; train longer or lower hist_every_steps")


def plot_activations(cells: list[Cell], path: Path) -> Path:
    """Top row: percentile bands of unit 0 of the last norm site (the activation's input), one panel
    per norm, as in the paper's Figure 1(b, c); each cell's first run (bands of different seeds are
    not averaged). Bottom row: the same bands over all units, per site, of the first cell's run."""
    groups = _norm_groups(cells)
    shown = [c for _, members in groups for c in members[:MAX_BAND_CELLS]]
    fig, axes = _cells_figure("activations", shown, 2, max(1, len(groups)), sharey="row")  # one scale per row
    site_handles: dict[str, Any] = {}
    for col, (norm, members) in enumerate(groups):
        top, bottom = axes[0][col], axes[1][col]
        fewest: Optional[tuple[int, RunData]] = None
        sites_seen: set[str] = set()
        top_steps: list[int] = []
        bottom_steps: list[int] = []
        for i, cell in enumerate(members[:MAX_BAND_CELLS]):
            run = cell.runs[0]
            site = run.last_site()
            if site is None:
                continue
            steps, lo, mid, hi = _band(run.activations, site, "unit0")
            if not steps:
                continue
            if len(steps) < MIN_BAND_POINTS and (fewest is None or len(steps) < fewest[0]):
                fewest = (len(steps), run)
            top.fill_between(steps, lo, hi, color=cell.color, alpha=0.25 if i == 0 else 0.12, linewidth=0)
            marker = "o" if len(steps) < MIN_BAND_POINTS else None
            top.plot(steps, mid, color=cell.color, linestyle=cell.style, linewidth=1.4, marker=marker)
            for edge in (lo, hi):
                top.plot(steps, edge, color=cell.color, linestyle=cell.style, linewidth=0.7, alpha=0.8, marker=marker,
                         markersize=3)
            top_steps += steps
            sites_seen.add(site)
        first = next((c.runs[0] for c in members if c.runs[0].activations), None)
        if first is not None:
            sites = _sites(first.activations)
            for site_name, shade in zip(sites, _shades(len(sites))):
                s, lo2, mid2, hi2 = _band(first.activations, site_name, "output")
                if s:
                    bottom.fill_between(s, lo2, hi2, color=shade, alpha=0.18, linewidth=0)
                    handle, = bottom.plot(s, mid2, color=shade, linewidth=1.3, marker="o" if len(s) < MIN_BAND_POINTS
                                          else None, label=site_name)
                    site_handles.setdefault(site_name, handle)
                    bottom_steps += s
        where = sorted(sites_seen)[0] if len(sites_seen) == 1 else "the last norm site"
        more = f"; {MAX_BAND_CELLS} of {len(members)} cells" if len(members) > MAX_BAND_CELLS else ""
        heading = NORM_TITLES.get(norm, f"norm={norm}")
        room = int(FIGURE_WIDTH_PX / len(groups) / 9)  # characters a title line can take over its panel
        top.set_title(heading + "\n" + textwrap.fill(f"unit 0 of {where}: median, 15–85th percentile{more}", room),
                      fontsize="medium")
        whose = f" ({first.label})" if first is not None and len(members) > 1 else ""
        bottom.set_title(heading + "\n" + textwrap.fill(f"all units per norm site{whose}", room), fontsize="medium")
        for ax, xs in ((top, top_steps), (bottom, bottom_steps)):
            ax.set_xlabel("step")
            ax.set_ylabel("activation input")
            _integer_axis(ax, xs)
            ax.grid(alpha=0.3)
            if not xs:
                _empty(ax, "no activation records\n(hist_every_steps=0?)")
        if fewest is not None:  # below the axes, where it covers nothing
            top.set_xlabel("step\n" + textwrap.fill(_few_points_note(fewest[1], fewest[0]), room), color="#8a2b00")
    if not groups:
        _empty(axes[0][0], "no runs")
        _empty(axes[1][0], "no runs")
    if site_handles:  # sites, right of the last bottom panel
        axes[1][-1].legend(handles=list(site_handles.values()), title="norm site (median; band 15–85th)",
                           loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize="small",
                           title_fontsize="small", frameon=False)
    _cells_legend(fig, shown, linewidth=1.4, alpha=0.95, marker="")  # the bands are drawn without markers
    return _save(fig, path)


def _shades(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.1 + 0.75 * i / max(n - 1, 1)) for i in range(n)]


def plot_norm_params(cells: list[Cell], path: Path) -> Path:
    """Gamma and beta per norm site at the end of training: one box per cell (its first run) and site."""
    with_params = [c for c in cells if any(p.get("gamma") for p in c.runs[0].norm_params.values())][:MAX_BOX_CELLS]
    fig, axes = _cells_figure("norm_params", with_params, 1, 2)
    for ax, name in zip(axes[0], ("gamma", "beta")):
        ax.set_title(f"{name} per norm site at the end of training", fontsize="medium")
        ax.grid(alpha=0.3, axis="y")
        if not with_params:
            _empty(ax, "no BN parameters in these runs (norm=none, or norm_params.json missing)")
            continue
        params = [c.runs[0].norm_params for c in with_params]
        sites = sorted({s for p in params for s, values in p.items() if values.get(name)}, key=lambda s: (len(s), s))
        width = 0.8 / len(with_params)
        for j, (cell, p) in enumerate(zip(with_params, params)):
            data, positions = [], []
            for i, site in enumerate(sites):
                values = p.get(site, {}).get(name)
                if values:
                    data.append(values)
                    positions.append(i - 0.4 + width * (j + 0.5))
            if not data:
                continue
            parts = ax.boxplot(data, positions=positions, widths=width * 0.85, patch_artist=True,
                               showfliers=True, flierprops={"markersize": 2, "alpha": 0.5})
            for box in parts["boxes"]:
                box.set(facecolor=cell.color, alpha=0.55, linestyle=cell.style)
            for median in parts["medians"]:
                median.set(color="black")
        ax.set_xticks(range(len(sites)), sites)
        ax.set_xlim(-0.6, len(sites) - 0.4)
        ax.axhline(1.0 if name == "gamma" else 0.0, color="#999999", linewidth=0.8, linestyle=":")
    _cells_legend(fig, with_params, linewidth=6, alpha=0.55, marker="")
    return _save(fig, path)


def gap_cells(cells: list[Cell]) -> list[Cell]:
    """Cells whose runs scored validation with batch statistics (runs with BN, since issue 11)."""
    return [c for c in cells if any(isinstance(e.get("val_acc_batch_stats"), (int, float)) for r in c.runs
                                    for e in r.epochs)]


def plot_bn_gap(cells: list[Cell], path: Path) -> Path:
    """Validation accuracy with batch statistics and with recalibrated running statistics, minus the
    accuracy with the running statistics training left, per epoch: mean ± std over seeds."""
    fig, axes = _cells_figure("bn_gap", cells, 1, 2, sharey=True)
    for ax, (key, title) in zip(axes[0], GAPS):
        xs: list[float] = []
        missing = []
        for cell in cells:
            series = epoch_series(cell, key, minus="val_acc")
            _draw(ax, series, cell)
            xs += series.x
            if not series.x:
                missing.append(cell)
        ax.axhline(0.0, color="#555555", linewidth=0.8)
        ax.set_title(f"val accuracy: {title}", fontsize="medium")
        ax.set_xlabel("epoch")
        ax.set_ylabel("Δ validation accuracy")
        _integer_axis(ax, xs)
        ax.grid(alpha=0.3)
        if not xs:
            _empty(ax, "not recorded (recalibrate_batches=0?)" if key == "val_acc_recalibrated" else "not recorded")
        else:
            _missing_note(ax, missing, "not recorded")
    _cells_legend(fig, cells)
    return _save(fig, path)


GRADIENT_PANELS = (("effective_lr", "effective learning rate lr / ‖W‖²", "log"),
                   ("grad_norm", "gradient norm ‖∂L/∂W‖", "log"),
                   ("weight_norm", "weight norm ‖W‖", "linear"))


def plot_gradients(cells: list[Cell], path: Path) -> Path:
    """The weight of the conv/linear layer before the last norm site: its effective learning rate,
    gradient norm and norm over training, mean ± std over seeds. With BN the layer is
    scale-invariant, so as ‖W‖ grows its effective step lr/‖W‖² shrinks."""
    fig, axes = _cells_figure("gradients", cells, 1, len(GRADIENT_PANELS))
    sites: set[str] = set()
    for ax, (key, title, scale) in zip(axes[0], GRADIENT_PANELS):
        steps: list[float] = []
        missing, unnormalized = [], []
        for cell in cells:
            last = _sites(cell.runs[0].grads)[-1]
            sites.add(last)
            if key == "effective_lr" and cell.norm == "none":
                unnormalized.append(cell)  # lr/‖W‖² is an effective step only for a scale-invariant layer
                continue
            series = aggregate([{g["step"]: g[key] for g in r.grads if g.get("site") == last
                                 and isinstance(g.get(key), (int, float)) and g[key] > 0} for r in cell.runs])
            if series.x:
                ax.plot(series.x, series.mean, markevery=_markevery(len(series.x), cell), **cell.line())
                if series.banded:
                    _band_fill(ax, series.x, [max(m - s, m * 1e-3) for m, s in zip(series.mean, series.std)],
                               [m + s for m, s in zip(series.mean, series.std)], cell)
                steps += series.x
            else:
                missing.append(cell)
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("step")
        _integer_axis(ax, steps)
        ax.grid(alpha=0.3)
        if steps:
            ax.set_yscale(scale)
            _missing_note(ax, unnormalized, "no norm layer, so lr/‖W‖² is no effective step")
            _missing_note(ax, missing, f"no {key} records")
        elif unnormalized and not missing:
            _empty(ax, "no BN in these runs: lr/‖W‖² is an\neffective step only behind a norm layer")
        else:
            _empty(ax, f"not recorded: no {key} records in these runs\n(hist_every_steps=0, or an older bnexp)")
    where = sorted(sites)[0] if len(sites) == 1 else "the last norm site"
    fig.suptitle(f"the layer before {where}", fontsize="medium")
    _cells_legend(fig, cells)
    return _save(fig, path)


@dataclass
class BatchLine:
    """Cells that differ only in batch size, as one line of the batch-size figure."""

    label: str
    cells: list[Cell]


def batch_lines(cells: list[Cell], keys: list[str], x_key: str = "batch_size") -> list[BatchLine]:
    """Cells grouped into lines along ``x_key`` (batch size, depth), by everything else that varies."""
    others = [k for k in keys if k != x_key]
    names = short_names(others)
    lines: dict[tuple, BatchLine] = {}
    for cell in cells:
        key = tuple(repr(cell.settings.get(k)) for k in others)
        label = " ".join(f"{names[k]}={_value_text(cell.settings.get(k))}" for k in others) or f"norm={cell.norm}"
        lines.setdefault(key, BatchLine(label, [])).cells.append(cell)
    for line in lines.values():
        line.cells.sort(key=lambda c: _value_order(c.settings.get(x_key)))
    return list(lines.values())


def plot_batch_size(cells: list[Cell], keys: list[str], path: Path) -> Path:
    """Final validation accuracy, and the train/eval gap, against batch size: a line per norm (and
    ghost size, and whatever else varies), mean ± std over seeds as error bars."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator

    lines = batch_lines(cells, keys)
    labels = [legend_text(line.label) for line in lines]
    _, rows = legend_layout(labels)
    fig, axes = _figure("batch_size", 1, 2, legend_rows=rows)
    panels = (("val_acc", None, "final validation accuracy"),
              ("val_acc_batch_stats", "val_acc", "train/eval gap: val acc with batch statistics − running"))
    handles = []
    for j, line in enumerate(lines):
        style = {**line.cells[0].line(), "label": labels[j]}
        handles.append(Line2D([], [], **style))
        style.pop("label")
        for ax, (key, minus, _) in zip(axes[0], panels):
            points = []
            for cell in line.cells:
                summary = summarize((_final(r, key) - _final(r, minus)) if minus else _final(r, key)
                                    for r in cell.runs if _final(r, key) is not None
                                    and (minus is None or _final(r, minus) is not None))
                if summary is not None:
                    points.append((cell.settings.get("batch_size"), summary))
            if points:
                xs = [x for x, _ in points]
                ax.errorbar(xs, [s.mean for _, s in points], yerr=[s.std for _, s in points], capsize=3,
                            label=labels[j], **style)
    for ax, (key, minus, title) in zip(axes[0], panels):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
        if minus:
            ax.axhline(0.0, color="#555555", linewidth=0.8)
        if not ax.lines and not ax.collections:
            _empty(ax, "not recorded in these runs")
    sizes = sorted({c.settings.get("batch_size") for c in cells if isinstance(c.settings.get("batch_size"), int)})
    for ax in axes[0]:
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(s) for s in sizes])
    fig.legend(handles=handles, loc="outside lower center", ncols=legend_layout(labels)[0], fontsize="small",
               frameon=False)
    return _save(fig, path)


# --- tables ---------------------------------------------------------------------------------------


# --- the report -----------------------------------------------------------------------------------


