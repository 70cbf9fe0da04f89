"""`bnexp train resume=RUN`: a run stopped with Ctrl-C (a real SIGINT) after its first checkpoint
continues in the same directory and ends with exactly the metrics of an uninterrupted run (CPU);
runs that cannot be continued are refused with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# Long enough (many short epochs) that the SIGINT lands between the first checkpoint and the end.
CONFIG = ["epochs=60", "dataset.limit_train=384", "dataset.limit_val=128", "batch_size=64", "hist_every_steps=0",
          "log_every_steps=3", "threads=1", "device=cpu", "optimizer.momentum=0.9"]
THROUGHPUT = "examples_per_s"  # wall-clock dependent (last epoch's and mean): the values that may differ


def without_throughput(record: dict) -> dict:
    return {k: v for k, v in record.items() if THROUGHPUT not in k}


def epoch_records(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [without_throughput(r) for r in records if r["kind"] in ("epoch", "train")]


def interrupt_after_first_checkpoint(out: Path) -> Path:
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(out)}
    process = subprocess.Popen([sys.executable, "-m", "bnexp", "train", *CONFIG, "name=interrupted", "-q"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not list(out.glob("runs/*-interrupted-*/checkpoint.pt")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0, stderr
    (run_dir,) = out.glob("runs/*-interrupted-*")
    return run_dir


def test_resume_continues_exactly_and_refuses_what_it_cannot(cli):
    cli("train", *CONFIG, "name=straight", "-q")
    (straight,) = cli.out.glob("runs/*-straight-*")
    for args, message in (([f"resume={straight.name}"], "already completed"),
                          ([f"resume={straight.name}", "optimizer.lr=3"], "only epochs and max_steps may change"),
                          ([f"resume={straight.name}", "epochs=3"], "already trained"),
                          (["resume=nope"], "no run or sweep matches 'nope'")):
        refused = cli("train", *args, check=False)
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr

    run_dir = interrupt_after_first_checkpoint(cli.out)
    stopped = json.loads((run_dir / "run.json").read_text())
    assert stopped["status"] == "interrupted" and 1 <= stopped["metrics"]["epoch"] < 60
    assert f"resume={run_dir}" in stopped["message"]

    resumed = cli("train", f"resume={run_dir.name.rsplit('-', 1)[0]}", "-q")  # an id prefix
    assert run_dir.name in resumed.stdout  # the same directory, not a new run
    assert len(list(cli.out.glob("runs/*"))) == 2
    final = json.loads((run_dir / "run.json").read_text())
    expected = json.loads((straight / "run.json").read_text())
    assert final["status"] == "completed"
    assert without_throughput(final["metrics"]) == without_throughput(expected["metrics"])
    assert epoch_records(run_dir) == epoch_records(straight)  # the log has no gap and no duplicate

