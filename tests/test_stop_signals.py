"""A stop signal (SIGTERM from ``kill`` or Slurm, Ctrl-C) ends a run after the step under way, never
inside the code it lands in: CI once saw a Slurm job's SIGTERM raise inside TensorBoard's event
writer, whose close then hung until Slurm killed the job with its record still ``running``."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from bnexp.config.compose import load
from bnexp.core.errors import Interrupted, sigterm_as_interrupt
from bnexp.engine.callbacks import Callback


class SignalsItself(Callback):
    """Sends its own process ``signals`` in the middle of its work at step ``at`` (or in on_end),
    and notes whether that work went on to its end."""

    def __init__(self, signals, at=None):
        self.signals, self.at, self.finished, self.sent_at = signals, at, [], None

    def _send(self, where, loop):
        self.sent_at = loop.progress.step
        for sig in self.signals:
            os.kill(os.getpid(), sig)
        self.finished.append(where)  # a signal that raised here would skip this

    def on_log(self, loop, log):
        if loop.progress.step == self.at:
            self._send("on_log", loop)

    def on_end(self, loop, outcome):
        if self.at is None:
            self._send("on_end", loop)


def _train(tmp_path, tiny, listener):
    from bnexp.launch.trainer import train

    cfg = load([*tiny, "epochs=3", "threads=1", f"output_dir={tmp_path}"])
    with sigterm_as_interrupt():  # as `bnexp train` and a Slurm job run it
        return train(cfg, [], progress=False, callbacks=[listener])


def _record(tmp_path) -> dict:
    (path,) = Path(tmp_path).glob("runs/*/run.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGTERM, signal.SIGTERM], [signal.SIGINT]],
                         ids=["sigterm", "two-sigterms", "ctrl-c"])
def test_a_stop_signal_ends_the_run_after_the_step_not_inside_a_listener(tmp_path, tiny, signals):
    listener = SignalsItself(signals, at=4)
    with pytest.raises(Interrupted, match="stopped at step 5 "):
        _train(tmp_path, tiny, listener)
    assert listener.finished == ["on_log"]
    record = _record(tmp_path)
    assert record["status"] == "interrupted" and "stopped at step 5 " in record["message"]


def test_a_sigterm_while_the_run_ends_does_not_stop_its_record_being_written(tmp_path, tiny):
    listener = SignalsItself([signal.SIGTERM, signal.SIGTERM])
    record = _train(tmp_path, tiny, listener)
    assert listener.finished == ["on_end"]
    assert record.status == _record(tmp_path)["status"] == "completed"


def test_a_second_ctrl_c_stops_at_once(tmp_path, tiny):
    listener = SignalsItself([signal.SIGINT, signal.SIGINT], at=4)
    with pytest.raises(Interrupted, match="stopped at step 4 "):
        _train(tmp_path, tiny, listener)
    assert listener.finished == []  # the user insisted: the listener's work was cut short
    assert _record(tmp_path)["status"] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
