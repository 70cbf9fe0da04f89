"""``bnexp train [OVERRIDES...]``: compose, validate, train, summarize."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bnexp.commands import add
from bnexp.core.errors import BnexpError
from bnexp.engine.callbacks import Callback


def groups_epilog() -> str:
    """The config groups and their options, read from the installed tree (no Hydra import)."""
    from bnexp.config.groups import config_dir, group_options

    root = config_dir()
    lines = ["[bold]Config groups[/bold] (pick one with group=option):", ""]
    for group in sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        lines.append(f"  [cyan]{group}[/cyan]: {', '.join(group_options(group))}")
    presets = experiment_presets(root)
    if presets:
        lines += ["", "[bold]Experiment presets[/bold] (experiment=NAME, with any norm=...):", ""]
        lines += [f"  [cyan]{name}[/cyan]: {summary}" for name, summary in presets]
    lines += ["", "Trainer keys: epochs, max_steps, batch_size, eval_batch_size, seed, threads, nproc, "
              "recalibrate_batches, log_every_steps, hist_every_steps, log_channels (per-channel gamma/beta scalars "
              "of the first N channels; default 0 = off), checkpoint, output_dir, name, resume.",
              "", "Examples: bnexp train model=lenet norm=custom optimizer.lr=0.5 epochs=3",
              "          bnexp train dataset=idx dataset.path=../shared/data/mnist-t10k model=convnet",
              "          bnexp train resume=20261122-181503-lenet-custom-3fa2",
              "          bnexp train --cfg model=lenet   (print the composed config)"]
    return "\n".join(lines)


def experiment_presets(root) -> list[tuple[str, str]]:
    """``(name, first comment line)`` of each ``experiment/*.yaml`` (the ``# @package`` header skipped)."""
    folder = root.joinpath("experiment")
    if not folder.is_dir():
        return []
    presets = []
    for path in sorted((p for p in folder.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name):
        comments = [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]
        summary = next((c for c in comments if c and not c.startswith("@")), "")
        presets.append((path.name[:-5], summary.replace("[", "\\[")))
    return presets


COLLAPSE_RATIO = 3.0  # an epoch this many times slower than the best one means the CPU was taken


def print_summary(record) -> None:
    """The final table: what was trained, how it ended, how fast, where it lives; and a hint when
    throughput collapsed during the run."""
    from rich.console import Console

    from bnexp.core.vocab import STATUS_STYLE, fmt_number, fmt_rate, fmt_seconds, norm_label
    from bnexp.views.terminal import key_values

    m = record.metrics
    rows = [("status", (record.status, STATUS_STYLE.get(record.status, "red"))),
            ("model / norm / data", f"{record.model} / {norm_label(record.norm, record.overrides)} / {record.dataset}"),
            ("name", record.name), ("experiment", record.experiment),
            ("epochs / steps", f"{m.get('epoch', 0)} / {m.get('step', 0)}")]
    if "train_loss" in m:
        rows.append(("train loss / acc", f"{fmt_number(m['train_loss'])} / {fmt_number(m['train_acc'])}"))
    if "val_loss" in m:
        rows += [("val loss / acc", f"{fmt_number(m['val_loss'])} / {fmt_number(m['val_acc'])}"),
                 ("best val acc", f"{fmt_number(m['best_val_acc'])} (epoch {m['best_epoch']})"),
                 ("throughput", f"{fmt_rate(m['examples_per_s'])} examples/s last epoch"
                                + (f", {fmt_rate(m['mean_examples_per_s'])} mean over the run"
                                   if "mean_examples_per_s" in m else ""))]
    if record.nproc > 1:
        rows.append(("processes", f"{record.nproc} ({record.repro.get('backend', '?')})"
                                  + (f"\n{record.repro['norm_sync']}" if record.repro.get("norm_sync") else "")))
    if record.repro.get("threads_choice"):
        rows.append(("CPU threads", f"{record.repro.get('threads')} ({record.repro['threads_choice']})"))
    if record.compile_s:
        rows.append(("BN compile", f"{record.compile_s:.1f} s (one-off)"))
    rows += [("time", fmt_seconds(record.duration_s)), ("run dir", str(record.dir))]
    console = Console(highlight=False)
    console.print(key_values(rows, title=f"run {record.id}"))
    for command in (f"bnexp show {record.id} --curves", f"bnexp tensorboard {record.id}"):
        console.print(f"next: {command}", markup=False, soft_wrap=True)  # whole: never broken inside a command
    hint = throughput_hint(record)
    if hint:
        console.print(hint, style="yellow", markup=False)


def throughput_hint(record) -> Optional[str]:
    """One line when some epoch (the first aside: it warms up) ran at under a third of the best
    epoch's throughput: other processes were competing for the CPU cores."""
    from bnexp.core.vocab import fmt_rate
    from bnexp.store.files import UnreadableFile
    from bnexp.store.history import read_history

    try:
        epochs = read_history(record.dir, ["epoch"])["epoch"] if record.dir else []
    except UnreadableFile:
        return None
    rates = [(e["examples_per_s"], e.get("epoch")) for e in epochs if isinstance(e.get("examples_per_s"), (int, float))]
    if len(rates) < 2:
        return None
    best, (slowest, epoch) = max(r for r, _ in rates), min(rates[1:])
    if slowest * COLLAPSE_RATIO >= best:
        return None
    advice = ("another process is competing for the CPU cores" if record.repro.get("threads") == 1 else
              "other processes were probably competing for the CPU cores; on a shared machine threads=1 "
              "(one torch thread) is often faster and steadier")
    return (f"hint: throughput fell to {fmt_rate(slowest)} examples/s in epoch {epoch}, from {fmt_rate(best)} at "
            f"best: {advice}")


class ResumeNotice(Callback):
    """Says where a continued run restarts, before its first step, when no progress bar does (-q)."""

    def on_start(self, loop):
        from rich.console import Console

        from bnexp.tracking.listeners import resume_text

        Console(stderr=True, highlight=False).print(resume_text(loop), markup=False)


def resume_config(overrides: list[str], cfg):
    """The run named by ``resume=`` as the resume policy continues it (:mod:`bnexp.store.resume`):
    its saved config, with a longer ``epochs``/``max_steps`` if given."""
    from bnexp.store.catalog import resolve
    from bnexp.store.resume import BY_USER, resume

    kind, run_dir = resolve(cfg.resume, Path(cfg.output_dir))
    if kind != "run":
        raise BnexpError(f"resume={cfg.resume} names a sweep; continue it with: bnexp sweep --resume {run_dir.name}")
    continued = resume(run_dir, BY_USER, overrides, cfg)
    return continued.cfg, continued.overrides, run_dir


def train(
    overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides: group=option or key=value."),
    show_cfg: bool = typer.Option(False, "--cfg", help="Print the composed config and exit without training."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar (summary table only)."),
) -> None:
    """Train one model; trailing key=value arguments are Hydra overrides
    (e.g. model=lenet norm=custom optimizer.lr=0.5)."""
    from omegaconf import OmegaConf

    from bnexp.config.compose import load
    from bnexp.core.errors import sigterm_as_interrupt

    overrides = list(overrides or [])
    cfg = load(overrides)
    resume_dir = None
    if cfg.resume:
        cfg, overrides, resume_dir = resume_config(overrides, cfg)
    if show_cfg:
        typer.echo(OmegaConf.to_yaml(cfg, resolve=True), nl=False)
        return
    from bnexp.launch.trainer import train as run_training

    with sigterm_as_interrupt():
        record = run_training(cfg, overrides, resume=resume_dir, progress=not quiet,
                              callbacks=[ResumeNotice()] if resume_dir and quiet else [])
    if record is not None:  # None: a rank other than 0 of a run started by hand with torchrun
        print_summary(record)


def register(app: typer.Typer) -> None:
    add(app, "train", train, epilog=groups_epilog())
