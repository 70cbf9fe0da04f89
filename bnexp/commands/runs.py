"""The run registry commands: ``bnexp runs``, ``show``, ``compare`` and ``rm``.

They read the small JSON records only (see :mod:`bnexp.registry`) and never import torch; like
every command module, this one imports its helpers when a command runs (``--help`` stays instant).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bnexp.commands import add
from bnexp.errors import BnexpError

COMPARE_METRICS = ("best_val_acc", "best_epoch", "val_acc", "val_loss", "train_acc", "train_loss", "epoch", "step")
OUTPUT_DIR_HELP = "Where runs live (default: $BNEXP_OUTPUT_DIR or ./outputs, as in the config)."
STOP_WAIT_S = 30.0  # rm --force: how long a stopped run may take to end before its directory goes


def output_root(output_dir: Optional[str]) -> Path:
    from bnexp.registry import default_root

    return Path(output_dir) if output_dir else default_root()


def _styled_status(status: Optional[str]) -> str:
    from bnexp.vocab import STATUS_STYLE

    style = STATUS_STYLE.get(status or "", "red")
    return f"[{style}]{status}[/{style}]"


def _started(record) -> str:
    from bnexp.runs import parse_time

    moment = parse_time(record.started)
    return moment.strftime("%m-%d %H:%M") if moment else "-"


def _console():
    from rich.console import Console

    return Console()


def _print_json(data) -> None:
    import json

    typer.echo(json.dumps(data, indent=2, default=str))


RUNS_COLUMNS = (("id", "left"), ("started", "left"), ("model/norm/data", "left"), ("overrides", "left"),
                ("status", "left"), ("best acc", "right"), ("time", "right"))


def runs_table(records: list, title: str):
    """The ``bnexp runs`` table. Rendering, not reading, is what hundreds of rows cost, so cells are
    plain Text (no markup to parse) and fixed columns get their width up front (no measuring pass);
    the overrides column takes the rest of the line and wraps."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from bnexp.registry import key_overrides
    from bnexp.vocab import STATUS_STYLE, fmt_number, fmt_seconds

    rows = []
    for r in records:
        rows.append([r.id, _started(r), f"{r.model}/{r.norm}/{r.dataset}", " ".join(key_overrides(r.overrides)),
                     r.status, fmt_number(r.metric("best_val_acc")),
                     fmt_seconds(r.duration_s) if r.status != "unreadable" else "-"])
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


def runs(
    status: Optional[List[str]] = typer.Option(None, "--status", help="Only this status (repeatable): running, "
                                               "completed, failed, diverged, interrupted, dead, unreadable."),
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
    as_json: bool = typer.Option(False, "--json", help="Print the runs' records as a JSON list."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help=OUTPUT_DIR_HELP),
) -> None:
    """List runs as a table (newest first), with filters; --json for scripts."""
    from bnexp.registry import check_statuses, filter_runs, load_runs, parse_since, sort_runs

    check_statuses(status or [])
    if limit is not None and limit < 0:
        raise BnexpError(f"--limit {limit}: must be >= 0")
    root = output_root(output_dir)
    cutoff = parse_since(since) if since else None
    found = load_runs(root)
    records = sort_runs(filter_runs(found, status=status or (), model=model or (), norm=norm or (),
                                    sweep=sweep, since=cutoff), sort, reverse)
    shown = records[:limit] if limit is not None else records
    if as_json:
        _print_json([r.as_dict() for r in shown])
        return
    title = f"{len(records)} of {len(found)} runs in {root}" + (f" (first {len(shown)})" if len(shown) < len(records) else "")
    console = _console()
    console.print(runs_table(shown, title))
    for r in shown:
        if r.status in ("unreadable", "dead"):
            console.print(f"[red]{r.status}[/red] {r.id}: {r.message}", highlight=False)


