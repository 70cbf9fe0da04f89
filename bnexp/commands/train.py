"""``bnexp train [OVERRIDES...]``: compose, validate, train, summarize."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import List, Optional

import typer

from bnexp.errors import BnexpError


def groups_epilog() -> str:
    """The config groups and their options, read from the installed tree (no Hydra import)."""
    root = importlib.resources.files("bnexp.conf")
    lines = ["[bold]Config groups[/bold] (pick one with group=option):", ""]
    for group in sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        options = sorted(p.name[:-5] for p in root.joinpath(group).iterdir() if p.name.endswith(".yaml"))
        lines.append(f"  [cyan]{group}[/cyan]: {', '.join(options)}")
    presets = experiment_presets(root)
    if presets:
        lines += ["", "[bold]Experiment presets[/bold] (experiment=NAME, with any norm=none|custom|builtin):", ""]
        lines += [f"  [cyan]{name}[/cyan]: {summary}" for name, summary in presets]
    lines += ["", "Trainer keys: epochs, max_steps, batch_size, eval_batch_size, seed, threads, log_every_steps, "
              "hist_every_steps, log_channels, checkpoint, output_dir, name, resume.",
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


def print_summary(summary: dict, run_dir: Path) -> None:
    """The final table: what was trained, how it ended, where it lives."""
    from rich.console import Console
    from rich.table import Table

    m = summary.get("metrics", {})
    table = Table(title=f"run {summary['id']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    status_style = {"completed": "green", "diverged": "yellow"}.get(summary["status"], "red")
    rows = [
        ("status", f"[{status_style}]{summary['status']}[/{status_style}]"),
        ("model / norm / data", f"{summary['model']} / {summary['norm']} / {summary['dataset']}"),
        ("epochs / steps", f"{m.get('epoch', 0)} / {m.get('step', 0)}"),
    ]
    if "train_loss" in m:
        rows.append(("train loss / acc", f"{m['train_loss']:.4f} / {m['train_acc']:.4f}"))
    if "val_loss" in m:
        rows += [("val loss / acc", f"{m['val_loss']:.4f} / {m['val_acc']:.4f}"),
                 ("best val acc", f"{m['best_val_acc']:.4f} (epoch {m['best_epoch']})"),
                 ("throughput", f"{m['examples_per_s']:,.0f} examples/s (last epoch)")]
    if summary.get("compile_s"):
        rows.append(("BN compile", f"{summary['compile_s']:.1f} s (one-off)"))
    rows += [("time", f"{summary['duration_s']:.1f} s"), ("run dir", str(run_dir)),
             ("dashboard", f"bnexp tensorboard {summary['id']}")]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


def _resume_config(overrides: list[str], cfg):
    """The saved config of the run named by ``resume=``; other overrides are refused."""
    from omegaconf import OmegaConf

    from bnexp.config import check_schema, validate
    from bnexp.runs import read_json, resolve_run

    others = [o for o in overrides if not o.startswith("resume=")]
    if others:
        raise BnexpError(f"resume= continues a run with its saved config; drop the other overrides: {' '.join(others)}")
    run_dir = resolve_run(cfg.resume, Path(cfg.output_dir))
    status = read_json(run_dir / "run.json")["status"]
    if status == "completed":
        raise BnexpError(f"run {run_dir.name} already completed; nothing to resume")
    if not (run_dir / "checkpoint.pt").is_file():
        raise BnexpError(f"run {run_dir.name} has no checkpoint.pt yet (it stopped before its first epoch ended)")
    saved = check_schema(OmegaConf.load(run_dir / "config.yaml"))
    validate(saved)
    saved_overrides = list(OmegaConf.load(run_dir / "overrides.yaml"))
    return saved, saved_overrides, run_dir


def register(app: typer.Typer) -> None:
    @app.command(
        "train",
        help="Train one model; trailing key=value arguments are Hydra overrides "
             "(e.g. model=lenet norm=custom optimizer.lr=0.5).",
        epilog=groups_epilog(),
        rich_help_panel=None,
    )
    def train(
        overrides: Optional[List[str]] = typer.Argument(None, help="Hydra overrides: group=option or key=value."),
        show_cfg: bool = typer.Option(False, "--cfg", help="Print the composed config and exit without training."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar (summary table only)."),
    ) -> None:
        from omegaconf import OmegaConf

        from bnexp.config import load

        overrides = list(overrides or [])
        cfg = load(overrides)
        resume_dir = None
        if cfg.resume:
            cfg, overrides, resume_dir = _resume_config(overrides, cfg)
        if show_cfg:
            typer.echo(OmegaConf.to_yaml(cfg, resolve=True), nl=False)
            return
        from bnexp.train import train as run_training

        summary = run_training(cfg, overrides, resume=resume_dir, progress=not quiet)
        print_summary(summary, Path(summary["dir"]))
