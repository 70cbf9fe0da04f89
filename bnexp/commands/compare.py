"""``bnexp compare RUN... | SWEEP``: runs side by side, seed statistics, overlaid curves."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bnexp.commands import add
from bnexp.commands._shared import (
    console,
    examples,
    output_dir_option,
    output_root,
    problem,
    refs_argument,
    short_names,
    show,
    status_cell,
    wide_option,
)
from bnexp.core.errors import BnexpError

COMPARE_METRICS = ("best_val_acc", "best_epoch", "val_acc", "val_loss", "train_acc", "train_loss", "epoch", "step")
# Seed statistics: the final metrics summarized per cell, with the priority of their column.
SEED_METRICS = (("best_val_acc", 0), ("val_acc", 0), ("val_loss", 1), ("train_acc", 3), ("train_loss", 3),
                ("val_acc_batch_stats", 4), ("val_acc_recalibrated", 4))


def compare_data(run_dirs: list[Path]) -> tuple[list[dict], list[str], list[str]]:
    """Per run: id, dir, status, duration, flattened config and metrics; the keys that differ; the
    metrics present. A run whose files cannot be read is kept, with the reason as its status note."""
    from bnexp.store.files import UnreadableFile
    from bnexp.store.registry import differing_keys, load_record, run_config

    records = []
    for run_dir in run_dirs:
        record = load_record(run_dir)
        try:
            config, why = run_config(run_dir), None
        except UnreadableFile as exc:
            config, why = {}, str(exc)
        records.append({"id": record.id, "dir": str(run_dir), "status": record.status,
                        "duration_s": record.duration_s, "config": config, "metrics": record.metrics,
                        "problem": why or (record.message if record.status == "unreadable" else None)})
    keys = differing_keys([r["config"] for r in records if r["config"]])
    metrics = [m for m in COMPARE_METRICS if any(m in r["metrics"] for r in records)]
    return records, keys, metrics


def _best_index(values: list, metric: str) -> Optional[int]:
    from bnexp.core.vocab import METRICS, higher_is_better

    numbers = [(v, i) for i, v in enumerate(values) if isinstance(v, (int, float)) and v == v]
    if not numbers or metric not in METRICS:
        return None
    return (max(numbers) if higher_is_better(metric) else min(numbers))[1]


def compare_table(records: list[dict], keys: list[str], metrics: list[str], names: list[str], wide: bool):
    """Config keys that differ, status, final metrics (the best in bold) and time, a column per run;
    on a narrow terminal the runs continue in blocks below, the key column repeated."""
    from bnexp.core.vocab import fmt_number, fmt_seconds
    from bnexp.views.terminal import Column, FittedTable

    rows = [[(key, "bold"), *[str(r["config"].get(key, "-")) for r in records]] for key in keys]
    rows.append([("status", "bold"), *[status_cell(r["status"]) for r in records]])
    for m in metrics:
        values = [r["metrics"].get(m) for r in records]
        best = _best_index(values, m)
        rows.append([(m, "bold"), *[(fmt_number(v), "bold green" if i == best else None)
                                    for i, v in enumerate(values)]])
    rows.append([("time", "bold"), *[fmt_seconds(r["duration_s"]) for r in records]])
    return FittedTable([Column(""), *[Column(name, "right") for name in names]], rows, wide=wide, overflow="blocks",
                       title=f"{len(records)} runs: {len(keys)} config keys differ")


def mean_and_spread(summary) -> str:
    """``0.9100 ± 0.0100``: the spread printed to the mean's decimals; the mean alone for one seed."""
    from bnexp.core.vocab import fmt_number

    if summary is None:
        return "-"
    mean = fmt_number(summary.mean)
    if summary.n < 2:
        return mean
    decimals = len(mean.split(".")[1]) if "." in mean and "e" not in mean else None
    return f"{mean} ± {fmt_number(summary.std) if decimals is None else f'{summary.std:.{decimals}f}'}"


