"""The table of a sweep's jobs, as ``bnexp sweep`` ends and ``bnexp show SWEEP`` prints it."""

from __future__ import annotations

from bnexp.core.vocab import STATUS_STYLE, fmt_number, fmt_seconds
from bnexp.store.registry import sort_runs
from bnexp.store.sweeps import job_number, swept_part


def sweep_table(sweep: dict, rows: list, metric: str, wide: bool = False):
    """The table of a sweep's jobs, best first by ``metric`` (the best completed one in bold);
    failed jobs last. It fits the terminal: the job number, status and accuracies stay, the
    swept values wrap between overrides, the time gives way first."""
    from bnexp.views.terminal import Column, FittedTable

    rows = sort_runs(rows, metric)
    best = next((r for r in rows if r.status == "completed"), None)
    columns = [Column("#", "right"), Column("overrides", wrap=True), Column("status"),
               Column("val acc", "right"), Column("best val acc", "right"), Column("time", "right", priority=2)]
    cells = []
    for row in rows:
        number = job_number(row)
        cells.append(["?" if number is None else str(number), " ".join(swept_part(row, sweep.get("swept", []))),
                      (row.status, STATUS_STYLE.get(row.status, "red")),
                      *[fmt_number(row.metric(k)) for k in ("val_acc", "best_val_acc")], fmt_seconds(row.duration_s)])
    return FittedTable(columns, cells, wide=wide, row_styles=["bold" if r is best else None for r in rows],
                       title=f"sweep {sweep.get('id')} ({sweep.get('kind', 'grid')}, {len(rows)} jobs, sorted by {metric})",
                       hint="bnexp show SWEEP --wide shows every column")
