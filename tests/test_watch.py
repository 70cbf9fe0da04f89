"""`bnexp watch` / `bnexp runs --watch`: the live table of what is training. A real training run in
a subprocess, followed, stopped and killed; a planted stale heartbeat (stalled); a terminal (a pty)
left as it was after Ctrl-C; 80 columns."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import fake_run, one_line_error

from bnexp.store.live import last_records, live_status
from bnexp.store.lock import DirLock
from bnexp.views.live import Watch, render

LONG_RUN = ["model=mlp", "norm=custom", "epochs=400", "dataset.limit_train=512", "dataset.limit_val=128",
            "batch_size=32", "threads=1", "log_every_steps=2", "hist_every_steps=0", "-q"]


def _env(out: Path, columns: int = 80) -> dict:
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(out), "COLUMNS": str(columns)}
    env.pop("BNEXP_DEBUG", None)
    return env


def _start_training(out: Path, cwd: Path) -> tuple[subprocess.Popen, Path]:
    """A real `bnexp train` in its own process, once its run has logged training steps."""
    proc = subprocess.Popen([sys.executable, "-m", "bnexp", "train", *LONG_RUN], cwd=cwd, env=_env(out),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        runs = list((out / "runs").glob("*/metrics.jsonl"))
        if runs and "train" in last_records(runs[0].parent) and "epoch" in last_records(runs[0].parent):
            return proc, runs[0].parent
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the training run logged nothing within 180 s")


def _watch_cli(out: Path, *args: str, columns: int = 80) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnexp", "watch", *args], env=_env(out, columns),
                          capture_output=True, text=True, timeout=120)


def _row(snapshot, name_part: str):
    (row,) = [r for r in snapshot.rows if name_part in r.name]
    return row


def test_follows_a_real_run_until_it_is_stopped_then_killed(tmp_path):
    out = tmp_path / "outputs"
    proc, run_dir = _start_training(out, tmp_path)
    run_name = run_dir.name.split("-", 2)[2]  # the id without its date and time
    try:
        view = Watch(out)
        row = _row(view.snapshot(), run_name)
        assert row.status == "running" and row.beat is not None and row.beat < 60
        assert re.fullmatch(r"\d+% ep \d+/400", row.progress) and row.eta is not None and row.eta > 0
        assert row.loss is not None and row.val_acc is not None
        # the CLI, not a terminal (a pipe): --count snapshots, --interval apart, fitted to 80 columns
        shown = _watch_cli(out, "--count", "2", "--interval", "0.5")
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.count("1 running") == 2 and run_name in shown.stdout
        assert max(map(len, shown.stdout.splitlines())) <= 80
        # kill -9: the run's record still says "running", but it is shown dead, in this view and a new one
        proc.kill()
        proc.wait(timeout=30)
        assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
        row = _row(view.snapshot(), run_name)
        assert row.status == "dead" and row.eta is None and "continue with: bnexp train resume=" in row.note
        after = _watch_cli(out)
        assert after.returncode == 0 and "dead" in after.stdout and "running" not in after.stdout
        assert "1 dead" in after.stdout and max(map(len, after.stdout.splitlines())) <= 80
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_run_that_ends_while_watched_stays_with_its_outcome(tmp_path):
    out = tmp_path / "outputs"
    proc, run_dir = _start_training(out, tmp_path)
    view = Watch(out)
    assert _row(view.snapshot(), run_dir.name[16:]).status == "running"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert _row(view.snapshot(), run_dir.name[16:]).status == "interrupted"  # seen training: still shown
    assert Watch(out).snapshot().rows == []  # a new view shows only what trains (or died lately)


def _planted(root: Path, run_id: str, beat_age_s: float, locked: bool):
    """A run recorded as running by this process; alive while ``locked`` (this process holds its lock)."""
    run_dir = fake_run(root, run_id, status="running")
    record = json.loads((run_dir / "run.json").read_text())
    beat = datetime.now().astimezone() - timedelta(seconds=beat_age_s)
    record.update(owner={"pid": os.getpid(), "host": socket.gethostname(), "since": record["started"]},
                  heartbeat=beat.isoformat(timespec="seconds"), total_steps=120, ended=None,
                  metrics={"step": 16, "epoch": 1, "train_loss": 0.6, "val_acc": 0.8})
    (run_dir / "run.json").write_text(json.dumps(record))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 30, "epoch": 2, "loss": 0.5,
                                                       "acc": 0.8, "lr": 0.1, "examples_per_s": 640.0}) + "\n")
    return DirLock(run_dir).acquire(lambda: "held") if locked else None


def test_stalled_is_a_live_run_with_a_late_heartbeat(cli):
    root = cli.out
    locks = [_planted(root, "20261120-100000-mlp-custom-aaaa", 600, locked=True),   # alive, 10 min silent
             _planted(root, "20261120-100000-mlp-custom-bbbb", 5, locked=True),     # alive, beating
             _planted(root, "20261120-100000-mlp-custom-cccc", 5, locked=False)]    # process gone
    try:
        snapshot = Watch(root).snapshot()
        stalled, running, dead = (_row(snapshot, s) for s in ("aaaa", "bbbb", "cccc"))
        assert (stalled.status, running.status, dead.status) == ("stalled", "running", "dead")
        assert re.search(r"no heartbeat for 10 m 0\d s \(expected every 30 s\)", stalled.note) and stalled.eta is None
        assert running.progress == "25% ep 2/3" and running.eta == pytest.approx(90 * 64 / 640.0)
        # a stricter threshold makes the beating one stalled too; a looser one none
        assert _row(Watch(root, stall_after=1).snapshot(), "bbbb").status == "stalled"
        assert _row(Watch(root, stall_after=3600).snapshot(), "aaaa").status == "running"
        result = cli("watch", "--count", "1", columns=80)
        assert "1 running, 1 stalled, 1 dead" in result.stdout
        assert max(map(len, result.stdout.splitlines())) <= 80
        runs_watch = cli("runs", "--watch", columns=80)
        assert "1 running, 1 stalled, 1 dead" in runs_watch.stdout
    finally:
        for lock in locks:
            if lock:
                lock.release()
    assert live_status("completed", None) == "completed" and live_status("dead", None) == "dead"


def test_named_runs_are_always_shown(cli):
    fake_run(cli.out, "20261120-100000-mlp-custom-dddd")  # completed long ago: not training
    assert "nothing training" in cli("watch", "--count", "1").stdout
    shown = cli("watch", "20261120-100000-mlp-custom-dddd", "--count", "1").stdout
    assert "mlp-custom-dddd" in shown and "completed" in shown


def test_bad_options_are_one_line_errors(cli):
    one_line_error(cli("watch", "--interval", "0", check=False), "--interval 0")
    one_line_error(cli("watch", "--count", "0", check=False), "--count 0")
    one_line_error(cli("watch", "--stalled-after", "-1", check=False), "--stalled-after -1")
    one_line_error(cli("watch", "nope", check=False), "nope")
    one_line_error(cli("runs", "--watch", "--norm", "custom", check=False), "--watch", "bnexp watch")


def test_ctrl_c_on_a_terminal_exits_0_and_gives_the_cursor_back(tmp_path):
    """On a pty the table is redrawn in place (Rich hides the cursor meanwhile); Ctrl-C ends it with
    exit 0 and the cursor shown again, nothing on stderr."""
    fake_run(tmp_path / "outputs", "20261120-100000-mlp-custom-eeee")
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "bnexp", "watch", "20261120-100000-mlp-custom-eeee", "--interval", "0.2"],
                            env={**_env(tmp_path / "outputs"), "TERM": "xterm-256color"}, stdin=follower,
                            stdout=follower, stderr=subprocess.PIPE, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(follower)
    output = b""

    def read(until: float) -> None:
        nonlocal output
        while time.monotonic() < until:
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                output += chunk
    try:
        deadline = time.monotonic() + 60
        while output.count(b"mlp-custom-eeee") < 2 and time.monotonic() < deadline:  # redrawn at least once
            read(time.monotonic() + 0.2)
        assert output.count(b"mlp-custom-eeee") >= 2, output[-500:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        read(time.monotonic() + 1)
    finally:
        proc.kill()
        os.close(leader)
    assert proc.stderr.read() == b""
    hidden, shown = output.rfind(b"\x1b[?25l"), output.rfind(b"\x1b[?25h")
    assert hidden >= 0 and shown > hidden  # the cursor was hidden while drawing and is back


def test_last_records_reads_what_it_can_and_never_blocks(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert last_records(run) == {}
    lines = [{"kind": "train", "step": 2, "loss": 1.0}, {"kind": "epoch", "step": 4, "val_acc": 0.5},
             {"kind": "train", "step": 6, "loss": 0.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"kind": "tra')  # torn
    assert last_records(run) == {"train": lines[2], "epoch": lines[1]}
    (run / "metrics.jsonl").unlink()
    os.mkfifo(run / "metrics.jsonl")  # a FIFO: opened without blocking, refused
    assert last_records(run) == {}
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")  # a planted link is not followed
    (tmp_path / "elsewhere.jsonl").write_text(json.dumps(lines[0]) + "\n")
    assert last_records(run) == {}
    assert "nothing training" in str(render(Watch(tmp_path / "empty").snapshot()))
