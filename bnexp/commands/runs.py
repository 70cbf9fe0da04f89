"""The run registry commands: ``bnexp runs``, ``show``, ``compare`` and ``rm``.

They read the small JSON summaries only (see :mod:`bnexp.registry`) and never import torch;
like every command module, this one imports its helpers when a command runs (``--help`` stays instant).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bnexp.errors import BnexpError

COMPARE_METRICS = ("best_val_acc", "best_epoch", "val_acc", "val_loss", "train_acc", "train_loss", "epoch", "step")
OUTPUT_DIR_HELP = "Where runs live (default: $BNEXP_OUTPUT_DIR or ./outputs, as in the config)."


def _root(output_dir: Optional[str]) -> Path:
    from bnexp.registry import default_root

    return Path(output_dir) if output_dir else default_root()


def _status(status: Optional[str]) -> str:
    from bnexp.registry import STATUS_STYLE

    style = STATUS_STYLE.get(status or "", "red")
    return f"[{style}]{status}[/{style}]"


def _started(record: dict) -> str:
    from bnexp.registry import started_at

    moment = started_at(record)
    return moment.strftime("%m-%d %H:%M") if moment else "-"


def _console():
    from rich.console import Console

    return Console()


def _print_json(data) -> None:
    import json

    typer.echo(json.dumps(data, indent=2, default=str))


RUNS_COLUMNS = (("id", "left"), ("started", "left"), ("model/norm/data", "left"), ("overrides", "left"),
                ("status", "left"), ("best acc", "right"), ("time", "right"))


def runs_table(records: list[dict], title: str):
    """The ``bnexp runs`` table. Rendering, not reading, is what hundreds of rows cost, so cells are
    plain Text (no markup to parse) and fixed columns get their width up front (no measuring pass);
    the overrides column takes the rest of the line and wraps."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from bnexp.registry import STATUS_STYLE, fmt_number, key_overrides, metric

    rows = []
    for r in records:
        duration = r.get("duration_s")
        rows.append([r.get("id", "?"), _started(r), f"{r.get('model')}/{r.get('norm')}/{r.get('dataset')}",
                     " ".join(key_overrides(r.get("overrides") or [])),
                     r.get("status") or "?", fmt_number(metric(r, "best_val_acc")),
                     f"{duration:.1f} s" if isinstance(duration, (int, float)) else "-"])
    header = [name for name, _ in RUNS_COLUMNS]
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, (name, justify) in enumerate(RUNS_COLUMNS):
        if name == "overrides":
            table.add_column(name, justify=justify, ratio=1, overflow="fold")
        else:
            table.add_column(name, justify=justify, no_wrap=True, width=max(len(row[i]) for row in [header, *rows]))
    status_column = header.index("status")
    for row in rows:
        style = STATUS_STYLE.get(row[status_column], "red")
        table.add_row(*(Text(c, style=style if i == status_column else "") for i, c in enumerate(row)))
    return table


def _show_run(run_dir: Path, as_json: bool) -> None:
    from rich.syntax import Syntax
    from rich.table import Table

    from bnexp.registry import SWEEP_FILE, fmt_number, run_config
    from bnexp.runs import RUN_FILE, read_json

    summary = read_json(run_dir / RUN_FILE)
    sweep = run_dir.parent.name if (run_dir.parent / SWEEP_FILE).is_file() else None
    files = {name: str(run_dir / name) for name in ("config.yaml", "overrides.yaml", "metrics.jsonl",
                                                      "checkpoint.pt", "norm_params.json")
             if (run_dir / name).is_file()}
    files["events"] = [str(p) for p in sorted(run_dir.glob("events.out.tfevents.*"))]
    if as_json:
        config = run_config(run_dir) if (run_dir / "config.yaml").is_file() else {}
        _print_json({**summary, "dir": str(run_dir), "sweep": sweep, "config": config, "files": files})
        return
    console = _console()
    info = Table(title=f"run {summary.get('id')}", show_header=False, title_justify="left")
    info.add_column(style="bold")
    info.add_column(overflow="fold")
    rows = [("status", _status(summary.get("status"))), ("message", summary.get("message")),
            ("started / ended", f"{summary.get('started')} / {summary.get('ended') or '-'}"),
            ("duration", f"{summary.get('duration_s') or 0:.1f} s"),
            ("model / norm / data", f"{summary.get('model')} / {summary.get('norm')} / {summary.get('dataset')}"),
            ("optimizer", f"{summary.get('optimizer')} lr={summary.get('lr')} batch_size={summary.get('batch_size')} "
                          f"epochs={summary.get('epochs')} seed={summary.get('seed')}"),
            ("device", summary.get("device")), ("sweep", sweep),
            ("overrides", " ".join(summary.get("overrides") or []) or "(none)")]
    for key, value in rows:
        if value is not None:
            info.add_row(key, str(value))
    console.print(info)
    metrics = summary.get("metrics") or {}
    if metrics:
        table = Table(title="final metrics", title_justify="left")
        for key in metrics:
            table.add_column(key, justify="right")
        table.add_row(*[fmt_number(v) for v in metrics.values()])
        console.print(table)
    paths = Table(title="paths", show_header=False, title_justify="left")
    paths.add_column(style="bold")
    paths.add_column(overflow="fold")
    paths.add_row("run dir", str(run_dir))
    for name, value in files.items():
        paths.add_row(name, "\n".join(value) if isinstance(value, list) else value)
    console.print(paths)
    if (run_dir / "config.yaml").is_file():
        console.print("[bold]config[/bold]")
        console.print(Syntax((run_dir / "config.yaml").read_text(), "yaml", theme="ansi_dark"))
    if summary.get("status") in ("interrupted", "failed") and "checkpoint.pt" in files:
        console.print(f"continue it with: bnexp train resume={summary.get('id')}", highlight=False)


