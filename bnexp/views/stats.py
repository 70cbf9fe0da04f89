"""Seed statistics: is a difference between two configurations larger than seed noise?

Runs whose configs differ only in ``seed`` (plumbing keys aside) are repeats of one *cell*; a
cell's final metrics are summarized as mean, sample standard deviation and n, and two cells are
compared with Welch's t-test (unequal variances; scipy's Student-t distribution for the p-value).
Torch-free: ``compare`` and ``report`` both use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from bnexp.core.vocab import is_plumbing

SEED_KEY = "seed"
ALPHA = 0.05  # two-sided significance level of "larger than seed noise"


@dataclass
class SeedCell:
    """Runs that differ only in their seed: ``settings`` is what they share (non-plumbing keys)."""

    settings: dict[str, Any]
    members: list[int] = field(default_factory=list)  # indices into the runs given to seed_cells
    seeds: list[Any] = field(default_factory=list)


def cell_key(config: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in config.items() if k != SEED_KEY and not is_plumbing(k)))


def seed_cells(configs: Sequence[dict[str, Any]]) -> list[SeedCell]:
    """Group flattened configs into cells (first-seen order)."""
    cells: dict[tuple, SeedCell] = {}
    for i, config in enumerate(configs):
        key = cell_key(config)
        cell = cells.setdefault(key, SeedCell({k: v for k, v in config.items() if k != SEED_KEY and not is_plumbing(k)}))
        cell.members.append(i)
        cell.seeds.append(config.get(SEED_KEY))
    return list(cells.values())


def differing_settings(cells: Sequence[SeedCell]) -> list[str]:
    """The shared keys whose value differs between cells: what tells the cells apart."""
    keys = list(dict.fromkeys(k for c in cells for k in c.settings))
    return [k for k in keys if len({repr(c.settings.get(k)) for c in cells}) > 1]


@dataclass
class Summary:
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for a single run
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f} (n={self.n})" if self.n > 1 else f"{self.mean:.4f} (n=1)"


def summarize(values: Iterable[Optional[float]]) -> Optional[Summary]:
    xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
    return Summary(mean, math.sqrt(var), len(xs))


@dataclass
class Welch:
    """Welch's t-test of two cells' means: difference ``b - a``, t, degrees of freedom, two-sided p."""

    diff: float
    t: float
    df: float
    p: float

    @property
    def significant(self) -> bool:
        return self.p < ALPHA

    def verdict(self) -> str:
        if math.isnan(self.p):
            return "no spread to judge by (identical runs?)"
        words = "larger than seed noise" if self.significant else "within seed noise"
        return f"Δ {self.diff:+.4f}, p = {self.p:.3g} (Welch): {words}"


def welch(a: Summary, b: Summary) -> Optional[Welch]:
    """None when either side has fewer than two runs (no variance to compare against)."""
    if a.n < 2 or b.n < 2:
        return None
    va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
    diff = b.mean - a.mean
    if va + vb == 0:
        return Welch(diff, math.inf if diff else math.nan, math.nan, 0.0 if diff else math.nan)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    from scipy.special import stdtr  # Student-t CDF; scipy.special loads far faster than scipy.stats

    return Welch(diff, t, df, float(2 * stdtr(df, -abs(t))))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error rate
    without assuming independence): the i-th smallest p times (m - i + 1), kept monotone, at most
    1. NaN p-values (nothing to judge) stay NaN and do not count in m."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if p == p)
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted
