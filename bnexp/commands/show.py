"""``bnexp show RUN|SWEEP``: one run in full (the detail view behind every table), or a sweep's jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bnexp.commands import add
from bnexp.commands._shared import (
    console,
    examples,
    output_dir_option,
    output_root,
    print_json,
    problem,
    refs_argument,
    show,
    status_cell,
    wide_option,
)

# Final metrics after the accuracies and losses (vocab.METRICS), in this order.
OTHER_METRICS = ("best_epoch", "epoch", "step", "lr", "examples_per_s", "mean_examples_per_s")


def run_rows(record) -> list[tuple[str, object]]:
    """What the run is, how it ended, what it is called: the top of ``show``."""
    from bnexp.core.vocab import fmt_seconds, norm_label
    from bnexp.store.registry import tags_of

    data = record.dataset if not record.dataset_path else f"{record.dataset} ({record.dataset_path})"
    device = f"{record.device} x {record.nproc} processes" if record.nproc > 1 else record.device
    return [("status", status_cell(record.status)), ("message", _without_command(record.message)),
            ("name", record.name),
            ("tags", " ".join(tags_of(record)) or None), ("note", record.extra.get("note")),
            ("experiment", record.experiment),
            ("started / ended", f"{record.started or '-'} / {record.ended or '-'}"),
            ("duration", fmt_seconds(record.duration_s)),
            ("model / norm", f"{record.model} / {norm_label(record.norm, record.overrides)}"), ("dataset", data),
            ("optimizer", f"{record.optimizer} lr={record.lr} batch_size={record.batch_size} "
                          f"epochs={record.epochs}" + (f" max_steps={record.max_steps}" if record.max_steps else "")
                          + f" seed={record.seed}"),
            ("device", device),
            ("sweep", record.sweep), ("labels", record.extra.get("labels_error"))]


def _without_command(message):
    """A run's message without the command it may end with (``...; continue with: bnexp train
    resume=PATH``): ``show`` prints that command below, whole, with the run's id."""
    from bnexp.core.errors import split_command

    if not message:
        return message
    prose, command = split_command(message)
    return prose.rsplit("; ", 1)[0] if command else message


def metric_rows(metrics: dict) -> list[tuple[str, str]]:
    from bnexp.core.vocab import METRICS, fmt_number, fmt_rate

    known = (*METRICS, *OTHER_METRICS)
    order = [m for m in known if m in metrics] + [m for m in metrics if m not in known]
    return [(m, fmt_rate(metrics[m]) if m.endswith("examples_per_s") else fmt_number(metrics[m])) for m in order]


def repro_rows(repro: dict) -> list[tuple[str, object]]:
    """How to run it again: command line, code version, software, machine (recorded by the trainer)."""
    if not repro:
        return []
    commit = repro.get("git_commit")
    git = "(not a git checkout)"
    if commit:
        git = commit[:12] + (" + uncommitted changes" if repro.get("git_dirty") else "")
    versions = ", ".join(f"{k} {repro[k]}" for k in ("python", "torch", "bnexp") if repro.get(k))
    machine = " / ".join(str(repro[k]) for k in ("host", "device") if repro.get(k))
    threads = repro.get("threads")
    return [("command", repro.get("command")), ("in", repro.get("cwd")), ("git", git), ("versions", versions or None),
            ("machine", (machine + (f", {threads} thread{'s' if threads != 1 else ''}" if threads else "")) or None),
            ("gpu", repro.get("gpu"))]


def _show_run(run_dir: Path, as_json: bool, wide: bool, curves: bool) -> None:
    from rich.syntax import Syntax

    from bnexp.core.vocab import RESUMABLE
    from bnexp.store.catalog import sweep_of
    from bnexp.store.files import CHECKPOINT_FILE, CONFIG_FILE, UnreadableFile, read_text
    from bnexp.store.registry import load_record, run_config, with_labels
    from bnexp.views.terminal import key_values, print_command

    record = with_labels(load_record(run_dir), run_dir)
    record.sweep = sweep_of(run_dir)
    files = {name: str(run_dir / name) for name in (CONFIG_FILE, "overrides.yaml", "metrics.jsonl",
                                                      CHECKPOINT_FILE, "norm_params.json", "labels.json")
             if (run_dir / name).is_file()}
    files["events"] = [str(p) for p in sorted(run_dir.glob("events.out.tfevents.*"))]
    try:
        config, config_text, config_error = run_config(run_dir), read_text(run_dir / CONFIG_FILE), None
    except UnreadableFile as exc:
        config, config_text, config_error = {}, None, str(exc)
    if as_json:
        print_json({**record.as_dict(), "config": config, "files": files,
                    **({"config_error": config_error} if config_error else {})})
        return
    out = console()
    show(key_values(run_rows(record), title=f"run {record.id}", wide=wide), wide)
    out.print()
    show(key_values([(f"{i + 1}", o) for i, o in enumerate(record.overrides)] or [("", "(none)")],
                    title="overrides", wide=wide), wide)
    if record.metrics:
        out.print()
        show(key_values(metric_rows(record.metrics), title="final metrics", wide=wide), wide)
    if record.repro:
        out.print()
        show(key_values(repro_rows(record.repro), title="reproduce", wide=wide), wide)
    out.print()
    names = [Path(p).name for v in files.values() for p in (v if isinstance(v, list) else [v])]
    show(key_values([("run dir", str(run_dir)), ("files", "  ".join(names))], title="paths", wide=wide), wide)
    if config_text is not None:
        out.print()
        out.print("config", style="bold")
        out.print(Syntax(config_text, "yaml", theme="ansi_dark", word_wrap=True), crop=not wide)
    elif config_error and (run_dir / CONFIG_FILE).exists():
        problem("config unreadable", run_dir.name, config_error)
    if record.status in RESUMABLE and CHECKPOINT_FILE in files:
        print_command(out, "continue it with:", f"bnexp train resume={record.id}")
    if curves:
        from bnexp.commands.curves import print_curves

        out.print()
        print_curves([run_dir], wide=wide)
        print_signal_propagation(run_dir)