def _show_sweep(sweep_dir: Path, as_json: bool) -> None:
    from bnexp import sweep as sweeps
    from bnexp.registry import read_sweep

    sweep = read_sweep(sweep_dir)
    rows = sweeps.job_rows(sweep_dir)
    if as_json:
        _print_json({**sweep, "dir": str(sweep_dir), "jobs": rows})
        return
    console = _console()
    console.print(f"sweep [bold]{sweep['id']}[/bold] ({sweep.get('status')}): {' '.join(sweep.get('overrides', []))}"
                  f"\n  launcher {sweep.get('launcher')}, started {sweep.get('started')}, dir {sweep_dir}",
                  highlight=False)
    console.print(sweeps.table(sweep, rows, sweep.get("metric") or "best_val_acc"))
    best = (sweep.get("optuna") or {}).get("best")
    if best:
        console.print(f"best trial {best['trial']}: {sweep.get('metric')} {best['value']:.4f} "
                      f"with {best['params']} (run {best['run']})", highlight=False)


def _short_names(ids: list[str]) -> list[str]:
    """Run ids without the prefix they all share (a sweep's id), cut at a '-'."""
    import os

    common = os.path.commonprefix(ids)
    cut = common.rfind("-") + 1 if len(ids) > 1 else 0
    return [i[cut:] or i for i in ids]


def _compare_data(run_dirs: list[Path]) -> tuple[list[dict], list[str], list[str]]:
    from bnexp.registry import differing_keys, run_config
    from bnexp.runs import RUN_FILE, read_json

    records = []
    for run_dir in run_dirs:
        summary = read_json(run_dir / RUN_FILE)
        config = run_config(run_dir) if (run_dir / "config.yaml").is_file() else {}
        records.append({"id": summary.get("id", run_dir.name), "dir": str(run_dir), "status": summary.get("status"),
                        "duration_s": summary.get("duration_s"), "config": config,
                        "metrics": summary.get("metrics") or {}})
    keys = differing_keys([r["config"] for r in records])
    metrics = [m for m in COMPARE_METRICS if any(m in r["metrics"] for r in records)]
    return records, keys, metrics


def _best_index(values: list, metric: str) -> Optional[int]:
    from bnexp.registry import METRIC_KEYS

    numbers = [(v, i) for i, v in enumerate(values) if isinstance(v, (int, float)) and v == v]
    if not numbers or metric not in METRIC_KEYS:
        return None
    return (max(numbers) if "acc" in metric else min(numbers))[1]