def _show_run(run_dir: Path, as_json: bool) -> None:
    from rich.syntax import Syntax
    from rich.table import Table

    from bnexp.registry import load_record, run_config
    from bnexp.runs import CHECKPOINT_FILE, CONFIG_FILE, UnreadableFile, read_text, sweep_of
    from bnexp.vocab import RESUMABLE, fmt_number, fmt_seconds

    record = load_record(run_dir)
    record.sweep = sweep_of(run_dir)
    files = {name: str(run_dir / name) for name in (CONFIG_FILE, "overrides.yaml", "metrics.jsonl",
                                                      CHECKPOINT_FILE, "norm_params.json")
             if (run_dir / name).is_file()}
    files["events"] = [str(p) for p in sorted(run_dir.glob("events.out.tfevents.*"))]
    try:
        config, config_text, config_error = run_config(run_dir), read_text(run_dir / CONFIG_FILE), None
    except UnreadableFile as exc:
        config, config_text, config_error = {}, None, str(exc)
    if as_json:
        _print_json({**record.as_dict(), "config": config, "files": files,
                     **({"config_error": config_error} if config_error else {})})
        return
    console = _console()
    info = Table(title=f"run {record.id}", show_header=False, title_justify="left")
    info.add_column(style="bold", no_wrap=True)
    info.add_column(overflow="fold")
    rows = [("status", _styled_status(record.status)), ("message", record.message),
            ("started / ended", f"{record.started or '-'} / {record.ended or '-'}"),
            ("duration", fmt_seconds(record.duration_s)),
            ("model / norm / data", f"{record.model} / {record.norm} / {record.dataset}"),
            ("optimizer", f"{record.optimizer} lr={record.lr} batch_size={record.batch_size} "
                          f"epochs={record.epochs} seed={record.seed}"),
            ("device", record.device), ("sweep", record.sweep),
            ("overrides", " ".join(record.overrides) or "(none)")]
    for key, value in rows:
        if value is not None:
            info.add_row(key, str(value))
    console.print(info)
    if record.metrics:
        table = Table(title="final metrics", title_justify="left")
        for key in record.metrics:
            table.add_column(key, justify="right")
        table.add_row(*[fmt_number(v) for v in record.metrics.values()])
        console.print(table)
    paths = Table(title="paths", show_header=False, title_justify="left")
    paths.add_column(style="bold", no_wrap=True)
    paths.add_column(overflow="fold")
    paths.add_row("run dir", str(run_dir))
    for name, value in files.items():
        paths.add_row(name, "\n".join(value) if isinstance(value, list) else value)
    console.print(paths)
    if config_text is not None:
        console.print("[bold]config[/bold]")
        console.print(Syntax(config_text, "yaml", theme="ansi_dark"))
    elif config_error and (run_dir / CONFIG_FILE).exists():
        console.print(f"[red]config unreadable[/red]: {config_error}", highlight=False)
    if record.status in RESUMABLE and CHECKPOINT_FILE in files:
        console.print(f"continue it with: bnexp train resume={record.id}", highlight=False)


def _show_sweep(sweep_dir: Path, as_json: bool) -> None:
    from bnexp import sweep as sweeps
    from bnexp.registry import read_sweep

    sweep = read_sweep(sweep_dir)
    rows = sweeps.job_rows(sweep_dir)
    if as_json:
        _print_json({**sweep, "dir": str(sweep_dir), "jobs": rows})
        return
    console = _console()
    console.print(f"sweep [bold]{sweep.get('id')}[/bold] ({sweep.get('status')}): {' '.join(sweep.get('overrides', []))}"
                  f"\n  launcher {sweep.get('launcher')}, started {sweep.get('started')}, dir {sweep_dir}",
                  highlight=False)
    if sweep.get("message"):
        console.print(f"  {sweep['message']}", highlight=False)
    console.print(sweeps.table(sweep, rows, sweep.get("metric") or "best_val_acc"))
    best = (sweep.get("optuna") or {}).get("best")
    if best:
        console.print(f"best trial {best['trial']}: {sweep.get('metric')} {best['value']:.4f} "
                      f"with {best['params']} (run {best['run']})", highlight=False)


def show(
    ref: str = typer.Argument(..., help="A run or sweep: its directory, a unique id prefix or its name."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help=OUTPUT_DIR_HELP),
) -> None:
    """Show one run (config, overrides, final metrics, paths) or one sweep (its jobs)."""
    from bnexp.runs import resolve

    kind, path = resolve(ref, output_root(output_dir))
    (_show_sweep if kind == "sweep" else _show_run)(path, as_json)


def _short_names(ids: list[str]) -> list[str]:
    """Run ids without the prefix they all share (a sweep's id), cut at a '-'."""
    import os

    common = os.path.commonprefix(ids)
    cut = common.rfind("-") + 1 if len(ids) > 1 else 0
    return [i[cut:] or i for i in ids]


def compare_data(run_dirs: list[Path]) -> tuple[list[dict], list[str], list[str]]:
    """Per run: id, dir, status, duration, flattened config and metrics; the keys that differ; the
    metrics present. A run whose files cannot be read is kept, with the reason as its status note."""
    from bnexp.registry import differing_keys, load_record, run_config
    from bnexp.runs import UnreadableFile

    records = []
    for run_dir in run_dirs:
        record = load_record(run_dir)
        try:
            config, problem = run_config(run_dir), None
        except UnreadableFile as exc:
            config, problem = {}, str(exc)
        records.append({"id": record.id, "dir": str(run_dir), "status": record.status,
                        "duration_s": record.duration_s, "config": config, "metrics": record.metrics,
                        "problem": problem or (record.message if record.status == "unreadable" else None)})
    keys = differing_keys([r["config"] for r in records if r["config"]])
    metrics = [m for m in COMPARE_METRICS if any(m in r["metrics"] for r in records)]
    return records, keys, metrics


def _best_index(values: list, metric: str) -> Optional[int]:
    from bnexp.vocab import METRICS, higher_is_better

    numbers = [(v, i) for i, v in enumerate(values) if isinstance(v, (int, float)) and v == v]
    if not numbers or metric not in METRICS:
        return None
    return (max(numbers) if higher_is_better(metric) else min(numbers))[1]


