"""How long the registry commands take over many runs (target, issue 18: every one under 0.5 s over
20,000 runs; `bnexp tensorboard` ready within 5 s). The first listing reads every run.json and caches the
records in `<output_dir>/.index.json`; later ones reread only the records that changed.

Trains one tiny real run, clones its directory (TensorBoard events and all, the checkpoint left out)
into N runs with their own ids, then times the real CLI as a user runs it, wall clock, process
start-up included, median of a few repeats: `runs --json`, the `runs` table, `show`, `compare` of 50
runs named by id prefix, a refused `rm` (a running run), and `tensorboard` until it answers HTTP.

    .venv/bin/python scripts/bench_registry.py [--runs 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TARGET_S = 0.5
TENSORBOARD_TARGET_S = 5.0


def bnexp(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnexp", *args], env=env, capture_output=True, text=True,
                          check=check)


def timed(args: tuple, env: dict, repeats: int, check: bool = True) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        bnexp(*args, env=env, check=check)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def tensorboard_ready(env: dict) -> float:
    """Seconds from `bnexp tensorboard` to its first HTTP answer."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "bnexp", "tensorboard", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"bnexp tensorboard exited with {server.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugins_listing", timeout=2):
                    return time.perf_counter() - start
            except OSError:
                time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(timeout=30)


def clone_runs(out: Path, count: int) -> list[str]:
    template = next((out / "runs").iterdir())
    ids = [template.name]
    for i in range(1, count):
        clone = template.with_name(f"{template.name[:-4]}{i:05x}")  # 5 hex digits: never the template's 4
        shutil.copytree(template, clone, ignore=shutil.ignore_patterns("checkpoint.pt", ".lock"))
        summary = json.loads((clone / "run.json").read_text())
        summary["id"] = clone.name
        (clone / "run.json").write_text(json.dumps(summary))
        ids.append(clone.name)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="bnexp-registry-"))
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(out), "COLUMNS": "120"}
    try:
        bnexp("train", "-q", "epochs=1", "dataset.limit_train=128", "dataset.limit_val=64", env=env)
        started = time.perf_counter()
        ids = clone_runs(out, args.runs)
        print(f"cloned {args.runs} run directories in {time.perf_counter() - started:.0f} s", flush=True)
        start = time.perf_counter()
        listed = json.loads(bnexp("runs", "--json", env=env).stdout)
        cold = time.perf_counter() - start  # no .index.json yet: every run.json is read
        assert len(listed) == args.runs, f"bnexp runs listed {len(listed)} of {args.runs} runs"
        running = out / "runs" / ids[-1]  # a run whose writer is alive: rm must refuse it
        lock = os.open(running / ".lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(lock, fcntl.LOCK_EX)
        fifty = ids[:: max(1, len(ids) // 50)][:50]  # by id: resolved through the registry, not as paths
        timings = {
            "bnexp --help (start-up alone)": timed(("--help",), env, args.repeats),
            "bnexp runs --json": timed(("runs", "--json"), env, args.repeats),
            "bnexp runs (table)": timed(("runs",), env, args.repeats),
            "bnexp runs --sort best_val_acc -n 10": timed(("runs", "--sort", "best_val_acc", "-n", "10"), env,
                                                          args.repeats),
            "bnexp show <id>": timed(("show", ids[len(ids) // 2]), env, args.repeats),
            "bnexp compare <50 ids>": timed(("compare", *fifty), env, args.repeats),
            "bnexp rm <running run> (refused)": timed(("rm", ids[-1], "--yes"), env, args.repeats, check=False),
        }
        os.close(lock)
        board = statistics.median(tensorboard_ready(env) for _ in range(max(1, args.repeats - 1)))
    finally:
        shutil.rmtree(out, ignore_errors=True)

    print(f"{args.runs} run directories, median of {args.repeats}, wall clock incl. process start-up:")
    print(f"  {'first bnexp runs --json (builds the index)':40s} {cold:6.2f} s  (once)")
    for label, seconds in timings.items():
        over = "  ok" if seconds < TARGET_S else f"  OVER {TARGET_S:g} s"
        verdict = "" if label.startswith("bnexp --help") else over
        print(f"  {label:40s} {seconds:6.2f} s{verdict}")
    print(f"  {'bnexp tensorboard (until it answers)':40s} {board:6.2f} s"
          f"{'  ok' if board < TENSORBOARD_TARGET_S else f'  OVER {TENSORBOARD_TARGET_S:g} s'}")
    slow = [k for k, v in timings.items() if v >= TARGET_S and not k.startswith("bnexp --help")]
    print(f"target: every registry command under {TARGET_S:g} s -> "
          f"{'met' if not slow else 'NOT met: ' + ', '.join(slow)}")


if __name__ == "__main__":
    main()
