"""The listeners every run has: its record (run.json) and log (metrics.jsonl), its checkpoint, a progress bar."""

from __future__ import annotations

import contextlib
import time

from bnexp.engine.callbacks import Callback
from bnexp.store.files import now_iso
from bnexp.store.run import RunMoved


class RunLog(Callback):
    """The run's record (run.json: status, metrics, heartbeat) and its log (metrics.jsonl)."""

    def __init__(self, run, resumed: bool):
        self.run, self.resumed, self.began = run, resumed, not resumed

    def on_start(self, loop):
        self.run.record.total_steps = loop.total_steps
        if self.resumed:  # only now, with the checkpoint and the log known good, is the run running again
            self.run.truncate_metrics(loop.progress.step)
            self.run.begin()
            self.began = True
        else:
            self.run.save()

    def on_step(self, loop):
        self.run.heartbeat()  # every HEARTBEAT_S however long log_every_steps takes: a late one means stalled

    def on_log(self, loop, log):
        self.check_in_place(loop)
        self.run.log(log.entry())
        self.run.record.metrics = dict(loop.progress.metrics)
        self.run.heartbeat()

    def on_epoch(self, loop, entry):
        self.check_in_place(loop)  # before the checkpoint and TensorBoard write by path
        self.run.log(entry)
        self.update(loop)
        self.run.save()

    def check_in_place(self, loop) -> None:
        if self.run.moved():
            raise RunMoved.at(self.run.path.name, loop.progress.step)

    def update(self, loop) -> None:
        r = self.run.record
        r.metrics = dict(loop.progress.metrics)
        r.duration_s = round(time.perf_counter() - loop.started, 3)
        r.compile_s = round(loop.compile_s, 3)
        r.heartbeat = now_iso()

    def on_end(self, loop, outcome):
        try:
            if self.began:
                self.update(loop)
                note = self.run.finish(outcome.status, outcome.message)
                if note:
                    outcome.notes.append(note)
        finally:
            self.run.close()


class Checkpointer(Callback):
    """checkpoint.pt after every epoch (atomically replaced; see :mod:`bnexp.engine.checkpoint`)."""

    def __init__(self, path, config: dict):
        self.path, self.config = path, config

    def on_epoch(self, loop, entry):
        self.save(loop)

    def on_end(self, loop, outcome):
        """A run stopped mid-epoch saves a step-level checkpoint (its ``progress.partial``)."""
        if outcome.status == "interrupted" and loop.progress.partial:
            self.save(loop)

    def save(self, loop) -> None:
        from bnexp.engine.checkpoint import save_checkpoint

        save_checkpoint(self.path, loop.module, loop.optimizer, loop.scheduler, loop.progress, self.config)


def resume_text(loop) -> str:
    """Where a continued run restarts."""
    return f"resuming {loop.run.path.name} at epoch {loop.progress.epoch + 1}, step {loop.progress.step}"


class ProgressBar(Callback):
    """Rich progress with live loss/accuracy on stderr, and one line per finished epoch. A continued
    run (``resumed``) says where it restarts on a line of its own, before the bar appears."""

    def __init__(self, resumed: bool = False):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.stack = contextlib.ExitStack()
        self.task = None
        self.resumed = resumed

    def on_start(self, loop):
        if self.resumed and loop.run is not None:  # through the bar's console, before it draws
            self.console.print(resume_text(loop), markup=False, highlight=False)
        self.stack.enter_context(self.progress)
        self.task = self.progress.add_task("train", total=loop.total_steps, completed=loop.progress.step, stats="")

    def on_step(self, loop):
        self.progress.advance(self.task)

    def on_log(self, loop, log):
        self.progress.update(self.task, description=f"epoch {log.epoch}",
                             stats=f"loss {log.loss:.4f} acc {log.acc:.3f}")

    def on_epoch(self, loop, entry):
        from bnexp.core.vocab import fmt_number, fmt_rate

        self.console.print(  # under 80 columns up to 9,999 epochs
            f"epoch {entry['epoch']}/{loop.epochs}  loss {fmt_number(entry['train_loss'])} / val "
            f"{fmt_number(entry['val_loss'])}  acc {fmt_number(entry['train_acc'])} / val "
            f"{fmt_number(entry['val_acc'])}  {fmt_rate(entry['examples_per_s'])} ex/s", highlight=False)

    def on_end(self, loop, outcome):
        self.stack.close()
