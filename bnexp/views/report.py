"""``bnexp report``: figures and a Markdown page that show what batch norm did in a set of runs.

Everything is read from the runs' own files (``run.json``, ``config.yaml``, ``overrides.yaml``,
``metrics.jsonl``, ``norm_params.json``); a run without ``metrics.jsonl`` falls back to its
TensorBoard events, read with tensorboard's own ``EventAccumulator``.

Runs whose configs differ only in ``seed`` are one *cell* (:func:`bnexp.views.stats.seed_cells`): a cell
is drawn as one line, the mean over its seeds with a ±1 standard deviation band, and its final
metrics are given as mean ± std (n); cells that differ in one setting are compared with Welch's
t-test (is the difference larger than seed noise?). Legend labels name only the settings that
differ between cells (``norm=custom lr=0.1``); report.md maps each label to its full settings and
runs. Figures are drawn on matplotlib's Agg canvas (no display, no pyplot state), 15 inches wide,
with the legend below the axes (the figure grows by its rows, so it never covers data):

    curves.png        validation accuracy / loss per epoch and training loss per step, one line per cell
    activations.png   15/50/85th percentile bands of the last norm site's unit 0 (the activation's
                      input) over training, one panel per norm, as in Ioffe & Szegedy (2015) Fig. 1(b, c);
                      below, the same bands over all units of every norm site
    norm_params.png   gamma and beta per norm site at the end of training (box plots per cell)
    gradients.png     effective learning rate lr/||W||^2 and gradient norm of the layer before the last
                      norm site, over training (runs with histograms on)
    bn_gap.png        validation accuracy with batch statistics and with recalibrated running
                      statistics, minus that with the running statistics, per epoch (runs with BN)
    batch_size.png    final validation accuracy and train/eval gap vs batch size (when batch size varies)
    report.md         the figures, the label mapping, the tables of final metrics and seed statistics

Only this module imports matplotlib; it is imported lazily by the command.
"""

from __future__ import annotations

import math
import os
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from bnexp.config.groups import NORMS
from bnexp.core.errors import BnexpError
from bnexp.core.vocab import fmt_mean_std, fmt_number, is_plumbing
from bnexp.store.catalog import expand, resolve_all
from bnexp.store.files import (
    CONFIG_FILE,
    METRICS_FILE,
    NORM_PARAMS_FILE,
    OVERRIDES_FILE,
    UnreadableFile,
    read_json_object,
    read_metrics,
    read_text,
    read_yaml_mapping,
    write_atomic,
)
from bnexp.store.record import read_record
from bnexp.store.registry import default_root
from bnexp.views.stats import SEED_KEY, Summary, differing_settings, seed_cells, summarize, welch

NORM_ORDER = tuple(NORMS)  # the norm registry (bnexp.config.groups) says how each norm is named and coloured
NORM_COLORS = {kind: spec.color for kind, spec in NORMS.items()}
NORM_TITLES = {kind: spec.title for kind, spec in NORMS.items()}
# Colours of the cells when all share one norm (matplotlib's tab10 without its grey)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
LINESTYLES = ("-", "--", ":", "-.")
SHADES = (0.0, -0.4, 0.45)  # the k-th group of 4 cells of one colour: as is, darker, lighter
DPI = 100
WIDTH_IN = 15.0
# Height of each figure without its legend, in inches; the legend adds LEGEND_ROW_IN per row.
HEIGHTS_IN = {"curves": 4.5, "activations": 8.0, "norm_params": 4.5, "bn_gap": 4.5, "batch_size": 4.5,
              "gradients": 4.5}
FIGURE_WIDTH_PX = round(WIDTH_IN * DPI)
BASE_HEIGHT_PX = {name: round(h * DPI) for name, h in HEIGHTS_IN.items()}
LEGEND_ROW_IN, LEGEND_PAD_IN = 0.24, 0.3
CHAR_PX, HANDLE_PX = 6.6, 64  # legend text at fontsize "small": width per character; line sample and spacing
MAX_LABEL_CHARS = 150  # longer labels are cut in the legend (report.md has them whole)
MIN_BAND_POINTS = 3  # fewer histogram records than this make no band: the panel says so
MAX_BAND_CELLS = 4  # percentile bands per activation panel (more hide each other)
MAX_BOX_CELLS = 12  # cells in the gamma/beta box plots
# custom and builtin "agree" at an epoch when their validation accuracies differ by at most this
AGREE_ACC = 0.001
# Share of the best validation accuracy among the runs that counts as "converged" in the table.
CONVERGED_FRACTION = 0.98
# Short names of config keys in labels (otherwise the part after the last dot)
SHORT_KEYS = {"norm.kind": "norm", "model.name": "model", "dataset.name": "dataset", "optimizer.name": "optimizer",
              "norm.ghost_batch_size": "ghost"}