def register(app: typer.Typer) -> None:
    @app.command("runs", help="List runs as a table (newest first), with filters; --json for scripts.")
    def runs(
        status: Optional[List[str]] = typer.Option(None, "--status", help="Only this status (repeatable): "
                                                   "running, completed, failed, diverged, interrupted."),
        model: Optional[List[str]] = typer.Option(None, "--model", help="Only this model (repeatable)."),
        norm: Optional[List[str]] = typer.Option(None, "--norm", help="Only this norm (repeatable)."),
        sweep: Optional[str] = typer.Option(None, "--sweep", help="Only jobs of sweeps whose id starts with this."),
        since: Optional[str] = typer.Option(None, "--since", help="Started since a date (2026-11-20), a time "
                                            "(2026-11-20T14:00) or an age (30m, 12h, 3d, 2w)."),
        sort: str = typer.Option("started", "--sort", help="started, duration, id, model, norm, status, "
                                 "best_val_acc, val_acc, val_loss, train_acc, train_loss (natural order: newest, "
                                 "longest, most accurate, lowest loss first)."),
        reverse: bool = typer.Option(False, "--reverse", "-r", help="Flip the sort order."),
        limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Show the first N after sorting."),
        as_json: bool = typer.Option(False, "--json", help="Print the runs' summaries as a JSON list."),
        output_dir: Optional[str] = typer.Option(None, "--output-dir", help=OUTPUT_DIR_HELP),
    ) -> None:
        from bnexp.registry import filter_runs, load_runs, parse_since, sort_runs
        from bnexp.runs import STATUSES

        for s in status or []:
            if s not in STATUSES:
                raise BnexpError(f"--status {s}: valid statuses are {', '.join(STATUSES)}")
        if limit is not None and limit < 0:
            raise BnexpError(f"--limit {limit}: must be >= 0")
        root = _root(output_dir)
        cutoff = parse_since(since) if since else None
        found = load_runs(root)
        records = sort_runs(filter_runs(found, status=status or (), model=model or (), norm=norm or (),
                                        sweep=sweep, since=cutoff), sort, reverse)
        shown = records[:limit] if limit is not None else records
        if as_json:
            _print_json(shown)
            return
        title = f"{len(records)} of {len(found)} runs in {root}" + (f" (first {len(shown)})" if len(shown) < len(records) else "")
        _console().print(runs_table(shown, title))

    @app.command("show", help="Show one run (config, overrides, final metrics, paths) or one sweep (its jobs).")
    def show(
        ref: str = typer.Argument(..., help="A run or sweep: its directory or a unique id prefix."),
        as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
        output_dir: Optional[str] = typer.Option(None, "--output-dir", help=OUTPUT_DIR_HELP),
    ) -> None:
        from bnexp.registry import resolve

        kind, path = resolve(ref, _root(output_dir))
        (_show_sweep if kind == "sweep" else _show_run)(path, as_json)

    @app.command("compare", help="Runs side by side: the config keys that differ, and the final metrics.")
    def compare(
        refs: List[str] = typer.Argument(..., help="Runs and/or sweeps (a sweep stands for all its jobs)."),
        csv_out: bool = typer.Option(False, "--csv", help="Print CSV (one row per run) instead of a table."),
        output_dir: Optional[str] = typer.Option(None, "--output-dir", help=OUTPUT_DIR_HELP),
    ) -> None:
        from bnexp.registry import expand

        run_dirs = expand(refs, _root(output_dir))
        if len(run_dirs) < 2:
            raise BnexpError(f"compare needs at least two runs; {' '.join(refs)} names {len(run_dirs)}")
        records, keys, metrics = _compare_data(run_dirs)
        if csv_out:
            import csv
            import sys

            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(["id", "status", *keys, *metrics, "duration_s", "dir"])
            for r in records:
                writer.writerow([r["id"], r["status"], *[r["config"].get(k) for k in keys],
                                 *[r["metrics"].get(m) for m in metrics], r["duration_s"], r["dir"]])
            return
        from rich.table import Table

        from bnexp.registry import fmt_number

        table = Table(title=f"{len(records)} runs: {len(keys)} config keys differ", title_justify="left")
        table.add_column("", style="bold")
        for name in _short_names([r["id"] for r in records]):
            table.add_column(name, justify="right", overflow="fold")
        for key in keys:
            table.add_row(key, *[str(r["config"].get(key, "-")) for r in records])  # config values as written
        table.add_section()
        table.add_row("status", *[_status(r["status"]) for r in records])
        for m in metrics:
            values = [r["metrics"].get(m) for r in records]
            best = _best_index(values, m)
            table.add_row(m, *[f"[bold green]{fmt_number(v)}[/bold green]" if i == best else fmt_number(v)
                               for i, v in enumerate(values)])
        table.add_row("time", *[f"{r['duration_s'] or 0:.1f} s" for r in records])
        _console().print(table)

    @app.command("rm", help="Delete runs or whole sweeps, after confirmation.")
    def rm(
        refs: List[str] = typer.Argument(..., help="Runs or sweeps: directories or unique id prefixes."),
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
        output_dir: Optional[str] = typer.Option(None, "--output-dir", help=OUTPUT_DIR_HELP),
    ) -> None:
        import shutil

        from bnexp.registry import resolve
        from bnexp.runs import iter_run_dirs

        root = _root(output_dir)
        targets = {}
        for ref in refs:  # everything is resolved before anything is deleted
            kind, path = resolve(ref, root)
            targets[path.resolve()] = kind
        console = _console()
        for path, kind in targets.items():
            jobs = f" ({sum(1 for _ in iter_run_dirs(path))} runs)" if kind == "sweep" else ""
            console.print(f"  {kind} {path}{jobs}", highlight=False)
        if not yes and not typer.confirm(f"Delete these {len(targets)} director{'ies' if len(targets) > 1 else 'y'}?"):
            console.print("nothing deleted")
            raise typer.Exit(1)
        for path in targets:
            if path.exists():  # a run inside a sweep deleted just before
                shutil.rmtree(path)
        console.print(f"deleted {len(targets)}")
