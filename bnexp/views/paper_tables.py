"""Tables for papers and spreadsheets: runs grouped by any keys with their spread, written as CSV
or LaTeX (``booktabs``). Torch-free; ``runs --group-by`` and ``compare --export`` use it."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from bnexp.core.vocab import fmt_mean_std
from bnexp.store.catalog import natural_key

EXPORT_FORMATS = ("csv", "latex")


@dataclass
class Spread:
    """n, mean, sample standard deviation, min and max of one metric over a group of runs."""

    n: int
    mean: float
    std: float
    low: float
    high: float


def spread(values: Sequence[Any]) -> Optional[Spread]:
    xs = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return Spread(len(xs), mean, std, min(xs), max(xs))


@dataclass
class Group:
    values: tuple  # the group's value of each key (None: the runs lack the key)
    runs: int
    metrics: dict[str, Optional[Spread]]


def group_runs(rows: Sequence[dict[str, Any]], keys: Sequence[str], metrics: Sequence[str]) -> list[Group]:
    """One group per distinct combination of ``keys`` values in ``rows`` (flat dicts of a run's
    record and config), in natural order of the values."""
    members: dict[tuple, list[dict]] = {}
    for row in rows:
        members.setdefault(tuple(row.get(k) for k in keys), []).append(row)

    def order(values: tuple) -> list:
        return [(v is None, natural_key(str(v))) for v in values]

    return [Group(values, len(group), {m: spread([r.get(m) for r in group]) for m in metrics})
            for values, group in sorted(members.items(), key=lambda item: order(item[0]))]


def to_csv(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buffer.getvalue()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: Any) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(headers: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Sequence[bool],
             caption: Optional[str] = None, raw: bool = False) -> str:
    """A ``booktabs`` table (``\\usepackage{booktabs}``): text columns left, numbers right. Cells are
    escaped unless ``raw`` (cells that already are LaTeX, such as ``0.91 $\\pm$ 0.01``)."""
    cell = (lambda v: str(v)) if raw else latex_escape
    spec = "".join("r" if n else "l" for n in numeric)
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(latex_escape(h) for h in headers) + r" \\",
              r"\midrule", *(" & ".join(cell(v) for v in row) + r" \\" for row in rows), r"\bottomrule",
              r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _numbers(s: Optional[Spread]) -> tuple:
    """Full precision, less float noise: 0.89, not 0.8900000000000001."""
    return (s.n, *(float(f"{x:.12g}") for x in (s.mean, s.std, s.low, s.high))) if s else (None,) * 5


def spread_cells(s: Optional[Spread], latex: bool = False) -> tuple[str, str, str]:
    """``mean ± std``, min, max as printed ("-" each when the group lacks the metric)."""
    from bnexp.core.vocab import fmt_number

    return (fmt_mean_std(s.mean, s.std, s.n, latex), fmt_number(s.low), fmt_number(s.high)) if s else ("-", "-", "-")


def group_table(groups: list[Group], keys: Sequence[str], metrics: Sequence[str], fmt: str) -> str:
    """Grouped runs as CSV (separate mean/std/min/max columns, full precision) or LaTeX."""
    if fmt == "csv":
        headers = [*keys, "runs", *[f"{m}_{s}" for m in metrics for s in ("n", "mean", "std", "min", "max")]]
        rows = [[*g.values, g.runs, *[x for m in metrics for x in _numbers(g.metrics[m])]] for g in groups]
        return to_csv(headers, rows)
    headers = [*keys, "n", *[h for m in metrics for h in (f"{m} (mean ± std)", "min", "max")]]
    rows = [[*(latex_escape("-" if v is None else v) for v in g.values), str(g.runs),
             *[x for m in metrics for x in spread_cells(g.metrics[m], latex=True)]]
            for g in groups]
    return to_latex(headers, rows, numeric=[False] * len(keys) + [True] * (1 + 3 * len(metrics)), raw=True,
                    caption=f"Runs grouped by {', '.join(keys)}: mean ± std (sample), min and max.")