GAPS = (("val_acc_batch_stats", "batch statistics − running statistics"),
        ("val_acc_recalibrated", "recalibrated − running statistics"))


@dataclass
class RunData:
    """Everything the report needs from one run directory."""

    path: Path
    summary: dict
    config: dict  # flattened: {"optimizer.lr": 0.1, ...}
    overrides: list[str]
    train: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    activations: list[dict] = field(default_factory=list)
    grads: list[dict] = field(default_factory=list)
    norm_params: dict = field(default_factory=dict)
    label: str = ""  # its cell's

    @property
    def id(self) -> str:
        return str(self.summary.get("id") or self.path.name)

    @property
    def norm(self) -> str:
        return str(self.config.get("norm.kind", self.summary.get("norm", "?")))

    @property
    def metrics(self) -> dict:
        return self.summary.get("metrics") or {}

    def last_site(self) -> Optional[str]:
        sites = _sites(self.activations)
        return sites[-1] if sites else None


@dataclass
class Cell:
    """Runs that differ only in their seed, drawn as one line: ``settings`` is what they share."""

    runs: list[RunData]
    settings: dict
    label: str = ""
    color: str = "#2ca02c"
    style: str = "-"

    @property
    def norm(self) -> str:
        return self.runs[0].norm

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list:
        return [r.config.get(SEED_KEY, r.summary.get("seed")) for r in self.runs]

    def final(self, key: str) -> Optional[Summary]:
        return summarize(_final(r, key) for r in self.runs)

    def line(self, **extra: Any) -> dict:
        # builtin is drawn wide and pale under a thin custom line, so two equal curves stay both visible
        width = {"builtin": 3.2, "custom": 1.3}.get(self.norm, 1.6)
        alpha = {"builtin": 0.55}.get(self.norm, 0.95)
        return {"color": self.color, "linestyle": self.style, "linewidth": width, "alpha": alpha,
                "label": legend_text(self.label), **extra}


# --- collecting runs ------------------------------------------------------------------------------


def collect_run_dirs(targets: Iterable[str], root: Optional[Path] = None) -> list[Path]:
    """Run directories from run dirs, sweep (or any) dirs holding runs, and run or sweep ids,
    prefixes or names (looked up under ``root``, by default ``$BNEXP_OUTPUT_DIR`` or ``outputs``)."""
    targets = list(targets)
    if not targets:
        raise BnexpError("no runs given: name run directories, sweep directories or run id prefixes")
    return expand(targets, Path(root) if root is not None else default_root())


def load_run(path: Path) -> RunData:
    """Read one run; missing optional files leave the corresponding parts empty. A run whose
    run.json cannot be read raises :class:`UnreadableFile` (the report skips it and says why)."""
    from bnexp.core.keys import flatten

    record = read_record(path)
    summary = record.to_json()
    config: dict = {}
    overrides = list(record.overrides)
    try:  # both optional: run.json names the model, norm and dataset too
        if (path / CONFIG_FILE).exists():
            config = flatten(read_yaml_mapping(path / CONFIG_FILE))
        if not overrides and (path / OVERRIDES_FILE).exists():
            import yaml

            overrides = list(yaml.safe_load(read_text(path / OVERRIDES_FILE)) or [])
    except (UnreadableFile, ValueError, TypeError):
        pass
    run = RunData(path=path, summary=summary, config=config, overrides=[str(o) for o in overrides])
    if (path / METRICS_FILE).exists():
        buckets = {"train": run.train, "epoch": run.epochs, "activation": run.activations, "grad": run.grads}
        for _, record in read_metrics(path):  # a damaged log: UnreadableFile, the run is skipped with why
            buckets.get(record["kind"], []).append(record)
    else:
        run.train, run.epochs = scalars_from_events(path)
    if (path / NORM_PARAMS_FILE).exists():  # wrong or damaged: UnreadableFile, the run is skipped with why
        run.norm_params = read_norm_params(path / NORM_PARAMS_FILE)
    return run


def read_norm_params(path: Path) -> dict:
    """``norm_params.json``: per norm site, lists of numbers (gamma, beta, running mean/var)."""
    data = read_json_object(path)
    for site, params in data.items():
        if type(params) is not dict or not all(
                type(values) is list and all(type(v) in (int, float) for v in values) for values in params.values()):
            raise UnreadableFile(f"{path}: site {site[:40]!r} is not an object of lists of numbers")
    return data


