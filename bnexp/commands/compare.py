"""``bnexp compare RUN... | SWEEP``: runs side by side, seed statistics, overlaid curves."""

from __future__ import annotations

import math
from dataclasses import dataclass
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
    select_run_dirs,
    short_names,
    show,
    status_cell,
    where_option,
    wide_option,
)
from bnexp.core.errors import BnexpError
from bnexp.core.vocab import fmt_mean_std

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
    """``0.9100 ± 0.0100`` (:func:`~bnexp.core.vocab.fmt_mean_std`); ``-`` when there is none."""

    return "-" if summary is None else fmt_mean_std(summary.mean, summary.std, summary.n)


@dataclass
class CellTest:
    """One configuration against the baseline on one metric: Welch's test, Holm-adjusted p."""

    cell: int
    metric: str
    test: Optional["Welch"]  # noqa: F821 (bnexp.stats.Welch, imported when used)
    holm_p: float = float("nan")


def seed_statistics(records: list[dict], baseline: Optional[str] = None):
    """Cells (configurations differing only by seed), their labels, the metrics summarized, the
    summaries and every non-baseline cell's test against the baseline cell (Holm-corrected per
    metric over the configurations). None when no configuration has two seeds."""
    from bnexp.views.stats import differing_settings, holm, seed_cells, summarize, welch

    readable = [r for r in records if r["config"]]
    cells = seed_cells([r["config"] for r in readable])
    if not any(len(c.members) > 1 for c in cells):
        if baseline:
            raise BnexpError(f"--baseline {baseline}: no configuration has two seeds or more to test")
        return None
    differ = differing_settings(cells)
    metrics = [(m, p) for m, p in SEED_METRICS if any(m in r["metrics"] for r in readable)]
    summaries = [{m: summarize(readable[i]["metrics"].get(m) for i in c.members) for m, _ in metrics} for c in cells]
    labels = [" ".join(f"{k}={c.settings.get(k)}" for k in differ) or "(same config)" for c in cells]
    base = baseline_cell(cells, baseline)
    tests = []
    for m, _ in metrics:
        family = [CellTest(i, m, welch(summaries[base][m], summaries[i][m]))
                  for i in range(len(cells)) if i != base and summaries[base][m] is not None and summaries[i][m]]
        for t, p in zip(family, holm([t.test.p if t.test else math.nan for t in family])):
            t.holm_p = p
        tests += family
    return cells, labels, metrics, summaries, base, tests


def _setting_matches(value, text: str) -> bool:
    if str(value) == text or (isinstance(value, bool) and str(value).lower() == text.lower()):
        return True
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and float(text) == value
    except ValueError:
        return False


def baseline_cell(cells: list, baseline: Optional[str]) -> int:
    """The index of the cell ``--baseline key=value[,key=value]`` names (default: the first)."""
    if not baseline:
        return 0
    pairs = [part.partition("=") for part in baseline.split(",")]
    if any(not key or not sep for key, sep, _ in pairs):
        raise BnexpError(f"--baseline {baseline}: expected KEY=VALUE[,KEY=VALUE] (norm.kind=none)")
    found = [i for i, c in enumerate(cells) if all(_setting_matches(c.settings.get(k.strip()), v.strip())
                                                   for k, _, v in pairs)]
    if len(found) == 1:
        return found[0]
    key = pairs[0][0].strip()
    values = sorted({str(c.settings.get(key)) for c in cells})
    if not found:
        raise BnexpError(f"--baseline {baseline}: no configuration has it; {key} takes {', '.join(values)} here")
    raise BnexpError(f"--baseline {baseline}: {len(found)} configurations match; add keys to pick one "
                     f"(--baseline {baseline},KEY=VALUE)")


def seed_tables(records: list[dict], wide: bool, baseline: Optional[str] = None) -> list:
    """When runs repeat configurations with different seeds: per configuration ("cell") the mean ±
    standard deviation of the final metrics over its seeds; then every other configuration tested
    against the baseline (``--baseline``, default the first) per metric: Welch's t-test, with Holm's
    correction when more than one configuration is tested. No tables when no configuration has two
    seeds."""
    from bnexp.core.vocab import fmt_number
    from bnexp.views.stats import ALPHA
    from bnexp.views.terminal import Column, FittedTable

    found = seed_statistics(records, baseline)
    if found is None:
        return []
    cells, labels, metrics, summaries, base, tests = found
    rows = [[label + (" (baseline)" if i == base and len(cells) > 2 else ""), str(len(c.members)),
             *[mean_and_spread(s[m]) for m, _ in metrics]]
            for i, (label, c, s) in enumerate(zip(labels, cells, summaries))]
    tables = [FittedTable([Column("configuration", wrap=True), Column("seeds", "right"),
                           *[Column(m, "right", p) for m, p in metrics]], rows, wide=wide,
                          title=f"seed statistics: {len(cells)} configurations, mean ± std over their seeds")]
    if len(cells) < 2:  # one configuration over several seeds: nothing to test it against
        return tables
    several = len(cells) > 2
    test_rows = []
    for t in tests:
        if t.test is None:
            verdict, difference, p_text, holm_text = "needs two seeds or more on both sides", "-", "-", "-"
        else:
            p = t.holm_p if several else t.test.p
            verdict = ("larger than seed noise" if p < ALPHA else "within seed noise") if p == p \
                else "no spread to judge by"
            difference = ("+" if t.test.diff >= 0 else "") + fmt_number(t.test.diff)
            p_text = fmt_number(t.test.p) if t.test.p == t.test.p else "-"
            holm_text = fmt_number(t.holm_p) if t.holm_p == t.holm_p else "-"
        test_rows.append([*([labels[t.cell]] if several else []), t.metric, difference, p_text,
                          *([holm_text] if several else []), verdict])
    if several:
        title = (f"each configuration minus the baseline {labels[base]}: Welch's t-test, Holm-corrected over "
                 f"the {len(cells) - 1} comparisons of each metric (Holm p < {ALPHA}: larger than seed noise)")
    else:
        title = f"{labels[1 - base]} minus {labels[base]}: Welch's t-test (p < {ALPHA}: larger than seed noise)"
    tables.append(FittedTable([*([Column("configuration", wrap=True)] if several else []), Column("metric"),
                               Column("difference", "right"), Column("p", "right"),
                               *([Column("Holm p", "right")] if several else []), Column("verdict", wrap=True)],
                              test_rows, wide=wide, title=title))
    return tables


