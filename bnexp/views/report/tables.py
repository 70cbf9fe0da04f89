"""The report's tables (final metrics, labels, seed statistics, Welch tests, train/eval gap, custom vs builtin agreement) as Markdown rows."""

from __future__ import annotations

import math
from typing import Any, Optional

from bnexp.core.vocab import fmt_mean_std, fmt_number, is_plumbing
from bnexp.views.report.cells import Cell
from bnexp.views.report.load import RunData, _final
from bnexp.views.stats import SEED_KEY, Summary, summarize, welch

# custom and builtin "agree" at an epoch when their validation accuracies differ by at most this
AGREE_ACC = 0.001


# Share of the best validation accuracy among the runs that counts as "converged" in the table.
CONVERGED_FRACTION = 0.98


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
