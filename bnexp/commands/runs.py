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
    where_option,
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
    from bnexp.core.vocab import fmt_number, fmt_seconds, norm_label
    from bnexp.store.registry import key_overrides, tags_of
    from bnexp.views.terminal import Column, FittedTable

    tagged = any(tags_of(r) for r in records)
    columns = [Column("id"), Column("started", priority=5), Column("model/norm/data", priority=2),
               *([Column("tags", priority=3, wrap=True)] if tagged else []),
               Column("overrides", priority=4, wrap=True), Column("status"), Column("best acc", "right"),
               Column("time", "right", priority=1)]
    rows = []
    for r in records:
        rows.append([r.id, _started(r), f"{r.model}/{norm_label(r.norm, r.overrides)}/{r.dataset}",
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
    where: Optional[str] = where_option(),
    group_by: Optional[str] = typer.Option(None, "--group-by", "-g", help="One row per distinct value of these "
                                           "comma-separated keys (record or config: norm.kind,model.name) with "
                                           "n, mean ± std, min and max of each --metric."),
    metric: Optional[List[str]] = typer.Option(None, "--metric", help="Metric summarized by --group-by "
                                               "(repeatable; default best_val_acc and val_loss)."),
    export: Optional[str] = typer.Option(None, "--export", help="With --group-by: print the table as csv or "
                                         "latex (booktabs) instead."),
    as_json: bool = typer.Option(False, "--json", help="Print the runs' records (with tags and note) as a JSON list."),
    watch: bool = typer.Option(False, "--watch", help="Follow the runs and sweeps being trained instead: a live "
                               "table (progress, ETA, last metrics, stalled/dead), as bnexp watch."),
    wide: bool = wide_option(),
    output_dir: Optional[str] = output_dir_option(),
) -> None:
    """List runs as a table (newest first), with filters; --json for scripts. On a narrow terminal
    less important columns give way (--wide shows them all)."""
    import sys

    from bnexp.core.query import compile_query
    from bnexp.store.listing import Listing
    from bnexp.store.registry import (
        check_choices,
        check_root,
        check_statuses,
        filter_runs,
        parse_since,
        sort_runs,
        where_filter,
    )
    from bnexp.views.paper_tables import EXPORT_FORMATS

    if watch:
        from bnexp.commands.watch import DEFAULT_INTERVAL_S, watch_options

        if any([status, model, norm, dataset, experiment, name, tag, sweep, since, where, group_by, metric, export,
                as_json, limit is not None]):
            raise BnexpError("--watch follows every run and sweep being trained and takes no filter; "
                             "follow some with: bnexp watch RUN|SWEEP ...")
        return watch_options([], DEFAULT_INTERVAL_S, None, None, output_dir)
    check_statuses(status or [])
    if limit is not None and limit < 0:
        raise BnexpError(f"--limit {limit}: must be >= 0")
    if export is not None and export not in EXPORT_FORMATS:
        raise BnexpError(f"--export {export}: valid formats are {', '.join(EXPORT_FORMATS)}")
    if (export or metric) and not group_by:
        raise BnexpError(f"{'--export' if export else '--metric'} goes with --group-by KEYS")
    if where:
        compile_query(where)  # a malformed query fails before anything is read
    root = output_root(output_dir)
    check_root(root, output_dir)
    cutoff = parse_since(since) if since else None
    filtered = any([status, model, norm, dataset, experiment, since, sweep, name, tag, where, group_by])
    with Listing(root) as listing:
        if filtered:
            found = listing.records(listing.runs)
            for option, values in (("model", model), ("norm", norm), ("dataset", dataset), ("experiment", experiment)):
                check_choices(option, values or [], found)
            records = sort_runs(where_filter(filter_runs(found, status=status or (), model=model or (), norm=norm or (),
                                                         sweep=sweep, since=cutoff, experiment=experiment or (),
                                                         dataset=dataset or (), name=name, tags=tag or ()), where),
                                sort, reverse)
            if group_by:
                return print_groups(records, group_by, metric or ["best_val_acc", "val_loss"], export, as_json, wide)
        else:  # sorted and paged from the index: only the runs shown are read in full
            found = records = sort_runs(listing.runs, sort, reverse)
        if limit is None and not as_json:
            limit = TABLE_ROWS
        shown = records[:limit] if limit else records
        if as_json and not filtered and not sys.stdout.isatty():
            typer.echo("[" + ", ".join(listing.json_texts(shown)) + "]")  # what print_json prints, pre-rendered
            return
        shown = shown if filtered else listing.records(shown)
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


def print_groups(records: list, group_by: str, metrics: list[str], export: Optional[str], as_json: bool,
                 wide: bool) -> None:
    """``runs --group-by``: one row per group, n and the spread of each metric."""
    import dataclasses

    from bnexp.core.vocab import METRICS
    from bnexp.store.registry import known_keys, run_values
    from bnexp.views.paper_tables import group_runs, group_table, spread_cells
    from bnexp.views.terminal import Column, FittedTable

    keys = [k.strip() for k in group_by.split(",") if k.strip()]
    if not keys:
        raise BnexpError(f"--group-by {group_by!r}: name one key or more, comma-separated (norm.kind,model.name)")
    for m in metrics:
        if m not in METRICS:
            raise BnexpError(f"--metric {m}: valid metrics are {', '.join(METRICS)}")
    rows = [run_values(r, keys) for r in records if r.status != "unreadable"]
    known = known_keys().union(*rows) if rows else known_keys()
    for key in keys:
        if rows and key not in known:
            import difflib

            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
            raise BnexpError(f"--group-by {key}: no run has this key" +
                             (f"; did you mean {', '.join(close)}?" if close else ""))
    groups = group_runs(rows, keys, metrics)
    if as_json:
        print_json([{"group": dict(zip(keys, g.values)), "runs": g.runs,
                     "metrics": {m: dataclasses.asdict(s) if s else None for m, s in g.metrics.items()}}
                    for g in groups])
        return
    if export:
        typer.echo(group_table(groups, keys, metrics, export), nl=False)
        return
    columns = [*[Column(k) for k in keys], Column("n", "right"),
               *[c for m in metrics for c in (Column(f"{m} mean ± std", "right"),
                                              Column("min" if len(metrics) == 1 else f"{m} min", "right", 3),
                                              Column("max" if len(metrics) == 1 else f"{m} max", "right", 3))]]
    table_rows = [[*("-" if v is None else str(v) for v in g.values), str(g.runs),
                   *[x for m in metrics for x in spread_cells(g.metrics[m])]]
                  for g in groups]
    show(FittedTable(columns, table_rows, wide=wide, hint="--wide shows every column",
                     title=f"{len(rows)} runs in {len(groups)} groups by {', '.join(keys)}"), wide)


def register(app: typer.Typer) -> None:
    add(app, "runs", runs)
