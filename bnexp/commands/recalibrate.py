"""``bnexp recalibrate RUN [--batches N]``: re-estimate a trained run's BN running statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bnexp.commands import add
from bnexp.commands._shared import output_dir_option, output_root
from bnexp.config.groups import NORMS
from bnexp.core.errors import BnexpError

RECALIBRATED_FILE = "checkpoint.recalibrated.pt"

EPILOG = ("The run's checkpoint.pt (its last finished epoch) is loaded, the running mean and variance of every "
          "BN layer are recomputed as the plain average over N training batches of the run's batch size, drawn "
          "with the same seeded draw the trainer's val_acc_recalibrated uses after that epoch (no gradients, "
          "weights unchanged), and the result is saved as checkpoint.recalibrated.pt next to it (replaced if it "
          "exists; checkpoint.pt is never touched). The run is locked meanwhile: a run being trained is refused.\n\n"
          "Examples: bnexp recalibrate 20261122-181503-lenet-custom-3fa2\n\n"
          "          bnexp recalibrate outputs/runs/20261122-181503-lenet-custom-3fa2 --batches 200")


def recalibrate(
    run: str = typer.Argument(..., help="Run directory, id, id prefix or name.", show_default=False),
    batches: Optional[int] = typer.Option(
        None, "--batches", "-n", min=1, show_default=False,
        help="Training batches to average over (default: the run's recalibrate_batches, else the config default)."),
    output_dir: Optional[str] = output_dir_option(),
) -> None:
    """Recompute the BN running statistics of a trained run ("precise BN") and report validation
    accuracy before and after; the result is saved as a new checkpoint beside the original."""
    from bnexp.store.catalog import resolve
    from bnexp.store.run import Run

    kind, run_dir = resolve(run, output_root(output_dir))
    if kind != "run":
        raise BnexpError(f"{run} names a sweep ({run_dir}); recalibrate one of its runs")
    opened = Run.open(run_dir)  # a run being trained (or recalibrated) is refused here
    try:
        rows, saved = _recalibrate_run(run_dir, batches)
    finally:
        opened.close()
    _print_table(run_dir.name, rows)
    typer.echo(f"saved {saved} (checkpoint.pt beside it is unchanged)")


def _recalibrate_run(run_dir: Path, batches: Optional[int]) -> tuple[list[tuple[str, float, float]], Path]:
    import torch
    from omegaconf import OmegaConf

    from bnexp.config.compose import dataset_settings, load
    from bnexp.data.datasets import load_dataset
    from bnexp.engine.checkpoint import save_checkpoint
    from bnexp.engine.evaluate import evaluate
    from bnexp.engine.loop import resolve_device
    from bnexp.engine.rebuild import rebuild
    from bnexp.engine.recalibrate import recalibrate, recalibration_batches
    from bnexp.store.resume import TO_REBUILD, resume

    trained = resume(run_dir, TO_REBUILD)
    cfg = trained.cfg
    if not NORMS[cfg.norm.kind].running_stats:
        raise BnexpError(f"run {run_dir.name} was trained with norm={cfg.norm.kind}: it has no running statistics "
                         "to recalibrate")
    batches = batches or cfg.recalibrate_batches or load([]).recalibrate_batches
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device.type)
    data = load_dataset(dataset_settings(cfg), device)
    # one process: synchronized layers would be plain BN, so they are built as trained, unsynchronized
    built = rebuild(cfg, data, device, 1, trained.checkpoint, synchronize=False)
    model, optimizer, scheduler, progress = built.module, built.optimizer, built.scheduler, built.progress

    def score(batch_stats: bool = False) -> tuple[float, float]:
        return evaluate(model, data, data.val_x, data.val_y, cfg.eval_batch_size, batch_stats=batch_stats)

    rows = [("running statistics (as trained)", *score())]
    if len(data.val_x) >= 2:
        rows.append(("batch statistics (each eval batch)", *score(batch_stats=True)))
    used = recalibrate(model, recalibration_batches(data, cfg.batch_size, cfg.seed, progress.epoch, batches))
    loss, acc = score()
    rows.append((f"recalibrated ({used} batch{'es' if used != 1 else ''} of {cfg.batch_size})", loss, acc))
    progress.metrics.update(val_loss_recalibrated=loss, val_acc_recalibrated=acc, recalibrated_batches=used)
    saved = run_dir / RECALIBRATED_FILE
    save_checkpoint(saved, model, optimizer, scheduler, progress, OmegaConf.to_container(cfg, resolve=True))
    return rows, saved


def _print_table(run_id: str, rows: list[tuple[str, float, float]]) -> None:
    """The same fitted table as every other command's (bnexp.views.terminal)."""
    from bnexp.commands._shared import show
    from bnexp.core.vocab import fmt_number
    from bnexp.views.terminal import Column, FittedTable

    base = rows[0][2]
    cells = [[name, fmt_number(loss), f"{acc:.4f}", "" if i == 0 else f"{acc - base:+.4f}"]
             for i, (name, loss, acc) in enumerate(rows)]
    columns = [Column("statistics", wrap=True), Column("val loss", "right"), Column("val acc", "right"),
               Column("Δ acc", "right")]
    show(FittedTable(columns, cells, title=f"run {run_id}: validation by BN statistics"))


def register(app: typer.Typer) -> None:
    add(app, "recalibrate", recalibrate, epilog=EPILOG)
