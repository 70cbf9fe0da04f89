"""Listeners of the training loop: everything that watches training rather than doing it.

The loop (:mod:`bnexp.engine.loop`) calls, in order of registration::

    on_start(loop)                   before the first step (also of a continued run)
    on_step(loop)                    after every optimizer step
    on_log(loop, log)                every log_every_steps: a TrainLog of the window since the last one
    on_validation(loop) -> dict      after each epoch's validation: extra metrics for the epoch entry
    on_epoch(loop, entry)            the epoch's metrics.jsonl entry (what the log and the summary keep)
    on_end(loop, outcome)            once, in reverse order, however the run ended

The run record, TensorBoard, the progress bar, checkpoints and the BN diagnostics are listeners;
so is anything a script attaches (``train(..., callbacks=[...])``), e.g. a benchmark's timer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from bnexp.core.errors import BnexpError, Diverged, Interrupted
from bnexp.store.record import RunRecord

if TYPE_CHECKING:  # the loop's own types; importing them here would import torch
    from bnexp.engine.state import TrainingState


@dataclass
class TrainLog:
    """Training metrics over the steps since the previous log."""

    step: int
    epoch: int
    loss: float
    acc: float
    lr: float
    examples_per_s: float

    def entry(self) -> dict:
        """As a metrics.jsonl entry."""
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

    def on_start(self, loop: "TrainingState") -> None: ...

    def on_step(self, loop: "TrainingState") -> None: ...

    def on_log(self, loop: "TrainingState", log: TrainLog) -> None: ...

    def on_validation(self, loop: "TrainingState") -> dict:
        return {}

    def on_epoch(self, loop: "TrainingState", entry: dict) -> None: ...

    def on_end(self, loop: "TrainingState", outcome: Outcome) -> None: ...


class Callbacks(Callback):
    """Calls every listener in turn; :meth:`on_end` runs them all, in reverse, even when one fails:
    the first failure of a completed run makes it failed, and the run record (registered first,
    so ended last) writes whatever the outcome is by then."""

    def __init__(self, listeners: Iterable[Callback]):
        self.listeners = list(listeners)
        self.stepping = self.listeners  # those with an on_step, found once started

    def on_start(self, loop):
        for listener in self.listeners:
            listener.on_start(loop)
        # on_step runs every step: call only the listeners that have one (a no-op call costs ~1 us)
        self.stepping = [listener for listener in self.listeners
                         if type(listener).on_step is not Callback.on_step or "on_step" in vars(listener)]

    def on_step(self, loop):
        for listener in self.stepping:
            listener.on_step(loop)

    def on_log(self, loop, log):
        for listener in self.listeners:
            listener.on_log(loop, log)

    def on_validation(self, loop) -> dict:
        metrics: dict = {}
        for listener in self.listeners:
            metrics.update(listener.on_validation(loop))
        return metrics

    def on_epoch(self, loop, entry):
        for listener in self.listeners:
            listener.on_epoch(loop, entry)

    def on_end(self, loop, outcome):
        from bnexp.core.errors import describe_error

        for listener in reversed(self.listeners):
            try:
                listener.on_end(loop, outcome)
            except Exception as exc:  # keep ending the others: the status must still be written
                if outcome.status == "completed":
                    outcome.status, outcome.message = "failed", describe_error(exc)
                else:
                    outcome.notes.append(describe_error(exc))


def record_or_raise(outcome: Outcome, run_dir: Optional[Path], record: Optional[RunRecord]) -> Optional[RunRecord]:
    """The record of a run that ended well (None on ranks other than 0, which keep none), else the
    error its outcome calls for."""
    notes = "".join(f"; {n}" for n in outcome.notes)
    message = outcome.message or outcome.status
    if outcome.status == "interrupted":
        raise Interrupted(message + notes)
    if outcome.status == "diverged":
        raise Diverged(f"{message} (run {run_dir}, status diverged){notes}")
    if outcome.status != "completed":
        raise BnexpError(f"{message}{notes}")
    if notes:
        raise BnexpError(f"run {run_dir} completed{notes}")
    if record is not None:
        record.dir = str(run_dir)
    return record