def export_seed_table(records: list[dict], fmt: str, baseline: Optional[str]) -> str:
    """The seed statistics as CSV (mean, std, n, difference, p and Holm p per metric) or LaTeX
    (mean ± std; a star where the Holm-corrected difference to the baseline exceeds seed noise)."""
    from bnexp.views.paper_tables import latex_escape, to_csv, to_latex
    from bnexp.views.stats import ALPHA

    found = seed_statistics(records, baseline)
    if found is None:
        raise BnexpError("--export needs configurations repeated over seeds (runs differing only by seed); "
                         "--csv prints one row per run")
    cells, labels, metrics, summaries, base, tests = found
    by_cell = {(t.cell, t.metric): t for t in tests}
    names = [m for m, _ in metrics]
    if fmt == "csv":
        headers = ["configuration", "baseline", "seeds", *[f"{m}_{s}" for m in names
                                                           for s in ("mean", "std", "n", "diff", "p", "p_holm")]]
        rows = []
        for i, (label, c, s) in enumerate(zip(labels, cells, summaries)):
            row = [label, i == base, len(c.members)]
            for m in names:
                t = by_cell.get((i, m))
                test = t.test if t else None
                row += [*(((s[m].mean, s[m].std, s[m].n)) if s[m] else (None,) * 3),
                        *((test.diff, test.p, t.holm_p) if test else (None,) * 3)]
            rows.append([float(f"{v:.12g}") if isinstance(v, float) and v == v else
                         (None if isinstance(v, float) else v) for v in row])
        return to_csv(headers, rows)
    rows = []
    for i, (label, c, s) in enumerate(zip(labels, cells, summaries)):
        cells_tex = []
        for m in names:
            t = by_cell.get((i, m))
            star = "$^{*}$" if t and t.test and t.holm_p == t.holm_p and t.holm_p < ALPHA else ""
            cells_tex.append(fmt_mean_std(s[m].mean, s[m].std, s[m].n, latex=True) + star if s[m] else "-")
        rows.append([latex_escape(label) + (" (baseline)" if i == base else ""), str(len(c.members)), *cells_tex])
    return to_latex(["configuration", "seeds", *names], rows, numeric=[False, True, *[True] * len(names)], raw=True,
                    caption=f"Mean ± std over seeds. * : differs from the baseline ({labels[base]}) by more than "
                            f"seed noise (Welch's t-test, Holm-corrected, p < {ALPHA}).")


def compare(
    refs: Optional[List[str]] = refs_argument("Runs and/or sweeps (a sweep stands for all its jobs); none: every "
                                              "run --where selects.", False),
    where: Optional[str] = where_option(),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="The configuration every other one is "
                                           "tested against, as KEY=VALUE[,KEY=VALUE] (norm.kind=none); default: "
                                           "the first."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV (one row per run) instead of a table."),
    export: Optional[str] = typer.Option(None, "--export", help="Print the seed statistics (with the tests "
                                         "against the baseline) as csv or latex (booktabs)."),
    curves: bool = typer.Option(False, "--curves", help="Add validation accuracy and loss by epoch, the runs "
                                "overlaid in one plot each."),
    wide: bool = wide_option(),
    output_dir: Optional[str] = output_dir_option(),
) -> None:
    """Runs side by side: the config keys that differ and the final metrics. Runs that differ only
    by seed are summarized per configuration (mean ± std), and every configuration is tested
    against the baseline (Welch's t-test; Holm-corrected when there are more than two)."""
    from bnexp.views.paper_tables import EXPORT_FORMATS

    if export is not None and export not in EXPORT_FORMATS:
        raise BnexpError(f"--export {export}: valid formats are {', '.join(EXPORT_FORMATS)}")
    run_dirs = select_run_dirs(refs, where, output_root(output_dir))
    if len(run_dirs) < 2:
        named = " ".join(refs or []) or f"--where {where!r}"
        raise BnexpError(f"compare needs at least two runs; {named} names {len(run_dirs)}")
    records, keys, metrics = compare_data(run_dirs)
    if export:
        typer.echo(export_seed_table(records, export, baseline), nl=False)
        return
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
    tables = seed_tables(records, wide, baseline)  # a bad --baseline fails before anything is printed
    show(compare_table(records, keys, metrics, names, wide), wide)
    for r in records:
        if r["problem"]:
            problem("unreadable", r["id"], r["problem"])
    out = console()
    for table in tables:
        out.print()
        show(table, wide)
    if curves:
        from bnexp.commands.curves import print_curves

        out.print()
        print_curves(run_dirs, wide=wide, names=names)


def register(app: typer.Typer) -> None:
    add(app, "compare", compare, epilog=examples("bnexp compare 20261122-120000-sweep-eeee   (every job of a sweep)",
                                                 "bnexp compare RUN_A RUN_B --curves"))
