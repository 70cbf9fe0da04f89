"""Listeners of the training loop: everything that watches training rather than doing it.

The loop (:mod:`bnexp.train`) calls, in order of registration::

    on_start(loop)                   before the first step (also of a continued run)
    on_step(loop)                    after every optimizer step
    on_log(loop, log)                every log_every_steps: a TrainLog of the window since the last one
    on_validation(loop) -> dict      after each epoch's validation: extra metrics for the epoch record
    on_epoch(loop, record)           the epoch record (what metrics.jsonl and the summary keep)
    on_end(loop, outcome)            once, in reverse order, however the run ended

The run record, TensorBoard, the progress bar, checkpoints and the BN diagnostics are listeners;
so is anything a script attaches (``train(..., callbacks=[...])``), e.g. a benchmark's timer.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Iterable, Optional

from bnexp.runs import now_iso

if TYPE_CHECKING:  # the loop's own types; importing them here would import torch
    from bnexp.train import Loop


@dataclass
class TrainLog:
    """Training metrics over the steps since the previous log."""

    step: int
    epoch: int
    loss: float
    acc: float
    lr: float
    examples_per_s: float

    def record(self) -> dict:
        return {"kind": "train", **asdict(self)}


@dataclass
class Outcome:
    """How a run ended: ``status`` as run.json says it, the message shown, and notes added by
    listeners that could not finish their part (a full disk while writing the status)."""

    status: str = "failed"
    message: Optional[str] = None
    notes: list[str] = field(default_factory=list)


class Callback:
    """A listener: override the hooks you need."""

    def on_start(self, loop: "Loop") -> None: ...

    def on_step(self, loop: "Loop") -> None: ...

    def on_log(self, loop: "Loop", log: TrainLog) -> None: ...

    def on_validation(self, loop: "Loop") -> dict:
        return {}

    def on_epoch(self, loop: "Loop", record: dict) -> None: ...

    def on_end(self, loop: "Loop", outcome: Outcome) -> None: ...


class Callbacks(Callback):
    """Calls every listener in turn; :meth:`on_end` runs them all, in reverse, even when one fails:
    the first failure of a completed run makes it failed, and the run record (registered first,
    so ended last) writes whatever the outcome is by then."""

    def __init__(self, listeners: Iterable[Callback]):
        self.listeners = list(listeners)

    def on_start(self, loop):
        for listener in self.listeners:
            listener.on_start(loop)

    def on_step(self, loop):
        for listener in self.listeners:
            listener.on_step(loop)

    def on_log(self, loop, log):
        for listener in self.listeners:
            listener.on_log(loop, log)

    def on_validation(self, loop) -> dict:
        metrics: dict = {}
        for listener in self.listeners:
            metrics.update(listener.on_validation(loop))
        return metrics

    def on_epoch(self, loop, record):
        for listener in self.listeners:
            listener.on_epoch(loop, record)

    def on_end(self, loop, outcome):
        from bnexp.train import describe_error

        for listener in reversed(self.listeners):
            try:
                listener.on_end(loop, outcome)
            except Exception as exc:  # keep ending the others: the status must still be written
                if outcome.status == "completed":
                    outcome.status, outcome.message = "failed", describe_error(exc)
                else:
                    outcome.notes.append(describe_error(exc))


class RunLog(Callback):
    """The run directory's record: run.json (status, metrics, heartbeat) and metrics.jsonl."""

    def __init__(self, run, resumed: bool):
        self.run, self.resumed, self.began = run, resumed, not resumed

    def on_start(self, loop):
        if self.resumed:  # only now, with the checkpoint and the log known good, is the run running again
            self.run.truncate_metrics(loop.progress.step)
            self.run.begin()
            self.began = True

    def on_log(self, loop, log):
        self.run.log(log.record())
        self.run.record.metrics = dict(loop.progress.metrics)
        self.run.heartbeat()

    def on_epoch(self, loop, record):
        self.run.log(record)
        self.update(loop)
        self.run.save()

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
    """checkpoint.pt after every epoch (atomically replaced; see :mod:`bnexp.checkpoint`)."""

    def __init__(self, path, config: dict):
        self.path, self.config = path, config

    def on_epoch(self, loop, record):
        from bnexp.checkpoint import save_checkpoint

        save_checkpoint(self.path, loop.module, loop.optimizer, loop.scheduler, loop.progress, self.config)


class ProgressBar(Callback):
    """Rich progress with live loss/accuracy on stderr, and one line per finished epoch."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.stack = contextlib.ExitStack()
        self.task = None

    def on_start(self, loop):
        self.stack.enter_context(self.progress)
        self.task = self.progress.add_task("train", total=loop.total_steps, completed=loop.progress.step, stats="")

    def on_step(self, loop):
        self.progress.advance(self.task)

    def on_log(self, loop, log):
        self.progress.update(self.task, description=f"epoch {log.epoch}",
                             stats=f"loss {log.loss:.4f} acc {log.acc:.3f}")

    def on_epoch(self, loop, record):
        from bnexp.vocab import fmt_number, fmt_rate

        self.console.print(  # under 80 columns up to 9,999 epochs
            f"epoch {record['epoch']}/{loop.epochs}  loss {fmt_number(record['train_loss'])} / val "
            f"{fmt_number(record['val_loss'])}  acc {fmt_number(record['train_acc'])} / val "
            f"{fmt_number(record['val_acc'])}  {fmt_rate(record['examples_per_s'])} ex/s", highlight=False)

    def on_end(self, loop, outcome):
        self.stack.close()
