"""``bnexp runs``: the table of runs, with filters; ``--json`` for scripts.

It reads the small JSON records only (see :mod:`bnexp.store.registry`) and never imports torch; like
every command module, this one imports its helpers when a command runs (``--help`` stays instant).
"""

from __future__ import annotations

from typing import List, Optional

import typer

from bnexp.commands import add
from bnexp.commands._shared import (
    console,
    output_dir_option,
    output_root,
    print_json,
    problem,
    show,
    status_cell,
    wide_option,
)
from bnexp.core.errors import BnexpError


def _started(record) -> str:
    from bnexp.store.files import parse_time

    moment = parse_time(record.started)
    return moment.strftime("%m-%d %H:%M") if moment else "-"


def runs_table(records: list, title: str, wide: bool = False):
    """The ``bnexp runs`` table. On a narrow terminal the id, status and accuracy always stay; the
    start time (the id holds it too) gives way first, then the overrides (``show RUN`` has them
    all), tags, data and duration. Rendering, not reading, is what thousands of rows cost: cells
    are plain strings, laid out in one pass."""
    from bnexp.core.vocab import fmt_number, fmt_seconds
    from bnexp.store.registry import key_overrides, tags_of
    from bnexp.views.terminal import Column, FittedTable

    tagged = any(tags_of(r) for r in records)
    columns = [Column("id"), Column("started", priority=5), Column("model/norm/data", priority=2),
               *([Column("tags", priority=3, wrap=True)] if tagged else []),
               Column("overrides", priority=4, wrap=True), Column("status"), Column("best acc", "right"),
               Column("time", "right", priority=1)]
    rows = []
    for r in records:
        rows.append([r.id, _started(r), f"{r.model}/{r.norm}/{r.dataset}",
                     *([" ".join(tags_of(r))] if tagged else []), " ".join(key_overrides(r.overrides)),
                     status_cell(r.status), fmt_number(r.metric("best_val_acc")),
                     fmt_seconds(r.duration_s) if r.status != "unreadable" else "-"])
    return FittedTable(columns, rows, title=title, wide=wide,
                       hint="--wide shows every column; bnexp show RUN shows one run in full")


TABLE_ROWS = 100  # a table of thousands of runs helps nobody (and takes seconds to draw)


def runs(
    status: Optional[List[str]] = typer.Option(None, "--status", help="Only this status (repeatable): running, "
                                               "completed, failed, diverged, interrupted, dead, unreadable."),
    model: Optional[List[str]] = typer.Option(None, "--model", help="Only this model (repeatable)."),
    norm: Optional[List[str]] = typer.Option(None, "--norm", help="Only this norm (repeatable)."),
    dataset: Optional[List[str]] = typer.Option(None, "--dataset", help="Only this dataset, by name (digits, "
                                                "mnist, idx...) or by the path it was read from (repeatable)."),
    experiment: Optional[List[str]] = typer.Option(None, "--experiment", help="Only runs of this preset "
                                                   "(experiment=NAME; repeatable)."),
    name: Optional[str] = typer.Option(None, "--name", help="Only runs with this name= label (wildcards: 'lr-*')."),
    tag: Optional[List[str]] = typer.Option(None, "--tag", help="Only runs tagged with this (repeatable: every "
                                            "tag given). See bnexp tag."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Only jobs of sweeps whose id starts with this."),
    since: Optional[str] = typer.Option(None, "--since", help="Started since a date (2026-11-20), a time "
                                        "(2026-11-20T14:00) or an age (30m, 12h, 3d, 2w)."),
    sort: str = typer.Option("started", "--sort", help="started, duration, id, model, norm, status, "
                             "best_val_acc, val_acc, val_loss, train_acc, train_loss (natural order: newest, "
                             "longest, most accurate, lowest loss first)."),
    reverse: bool = typer.Option(False, "--reverse", "-r", help="Flip the sort order."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help=f"Show the first N after sorting (0: all; "
                                        f"default: all with --json, the first {TABLE_ROWS} in the table)."),
    as_json: bool = typer.Option(False, "--json", help="Print the runs' records (with tags and note) as a JSON list."),
    wide: bool = wide_option(),
    output_dir: Optional[str] = output_dir_option(),
) -> None:
    """List runs as a table (newest first), with filters; --json for scripts. On a narrow terminal
    less important columns give way (--wide shows them all)."""
    from bnexp.store.registry import check_choices, check_statuses, filter_runs, load_runs, parse_since, sort_runs

    check_statuses(status or [])
    if limit is not None and limit < 0:
        raise BnexpError(f"--limit {limit}: must be >= 0")
    root = output_root(output_dir)
    cutoff = parse_since(since) if since else None
    found = load_runs(root)
    for option, values in (("model", model), ("norm", norm), ("dataset", dataset), ("experiment", experiment)):
        check_choices(option, values or [], found)
    records = sort_runs(filter_runs(found, status=status or (), model=model or (), norm=norm or (), sweep=sweep,
                                    since=cutoff, experiment=experiment or (), dataset=dataset or (), name=name,
                                    tags=tag or ()), sort, reverse)
    if limit is None and not as_json:
        limit = TABLE_ROWS
    shown = records[:limit] if limit else records
    if as_json:
        print_json([r.as_dict() for r in shown])
        return
    more = f" (first {len(shown)}; --limit 0 shows all)" if len(shown) < len(records) else ""
    title = f"{len(records)} of {len(found)} runs in {root}{more}"
    if not shown:
        console().print(title + ("; bnexp train makes one" if not found else "; none matches these filters"))
        return
    show(runs_table(shown, title, wide), wide)
    for r in shown:
        if r.status in ("unreadable", "dead"):
            problem(r.status, r.id, r.message)


def register(app: typer.Typer) -> None:
    add(app, "runs", runs)
