"""Runs that differ only in their seed, grouped into cells: what sets them apart, their legend labels, colours and line styles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from bnexp.config.groups import NORMS
from bnexp.views.report.load import RunData, _final
from bnexp.views.stats import SEED_KEY, Summary, differing_settings, seed_cells, summarize

NORM_ORDER = tuple(NORMS)  # the norm registry (bnexp.config.groups) says how each norm is named and coloured


NORM_COLORS = {kind: spec.color for kind, spec in NORMS.items()}


NORM_TITLES = {kind: spec.title for kind, spec in NORMS.items()}


# Colours of the cells when all share one norm (matplotlib's tab10 without its grey)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")


LINESTYLES = ("-", "--", ":", "-.")


MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*", "<", ">")  # one per cell, in order: equal curves stay tellable


# Where a norm's cells start in LINESTYLES: custom dashed over builtin solid, so equal curves show both
NORM_STYLE_OFFSET = {"custom": 1}


# Keys a label prefers when several tell the same cells apart (the group choices, then the rest by name)
LABEL_PREFERENCE = ("norm.kind", "experiment", "model.name", "dataset.name", "optimizer.name")


SHADES = (0.0, -0.4, 0.45)  # the k-th group of 4 cells of one colour: as is, darker, lighter


MAX_LABEL_CHARS = 150  # longer labels are cut in the legend (report.md has them whole)


# Short names of config keys in labels (otherwise the part after the last dot)
SHORT_KEYS = {"norm.kind": "norm", "model.name": "model", "dataset.name": "dataset", "optimizer.name": "optimizer",
              "norm.ghost_batch_size": "ghost"}


@dataclass
class Cell:
    """Runs that differ only in their seed, drawn as one line: ``settings`` is what they share."""

    runs: list[RunData]
    settings: dict
    label: str = ""
    color: str = "#2ca02c"
    style: str = "-"
    marker: str = "o"

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
        """Matplotlib line properties. builtin is drawn wide and pale below a thin dashed custom line
        (``zorder``), each cell with its own marker, so two equal curves stay both visible."""
        width = {"builtin": 3.2, "custom": 1.3}.get(self.norm, 1.6)
        alpha = {"builtin": 0.55}.get(self.norm, 0.95)
        zorder = {"builtin": 2.0, "custom": 2.6}.get(self.norm, 2.3)
        return {"color": self.color, "linestyle": self.style, "linewidth": width, "alpha": alpha, "zorder": zorder,
                "marker": self.marker, "markersize": 4.5, "markerfacecolor": "none" if self.norm == "custom" else
                self.color, "label": legend_text(self.label), **extra}


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
    shown = label_keys(cells, keys)
    names = short_names(shown)
    for cell in cells:
        parts = [f"{names[k]}={_value_text(cell.settings.get(k))}" for k in shown]
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
        cell.style = LINESTYLES[(k + NORM_STYLE_OFFSET.get(cell.norm, 0)) % len(LINESTYLES)]
        cell.marker = MARKERS[i % len(MARKERS)]
    return cells, keys


def label_keys(cells: list, keys: list[str]) -> list[str]:
    """The fewest of ``keys`` that still tell every two cells apart, in ``keys``' order: a key whose
    values follow from keys already taken (``dataset.path`` beside ``dataset.name``, a preset's
    ``model.hidden_sizes`` beside ``experiment``) stays out of the labels (report.md lists them all).
    Keys are taken greedily, the group choices (:data:`LABEL_PREFERENCE`) first."""
    order = sorted(keys, key=lambda k: (LABEL_PREFERENCE.index(k) if k in LABEL_PREFERENCE
                                        else len(LABEL_PREFERENCE), keys.index(k)))
    chosen: list[str] = []

    def groups(taken: list[str]) -> int:
        return len({tuple(repr(c.settings.get(k)) for k in taken) for c in cells})

    for key in order:
        if groups(chosen + [key]) > groups(chosen):
            chosen.append(key)
    return [k for k in keys if k in chosen]


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