SIGNAL_LINES = (("in_mean_sq", "input channel mean²"), ("in_var", "input channel variance"),
                ("out_var", "output channel variance"))


def print_signal_propagation(run_dir: Path) -> None:
    """The run's signal-propagation records (``diagnostics.signal_prop``) as a terminal plot against depth."""
    from bnexp.store.files import read_metrics
    from bnexp.store.safeio import UnreadableFile
    from bnexp.views.terminal import Series, line_plot

    try:
        rows = [r for _, r in read_metrics(run_dir) if r.get("kind") == "signal"]
    except UnreadableFile:
        return  # the curves above already said why the log cannot be read
    if not rows:
        return
    out = console()
    series = [Series(label, [r["depth"] for r in rows], [r.get(key) for r in rows]) for key, label in SIGNAL_LINES]
    out.print()
    for line in line_plot(series, out.width, 12, title="signal propagation at initialization (per norm site)",
                          x_label="depth", log=True):
        out.print(line, highlight=False)


def _show_sweep(sweep_dir: Path, as_json: bool, wide: bool, curves: bool) -> None:
    from rich.text import Text

    from bnexp.core.text import escape
    from bnexp.store.catalog import iter_run_dirs
    from bnexp.store.registry import read_sweep
    from bnexp.store.sweeps import job_rows
    from bnexp.views.sweep_table import sweep_table

    sweep = read_sweep(sweep_dir)
    rows = job_rows(sweep_dir)
    if as_json:
        print_json({**sweep, "dir": str(sweep_dir), "jobs": [r.as_dict() for r in rows]})
        return
    out = console()
    out.print(Text("sweep ") + Text(escape(sweep.get("id")), style="bold") +
              Text(escape(f" ({sweep.get('status')}): {' '.join(sweep.get('overrides', []))}\n"
                          f"  launcher {sweep.get('launcher')}, started {sweep.get('started')}, dir {sweep_dir}",
                          keep="\n")))
    if sweep.get("message"):
        out.print(Text(escape(f"  {sweep['message']}")))
    show(sweep_table(sweep, rows, sweep.get("metric") or "best_val_acc", wide=wide), wide)
    best = (sweep.get("optuna") or {}).get("best")
    if best:
        out.print(Text(escape(f"best trial {best['trial']}: {sweep.get('metric')} {best['value']:.4f} "
                       f"with {best['params']} (run {best['run']})")))
    jobs = list(iter_run_dirs(sweep_dir))
    if curves and jobs:
        from bnexp.commands.curves import print_curves

        out.print()
        print_curves(jobs, wide=wide)


def show_command(
    ref: str = refs_argument("A run or sweep: its directory, a unique id prefix or its name."),
    curves: bool = typer.Option(False, "--curves", help="Add the per-epoch table and plots of validation "
                                "accuracy and loss."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    wide: bool = wide_option(),
    output_dir: Optional[str] = output_dir_option(),
) -> None:
    """Show one run in full (status, name, tags and note, every override, final metrics, how to
    reproduce it, paths, config) or one sweep (its jobs)."""
    from bnexp.store.catalog import resolve

    kind, path = resolve(ref, output_root(output_dir))
    (_show_sweep if kind == "sweep" else _show_run)(path, as_json, wide, curves)


def register(app: typer.Typer) -> None:
    add(app, "show", show_command, epilog=examples("bnexp show 20261122-181503   (a unique id prefix)",
                                                   "bnexp show noted --curves   (a run's name= label)"))