def seed_tables(records: list[dict], wide: bool) -> list:
    """When runs repeat configurations with different seeds: per configuration ("cell") the mean ±
    standard deviation of the final metrics over its seeds; for exactly two cells, a second table
    says per metric whether their difference exceeds seed noise (Welch's t-test). No tables when
    no configuration has two seeds."""
    from bnexp.core.vocab import fmt_number
    from bnexp.views.stats import ALPHA, differing_settings, seed_cells, summarize, welch
    from bnexp.views.terminal import Column, FittedTable

    readable = [r for r in records if r["config"]]
    cells = seed_cells([r["config"] for r in readable])
    if not any(len(c.members) > 1 for c in cells):
        return []
    differ = differing_settings(cells)
    metrics = [(m, p) for m, p in SEED_METRICS if any(m in r["metrics"] for r in readable)]
    summaries = [{m: summarize(readable[i]["metrics"].get(m) for i in c.members) for m, _ in metrics} for c in cells]
    labels = [" ".join(f"{k}={c.settings.get(k)}" for k in differ) or "(same config)" for c in cells]
    rows = [[label, str(len(c.members)), *[mean_and_spread(s[m]) for m, _ in metrics]]
            for label, c, s in zip(labels, cells, summaries)]
    tables = [FittedTable([Column("configuration", wrap=True), Column("seeds", "right"),
                           *[Column(m, "right", p) for m, p in metrics]], rows, wide=wide,
                          title=f"seed statistics: {len(cells)} configurations, mean ± std over their seeds")]
    if len(cells) == 2:
        tests = []
        for m, p in metrics:
            a, b = summaries[0][m], summaries[1][m]
            if a is None or b is None:  # a metric one configuration does not have (no BN, no batch stats)
                continue
            test = welch(a, b)
            if test is None:
                verdict, difference, p_text = "needs two seeds or more on both sides", "-", "-"
            else:
                verdict = (("larger than seed noise" if test.significant else "within seed noise")
                           if test.p == test.p else "no spread to judge by")
                difference = ("+" if test.diff >= 0 else "") + fmt_number(test.diff)
                p_text = fmt_number(test.p) if test.p == test.p else "-"
            tests.append([m, difference, p_text, verdict])
        tables.append(FittedTable([Column("metric"), Column("difference", "right"), Column("p", "right"),
                                   Column("verdict", wrap=True)], tests, wide=wide,
                                  title=f"{labels[1]} minus {labels[0]}: Welch's t-test "
                                        f"(p < {ALPHA}: larger than seed noise)"))
    return tables


def compare(
    refs: List[str] = refs_argument("Runs and/or sweeps (a sweep stands for all its jobs)."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV (one row per run) instead of a table."),
    curves: bool = typer.Option(False, "--curves", help="Add validation accuracy and loss by epoch, the runs "
                                "overlaid in one plot each."),
    wide: bool = wide_option(),
    output_dir: Optional[str] = output_dir_option(),
) -> None:
    """Runs side by side: the config keys that differ and the final metrics. Runs that differ only
    by seed are summarized per configuration (mean ± std), and two configurations are tested
    against seed noise (Welch's t-test)."""
    from bnexp.store.catalog import expand

    run_dirs = expand(refs, output_root(output_dir))
    if len(run_dirs) < 2:
        raise BnexpError(f"compare needs at least two runs; {' '.join(refs)} names {len(run_dirs)}")
    records, keys, metrics = compare_data(run_dirs)
    if csv_out:
        import csv
        import sys

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["id", "status", *keys, *metrics, "duration_s", "dir"])
        for r in records:
            writer.writerow([r["id"], r["status"], *[r["config"].get(k) for k in keys],
                             *[r["metrics"].get(m) for m in metrics], r["duration_s"], r["dir"]])
        return
    names = short_names([r["id"] for r in records])
    show(compare_table(records, keys, metrics, names, wide), wide)
    for r in records:
        if r["problem"]:
            problem("unreadable", r["id"], r["problem"])
    out = console()
    for table in seed_tables(records, wide):
        out.print()
        show(table, wide)
    if curves:
        from bnexp.commands.curves import print_curves

        out.print()
        print_curves(run_dirs, wide=wide, names=names)


def register(app: typer.Typer) -> None:
    add(app, "compare", compare, epilog=examples("bnexp compare 20261122-120000-sweep-eeee   (every job of a sweep)",
                                                 "bnexp compare RUN_A RUN_B --curves"))