def compare(
    refs: List[str] = typer.Argument(..., help="Runs and/or sweeps (a sweep stands for all its jobs)."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV (one row per run) instead of a table."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help=OUTPUT_DIR_HELP),
) -> None:
    """Runs side by side: the config keys that differ, and the final metrics."""
    from bnexp.runs import expand

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
    from rich.table import Table

    from bnexp.vocab import fmt_number, fmt_seconds

    table = Table(title=f"{len(records)} runs: {len(keys)} config keys differ", title_justify="left")
    table.add_column("", style="bold")
    for name in _short_names([r["id"] for r in records]):
        table.add_column(name, justify="right", overflow="fold")
    for key in keys:
        table.add_row(key, *[str(r["config"].get(key, "-")) for r in records])  # config values as written
    table.add_section()
    table.add_row("status", *[_styled_status(r["status"]) for r in records])
    for m in metrics:
        values = [r["metrics"].get(m) for r in records]
        best = _best_index(values, m)
        table.add_row(m, *[f"[bold green]{fmt_number(v)}[/bold green]" if i == best else fmt_number(v)
                           for i, v in enumerate(values)])
    table.add_row("time", *[fmt_seconds(r["duration_s"]) for r in records])
    console = _console()
    console.print(table)
    for r in records:
        if r["problem"]:
            console.print(f"[red]unreadable[/red] {r['id']}: {r['problem']}", highlight=False)


# ---------------------------------------------------------------------------------------------
# rm


def _removal_targets(refs: list[str], root: Path) -> list[tuple[str, Path, str]]:
    """``(kind, path, note)`` for each reference, checked before anything is deleted. A symlink is
    removed itself, never what it points to; a real directory outside the output directory is
    removed only because the user named it, and the prompt says so."""
    from bnexp.runs import as_directory, is_inside, resolve_all

    targets: dict[Path, tuple[str, Path, str]] = {}
    for ref, (kind, path) in zip(refs, resolve_all(refs, root)):
        named = as_directory(ref) is not None
        if named and Path(ref).expanduser().is_symlink():
            target = Path(ref).expanduser()
            note = f"a symlink to {target.resolve()}: only the link is removed"
            targets[target.absolute()] = (kind, target, note)
            continue
        note = "" if is_inside(path, root) else f"outside {root}: removed because you named it"
        targets[path.resolve()] = (kind, path, note)
    return list(targets.values())


def _stop_writer(path: Path, force: bool) -> None:
    """A run or sweep being written is refused, or with ``--force`` stopped (SIGTERM to its owner on
    this host, which ends it as interrupted) and waited for before its directory goes."""
    import os
    import signal
    import socket
    import time

    from bnexp.runs import RUN_FILE, SWEEP_FILE, busy_message, is_locked, iter_run_dirs, read_json_object

    busy = [d for d in [path, *iter_run_dirs(path)] if is_locked(d)] if path.is_dir() and not path.is_symlink() else []
    if not busy:
        return
    what = "sweep" if (busy[0] / SWEEP_FILE).exists() else "run"
    if not force:
        raise BnexpError(f"{busy_message(busy[0], what)}; refusing to delete it (--force stops it first)")
    for directory in busy:
        owner = read_json_object(directory / (SWEEP_FILE if (directory / SWEEP_FILE).exists() else RUN_FILE)).get("owner") or {}
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            try:
                os.kill(owner["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_WAIT_S
    while any(is_locked(d) for d in busy):
        if time.monotonic() > deadline:
            raise BnexpError(f"{path.name} is still being written {STOP_WAIT_S:.0f} s after being asked to stop; "
                             "nothing deleted")
        time.sleep(0.2)


def rm(
    refs: List[str] = typer.Argument(..., help="Runs or sweeps: directories, unique id prefixes or names."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    force: bool = typer.Option(False, "--force", help="Also delete runs that are training: stop them first."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help=OUTPUT_DIR_HELP),
) -> None:
    """Delete runs or whole sweeps, after confirmation. Runs being trained are refused (--force stops
    them first); symlinks are removed, never followed."""
    from bnexp.runs import iter_run_dirs, remove_dir

    root = output_root(output_dir)
    targets = _removal_targets(list(refs), root)  # everything is resolved before anything is deleted
    if not force:
        for _, path, _ in targets:
            _stop_writer(path, force=False)
    console = _console()
    for kind, path, note in targets:
        jobs = f" ({sum(1 for _ in iter_run_dirs(path))} runs)" if kind == "sweep" and not path.is_symlink() else ""
        console.print(f"  {kind} {path}{jobs}" + (f"  [yellow]({note})[/yellow]" if note else ""), highlight=False)
    if not yes and not typer.confirm(f"Delete these {len(targets)} director{'ies' if len(targets) > 1 else 'y'}?"):
        console.print("nothing deleted")
        raise typer.Exit(1)
    for _, path, _ in targets:
        if force:
            _stop_writer(path, force=True)
        remove_dir(path)
    console.print(f"deleted {len(targets)}")


def register(app: typer.Typer) -> None:
    add(app, "runs", runs)
    add(app, "show", show)
    add(app, "compare", compare)
    add(app, "rm", rm)