def scalars_from_events(path: Path) -> tuple[list[dict], list[dict]]:
    """Train and epoch records rebuilt from TensorBoard scalars (tensorboard's reader, not ours)."""
    if not any(path.glob("events.out.tfevents.*")):
        return [], []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))

    def series(tag: str) -> dict[int, float]:
        return {e.step: e.value for e in acc.Scalars(tag)} if tag in tags else {}

    loss, lr = series("train/loss"), series("train/lr")
    train = [{"kind": "train", "step": s, "loss": v, "lr": lr.get(s)} for s, v in sorted(loss.items())]
    val = {tag[4:]: series(tag) for tag in tags if tag.startswith("val/")}  # acc, loss, acc_batch_stats, ...
    train_loss, train_acc = series("epoch/train_loss"), series("epoch/train_acc")
    epochs, best = [], -1.0
    for i, step in enumerate(sorted(val.get("acc", {})), start=1):
        best = max(best, val["acc"][step])
        record = {"kind": "epoch", "epoch": i, "step": step, "train_loss": train_loss.get(step),
                  "train_acc": train_acc.get(step), "best_val_acc": best}
        record.update({f"val_{name}": values.get(step) for name, values in val.items()})
        epochs.append(record)
    return train, epochs


# --- cells and their labels -----------------------------------------------------------------------


def make_cells(runs: list[RunData]) -> tuple[list[Cell], list[str]]:
    """Group runs that differ only by seed into cells, label them by the settings that differ
    between cells (``label keys``), order them, and give each a colour and line style."""
    configs = [r.config or {"run": r.id} for r in runs]  # a run without config.yaml is a cell of its own
    cells = [Cell(sorted((runs[i] for i in c.members), key=lambda r: _value_order(r.config.get(SEED_KEY))), c.settings)
             for c in seed_cells(configs)]
    keys = differing_settings(cells)
    keys.sort(key=lambda k: (k != "norm.kind", k))
    cells.sort(key=lambda c: (tuple(_value_order(c.settings.get(k)) for k in keys if k != "norm.kind"),
                              _norm_rank(c.norm)))
    names = short_names(keys)
    for cell in cells:
        parts = [f"{names[k]}={_value_text(cell.settings.get(k))}" for k in keys]
        cell.label = " ".join(parts or [f"norm={cell.norm}"]) + (f" (n={cell.n})" if cell.n > 1 else "")
        for run in cell.runs:
            run.label = cell.label
    by_colour: dict[str, int] = {}
    norms = {c.norm for c in cells}
    for i, cell in enumerate(cells):
        by_norm = len(norms) > 1 or len(cells) == 1
        base = NORM_COLORS.get(cell.norm, PALETTE[2]) if by_norm else PALETTE[i % len(PALETTE)]
        k = by_colour[base] = by_colour.get(base, -1) + 1
        cell.color = _shade(base, SHADES[(k // len(LINESTYLES)) % len(SHADES)])
        cell.style = LINESTYLES[k % len(LINESTYLES)]
    return cells, keys


def short_names(keys: list[str]) -> dict[str, str]:
    """``optimizer.lr`` -> ``lr``, ``norm.kind`` -> ``norm``; the full key where two would clash."""
    short = {k: SHORT_KEYS.get(k, k.rsplit(".", 1)[-1]) for k in keys}
    clashes = {s for s in short.values() if list(short.values()).count(s) > 1}
    return {k: (k if s in clashes else s) for k, s in short.items()}


def _value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _value_order(value: Any) -> tuple:
    """Unset (None: e.g. no ghost batches) first, numbers in numeric order (16 < 64 < 256), then the rest as text."""
    if value is None:
        return (0, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value, "")
    return (2, 0, str(value))


def _norm_rank(norm: str) -> int:
    return NORM_ORDER.index(norm) if norm in NORM_ORDER else len(NORM_ORDER)


def _shade(color: str, amount: float) -> str:
    """``color`` blended toward black (amount < 0) or white (amount > 0)."""
    from matplotlib.colors import to_hex, to_rgb

    target = 1.0 if amount > 0 else 0.0
    return to_hex([c + (target - c) * abs(amount) for c in to_rgb(color)])


def legend_text(label: str) -> str:
    return label if len(label) <= MAX_LABEL_CHARS else label[:MAX_LABEL_CHARS - 1] + "…"


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


def _draw(ax, series: Band, cell: Cell, markers: bool = False, **extra: Any) -> None:
    if not series.x:
        return
    few = markers or len(series.x) <= 25
    ax.plot(series.x, series.mean, marker="o" if few else None, markersize=3.5, **cell.line(**extra))
    if series.banded:
        lo = [m - s for m, s in zip(series.mean, series.std)]
        hi = [m + s for m, s in zip(series.mean, series.std)]
        ax.fill_between(series.x, lo, hi, color=cell.color, alpha=0.18, linewidth=0)


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
    """Validation accuracy and loss per epoch, training loss per step; mean ± std over seeds."""
    fig, axes = _cells_figure("curves", cells, 1, 3)
    (ax_acc, ax_loss, ax_train) = axes[0]
    for ax, key, title in ((ax_acc, "val_acc", "validation accuracy"), (ax_loss, "val_loss", "validation loss")):
        xs: list[float] = []
        for cell in cells:
            series = epoch_series(cell, key)
            _draw(ax, series, cell)
            xs += series.x
        ax.set_title(title)
        ax.set_xlabel("epoch")
        _integer_axis(ax, xs)
        ax.grid(alpha=0.3)
        if not xs:
            _empty(ax, "no epoch records")
    steps: list[float] = []
    smoothed = 1
    for cell in cells:
        series = aggregate([{t["step"]: t["loss"] for t in r.train if isinstance(t.get("loss"), (int, float))}
                            for r in cell.runs])
        if not series.x:
            continue
        window = max(1, len(series.x) // 60)
        smoothed = max(smoothed, window)
        mean, std = _moving_average(series.mean, window), _moving_average(series.std, window)
        ax_train.plot(series.x, mean, **cell.line())
        if series.banded:  # a log axis: the band's lower edge is kept above zero
            ax_train.fill_between(series.x, [max(m - s, m * 1e-3) for m, s in zip(mean, std)],
                                  [m + s for m, s in zip(mean, std)], color=cell.color, alpha=0.18, linewidth=0)
        steps += series.x
    ax_train.set_title("training loss" + (f" (moving average of {smoothed} logged windows)" if smoothed > 1 else ""))
    ax_train.set_xlabel("step")
    _integer_axis(ax_train, steps)
    ax_train.grid(alpha=0.3)
    if steps:
        ax_train.set_yscale("log")
    else:
        _empty(ax_train, "no training records")
    _cells_legend(fig, cells)
    return _save(fig, path)


def _moving_average(values, window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (the first points average what exists so far)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _sites(records: list[dict]) -> list[str]:
    names = {r["site"] for r in records if "site" in r}
    return sorted(names, key=lambda s: (len(s), s))  # norm2 before norm10


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
    _cells_legend(fig, shown, linewidth=1.4, alpha=0.95)
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
    _cells_legend(fig, with_params, linewidth=6, alpha=0.55)
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
        for cell in cells:
            series = epoch_series(cell, key, minus="val_acc")
            _draw(ax, series, cell)
            xs += series.x
        ax.axhline(0.0, color="#555555", linewidth=0.8)
        ax.set_title(f"val accuracy: {title}", fontsize="medium")
        ax.set_xlabel("epoch")
        ax.set_ylabel("Δ validation accuracy")
        _integer_axis(ax, xs)
        ax.grid(alpha=0.3)
        if not xs:
            _empty(ax, "not recorded (recalibrate_batches=0?)" if key == "val_acc_recalibrated" else "not recorded")
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
        for cell in cells:
            last = _sites(cell.runs[0].grads)[-1]
            sites.add(last)
            series = aggregate([{g["step"]: g[key] for g in r.grads if g.get("site") == last
                                 and isinstance(g.get(key), (int, float)) and g[key] > 0} for r in cell.runs])
            if series.x:
                ax.plot(series.x, series.mean, **cell.line())
                if series.banded:
                    ax.fill_between(series.x, [max(m - s, m * 1e-3) for m, s in zip(series.mean, series.std)],
                                    [m + s for m, s in zip(series.mean, series.std)], color=cell.color, alpha=0.18,
                                    linewidth=0)
                steps += series.x
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("step")
        _integer_axis(ax, steps)
        ax.grid(alpha=0.3)
        if steps:
            ax.set_yscale(scale)
        else:
            _empty(ax, "not recorded")
    where = sorted(sites)[0] if len(sites) == 1 else "the last norm site"
    fig.suptitle(f"the layer before {where}", fontsize="medium")
    _cells_legend(fig, cells)
    return _save(fig, path)


@dataclass
class BatchLine:
    """Cells that differ only in batch size, as one line of the batch-size figure."""

    label: str
    cells: list[Cell]


def batch_lines(cells: list[Cell], keys: list[str]) -> list[BatchLine]:
    others = [k for k in keys if k != "batch_size"]
    names = short_names(others)
    lines: dict[tuple, BatchLine] = {}
    for cell in cells:
        key = tuple(repr(cell.settings.get(k)) for k in others)
        label = " ".join(f"{names[k]}={_value_text(cell.settings.get(k))}" for k in others) or f"norm={cell.norm}"
        lines.setdefault(key, BatchLine(label, [])).cells.append(cell)
    for line in lines.values():
        line.cells.sort(key=lambda c: _value_order(c.settings.get("batch_size")))
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
        style = {**line.cells[0].line(), "label": labels[j], "marker": "o", "markersize": 4}
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


def _fmt(value: Any) -> str:
    """Report tables: vocab's number format, an em dash for missing or non-finite values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return fmt_number(value)


def _fmt_summary(summary: Optional[Summary]) -> str:
    if summary is None:
        return "—"
    return f"{fmt_mean_std(summary.mean, summary.std, summary.n)} ({summary.n})"


def _delta(value: Optional[float]) -> str:
    if value is None:
        return "—"
    return "0 (identical)" if value == 0 else f"{value:.1e}"


def _epochs_to(run: RunData, target: float) -> Optional[int]:
    for e in run.epochs:
        if (e.get("val_acc") or 0) >= target:
            return e["epoch"]
    return None


def _final(run: RunData, key: str) -> Any:
    if key in run.metrics:
        return run.metrics[key]
    return run.epochs[-1].get(key) if run.epochs else None


def metrics_table(runs: list[RunData], target: Optional[float]) -> list[dict[str, str]]:
    """One row per run: identity, its label and final metrics, all as strings."""
    rows = []
    for run in runs:
        best, best_epoch = _final(run, "best_val_acc"), _final(run, "best_epoch")
        first = run.epochs[0].get("val_acc") if run.epochs else None
        reached = _epochs_to(run, target) if target is not None else None
        rows.append({
            "run": run.id,
            "model": str(run.config.get("model.name", run.summary.get("model", "?"))),
            "norm": run.norm,
            "dataset": str(run.config.get("dataset.name", run.summary.get("dataset", "?"))),
            "label": run.label,
            "seed": str(run.config.get(SEED_KEY, run.summary.get("seed", "—"))),
            "status": str(run.summary.get("status", "?")),
            "epochs / steps": f"{_final(run, 'epoch') or len(run.epochs)} / {_final(run, 'step') or '—'}",
            "val acc @1": _fmt(first),
            "epochs to target": "—" if reached is None else str(reached),
            "final val acc": _fmt(_final(run, "val_acc")),
            "best val acc (epoch)": f"{_fmt(best)} ({best_epoch})" if best is not None else "—",
            "final val loss": _fmt(_final(run, "val_loss")),
            "train loss / acc": f"{_fmt(_final(run, 'train_loss'))} / {_fmt(_final(run, 'train_acc'))}",
            "time": f"{run.summary['duration_s']:.0f} s" if run.summary.get("duration_s") else "—",
        })
    return rows


def labels_table(cells: list[Cell], keys: list[str]) -> list[dict[str, str]]:
    """What each legend label stands for: the full settings that set its cell apart, its seeds, its runs."""
    return [{"label": c.label,
             "settings": ", ".join(f"`{k}={c.settings.get(k)}`" for k in keys) or "—",
             "seeds": ", ".join(str(s) for s in c.seeds),
             "runs": ", ".join(f"`{r.id}`" for r in c.runs)} for c in cells]


def seed_table(cells: list[Cell]) -> list[dict[str, str]]:
    """Final metrics per cell as mean ± std (n) over its seeds."""
    columns = (("final val acc", "val_acc"), ("best val acc", "best_val_acc"), ("final val loss", "val_loss"),
               ("final train loss", "train_loss"))
    return [{"label": c.label, **{name: _fmt_summary(c.final(key)) for name, key in columns}} for c in cells]


def welch_table(cells: list[Cell], keys: list[str], metric: str = "val_acc") -> list[dict[str, str]]:
    """Pairs of cells whose settings differ in exactly one key: is the difference of their final
    ``metric`` larger than seed noise (Welch's t-test)?"""
    rows = []
    for i, a in enumerate(cells):
        for b in cells[i + 1:]:
            differ = [k for k in keys if repr(a.settings.get(k)) != repr(b.settings.get(k))]
            if len(differ) != 1:
                continue
            sa, sb = a.final(metric), b.final(metric)
            if sa is None or sb is None:
                continue
            test = welch(sa, sb)
            rows.append({"A": a.label, "B": b.label, "differs in": f"`{differ[0]}`",
                         f"{metric} A": _fmt_summary(sa), f"{metric} B": _fmt_summary(sb),
                         "B − A": f"{sb.mean - sa.mean:+.4f}",
                         "verdict": test.verdict() if test else "needs ≥ 2 seeds on both sides"})
    return rows


def gap_table(cells: list[Cell]) -> list[dict[str, str]]:
    """Final validation accuracy with running, batch and recalibrated statistics, and the
    recalibration's effect run by run (paired: the same network scored both ways)."""
    rows = []
    for c in cells:
        deltas = [_final(r, "val_acc_recalibrated") - _final(r, "val_acc") for r in c.runs
                  if _final(r, "val_acc_recalibrated") is not None and _final(r, "val_acc") is not None]
        effect = summarize(deltas)
        better = sum(d > 0 for d in deltas)
        rows.append({"label": c.label, "running statistics": _fmt_summary(c.final("val_acc")),
                     "batch statistics": _fmt_summary(c.final("val_acc_batch_stats")),
                     "recalibrated": _fmt_summary(c.final("val_acc_recalibrated")),
                     "recalibrated − running": "—" if effect is None else
                     f"{effect.mean:+.4f} ± {effect.std:.4f}" if effect.n > 1 else f"{effect.mean:+.4f}",
                     "runs improved": f"{better} of {len(deltas)}" if deltas else "—"})
    return rows


def agreement(runs: list[RunData]) -> list[dict[str, str]]:
    """For each custom/builtin pair with otherwise equal settings: how far apart their curves are."""
    def key_of(run: RunData) -> tuple:
        return tuple(sorted((k, repr(v)) for k, v in run.config.items()
                            if not k.startswith("norm.") and not is_plumbing(k)))

    rows = []
    by_key: dict[tuple, dict[str, RunData]] = {}
    for run in runs:
        by_key.setdefault(key_of(run), {}).setdefault(run.norm, run)
    for pair in by_key.values():
        if "custom" not in pair or "builtin" not in pair:
            continue
        c, b = pair["custom"], pair["builtin"]
        acc_c = {e["epoch"]: e.get("val_acc") for e in c.epochs}
        acc_b = {e["epoch"]: e.get("val_acc") for e in b.epochs}
        common = [e for e in acc_c if e in acc_b and acc_c[e] is not None and acc_b[e] is not None]
        loss_c = {t["step"]: t.get("loss") for t in c.train}
        loss_b = {t["step"]: t.get("loss") for t in b.train}
        steps = [s for s in loss_c if s in loss_b and loss_c[s] is not None and loss_b[s] is not None]
        deltas = [abs(acc_c[e] - acc_b[e]) for e in sorted(common)]
        max_acc = max(deltas, default=None)
        agree = next((i for i, d in enumerate(deltas) if d > AGREE_ACC), len(deltas))
        max_loss = max((abs(loss_c[s] - loss_b[s]) for s in steps), default=None)
        fa, fb = _final(c, "val_acc"), _final(b, "val_acc")
        la, lb = _final(c, "val_loss"), _final(b, "val_loss")
        rows.append({
            "custom run": c.id, "builtin run": b.id,
            "final val acc (custom / builtin)": f"{_fmt(fa)} / {_fmt(fb)}",
            "final val loss (custom / builtin)": f"{_fmt(la)} / {_fmt(lb)}",
            f"epochs agreeing (Δ val acc ≤ {AGREE_ACC})": f"{agree} of {len(deltas)}" if deltas else "—",
            "max abs Δ val acc over epochs": _delta(max_acc),
            "max abs Δ logged train loss": _delta(max_loss),
        })
    return rows


def _markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(row[h]).replace("|", "\\|") for h in head) + " |")
    return "\n".join(lines)


# --- the report -----------------------------------------------------------------------------------


def default_out_dir(targets: list[str], root: Optional[Path] = None) -> Path:
    """``<dir>/report`` for a single target (a sweep, run or any directory, or the id of a sweep or
    run); for several, ``<output_dir>/reports/<timestamp>``."""
    base = Path(root) if root is not None else default_root()
    if len(targets) == 1:
        (_, folder), = resolve_all(targets, base, allow_plain_dirs=True)
        return folder / "report"
    return base / "reports" / time.strftime("%Y%m%d-%H%M%S")


def check_out_dir(out_dir: Path) -> None:
    """A default report folder must stay inside the folder it reports on: a planted ``report``
    symlink pointing elsewhere is refused, not written through."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.resolve().is_relative_to(out_dir.parent.resolve())):
        raise BnexpError(f"{out_dir} is a symlink to {out_dir.resolve()}, outside {out_dir.parent}; refusing to "
                         "write through it (remove it, or choose a folder with --out)")


def build_report(run_dirs: list[Path], out_dir: Path, title: Optional[str] = None,
                 sources: Optional[list[str]] = None, skipped: Optional[list[str]] = None,
                 html: bool = False) -> dict[str, Path]:
    """Write the figures and ``report.md`` (and with ``html`` the self-contained ``report.html``)
    into ``out_dir``; returns ``{name: path}``. Runs whose record cannot be read are left out, each
    with its reason appended to ``skipped``."""
    runs = []
    for path in run_dirs:
        try:
            runs.append(load_run(path))
        except UnreadableFile as exc:
            if skipped is None:
                raise
            skipped.append(str(exc))
    if not runs:
        raise BnexpError("none of the runs could be read: " + "; ".join(skipped or []))
    cells, keys = make_cells(runs)
    runs = [r for c in cells for r in c.runs]
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BnexpError(f"cannot create the report directory {out_dir}: {exc.strerror}") from exc
    written = {
        "curves": plot_curves(cells, out_dir / "curves.png"),
        "activations": plot_activations(cells, out_dir / "activations.png"),
        "norm_params": plot_norm_params(cells, out_dir / "norm_params.png"),
    }
    with_gap = gap_cells(cells)
    if with_gap:
        written["bn_gap"] = plot_bn_gap(with_gap, out_dir / "bn_gap.png")
    with_grads = [c for c in cells if c.runs[0].grads]
    if with_grads:
        written["gradients"] = plot_gradients(with_grads, out_dir / "gradients.png")
    if "batch_size" in keys:
        written["batch_size"] = plot_batch_size(cells, keys, out_dir / "batch_size.png")
    report = out_dir / "report.md"
    write_atomic(report, render_markdown(runs, cells, keys, out_dir, written, title, sources))
    if html:
        from bnexp.views.html_report import render_html

        tables = [("Final metrics per configuration: mean ± std (n) over its seeds", seed_table(cells)),
                  ("Configurations differing in one setting: is the difference larger than seed noise? "
                   "(Welch's t-test on the final val_acc)", welch_table(cells, keys))]
        page = render_html(cells, keys, written, title or "bnexp report", tables, CAPTIONS)
        written["html"] = out_dir / "report.html"
        write_atomic(written["html"], page)
    written["report"] = report
    return written


def _rel(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive on Windows
        return str(path)


CAPTIONS = {
    "curves": ("Training curves", "Validation accuracy and loss after each epoch, and training loss per logged "
               "window; one line per cell (runs that differ only by seed), the mean over its seeds with a band of "
               "±1 standard deviation. When the norm varies, colour = norm (grey none, orange custom, blue builtin; "
               "builtin drawn wide and pale under custom, so equal curves show as one line with a halo)."),
    "activations": ("Activation distribution over training", "Top: the 15th, 50th and 85th percentiles of unit 0 "
                    "of the last norm site's output (the input of its activation, e.g. the sigmoid), recorded every "
                    "`hist_every_steps` steps — without BN vs with BN, as in Ioffe & Szegedy (2015) Figure 1(b, c); "
                    "one run per cell (the first seed). Bottom: the same percentiles over all units of every norm "
                    "site."),
    "norm_params": ("BN parameters at the end", "Distribution of gamma (scale) and beta (shift) over the "
                    "units/channels of each norm site, for the first run of each cell; norm=none runs have none."),
    "bn_gap": ("Train/eval gap and recalibration", "Validation accuracy with batch statistics (BN in training "
               "mode: each evaluation batch of `eval_batch_size` normalized by its own mean and variance) and with "
               "recalibrated running statistics (re-estimated as a plain average over `recalibrate_batches` "
               "training batches, \"precise BN\"), each minus the accuracy with the running statistics training "
               "left behind (what `val_acc` and deployment use); above zero, the running estimate costs accuracy."),
    "gradients": ("Gradients and effective learning rate", "Recorded every `hist_every_steps` steps for the "
                  "conv/linear weight W before the last norm site: lr/‖W‖² (BN makes the layer's output "
                  "independent of the scale of W, so this is its effective step size: van Laarhoven 2017, Hoffer "
                  "et al. 2018), ‖∂L/∂W‖ (both on log scales) and ‖W‖; mean over seeds with ±1 std band. Every "
                  "site's values are in metrics.jsonl (`kind: grad`) and TensorBoard (`effective_lr/<site>`, "
                  "`grad_norm/<site>`, ...)."),
    "batch_size": ("Batch size", "Final validation accuracy, and the gap between validation with batch and with "
                   "running statistics, against the batch size (log scale): mean ± std over seeds per setting."),
}


def render_markdown(runs: list[RunData], cells: list[Cell], keys: list[str], out_dir: Path,
                    figures: dict[str, Path], title: Optional[str], sources: Optional[list[str]]) -> str:
    best = [r for r in (_final(run, "best_val_acc") for run in runs) if isinstance(r, (int, float))]
    target = CONVERGED_FRACTION * max(best) if best else None
    first = runs[0]
    common = {k: first.config.get(k) for k in ("model.name", "norm.kind", "dataset.name", "optimizer.name",
                                               "optimizer.lr", "batch_size", "epochs", "max_steps")
              if k in first.config and k not in keys}
    lines = [f"# {title or 'bnexp report'}", ""]
    lines.append(f"{len(runs)} run(s) in {len(cells)} cell(s)"
                 + (f" from {', '.join(f'`{s}`' for s in sources)}" if sources else "")
                 + f", written {time.strftime('%Y-%m-%d %H:%M')}.")
    if common:
        lines += ["", "Shared settings: " + ", ".join(f"`{k}={v}`" for k, v in common.items()) + "."]
    if keys:
        lines += ["", "Settings that differ between cells: " + ", ".join(f"`{k}`" for k in keys) + "."]
    descriptions = sorted({str(r.config.get("description") or "").strip() for r in runs} - {""})
    if len(descriptions) == 1:
        lines += ["", f"> {descriptions[0]}"]
    lines += ["", "## Labels", "", "A *cell* is the runs that differ only by `seed`; figures draw one line per cell "
              "(mean over seeds, ±1 std band) and name it by the settings that differ between cells.", "",
              _markdown_table(labels_table(cells, keys))]
    lines += ["", "## Final metrics", "", _markdown_table(metrics_table(runs, target))]
    if target is not None:
        lines += ["", f"*epochs to target*: first epoch whose validation accuracy reached {target:.4f} "
                      f"({CONVERGED_FRACTION:.0%} of the best validation accuracy among these runs); "
                      "fewer means faster convergence. *val acc @1*: after the first epoch."]
    lines += ["", "## Seed statistics", ""]
    if any(c.n > 1 for c in cells):
        lines += ["Final metrics per cell: mean ± sample standard deviation (number of seeds).", "",
                  _markdown_table(seed_table(cells))]
        compared = welch_table(cells, keys)
        if compared:
            lines += ["", "Cells that differ in one setting, compared by Welch's t-test on the final validation "
                      "accuracy (two-sided, unequal variances; *larger than seed noise* at p < 0.05):", "",
                      _markdown_table(compared)]
    else:
        lines.append("Each configuration ran with one seed, so differences cannot be told from seed noise; "
                     "repeat the runs with more seeds (e.g. `bnexp sweep ... seed=0,1,2`).")
    with_gap = gap_cells(cells)
    if with_gap:
        lines += ["", "## Train/eval gap and recalibration", "",
                  "Final validation accuracy of the BN runs scored with the running statistics training left "
                  "(`val_acc`), with each evaluation batch's own statistics (`val_acc_batch_stats`) and with "
                  "running statistics recomputed over `recalibrate_batches` training batches "
                  "(`val_acc_recalibrated`); *recalibrated − running* is taken run by run.", "",
                  _markdown_table(gap_table(with_gap))]
    pairs = agreement(runs)
    if pairs:
        lines += ["", "## Custom vs builtin batch norm", "",
                  "Pairs of runs whose settings differ only in the norm implementation. *Epochs agreeing*: "
                  "leading epochs before the first one where their validation accuracies differ by more than "
                  f"{AGREE_ACC}; float rounding differences grow over long runs, so curves can part late.", "",
                  _markdown_table(pairs)]
    for name, path in figures.items():
        heading, caption = CAPTIONS[name]
        lines += ["", f"## {heading}", "", f"![{name}]({_rel(path, out_dir)})", "", caption]
    lines += ["", "## Runs", ""]
    for run in runs:
        overrides = " ".join(run.overrides) or "(none)"
        lines.append(f"- `{run.id}` ({run.label}): [{_rel(run.path, out_dir)}]({_rel(run.path, out_dir)}); "
                     f"overrides: `{overrides}`")
    return "\n".join(lines) + "\n"
