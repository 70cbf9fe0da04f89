"""How long the registry commands take over many runs (target, issue 18: every one under 0.5 s over
20,000 runs; `bnexp tensorboard` ready within 5 s; the commands that show a page of results at most 20 us
slower per run added). The first listing reads every run.json into `<output_dir>/.index.sqlite`; later ones
read only what changed (bnexp/store/index.py).

Trains one tiny real run, clones its directory (TensorBoard events and all, the checkpoint left out)
into N runs with their own ids, then times the real CLI as a user runs it, wall clock, process
start-up included, median of a few repeats: `runs --json`, the `runs` table, `show`, `compare` of 50
runs named by id prefix, a refused `rm` (a running run), and `tensorboard` until it answers HTTP; the
page commands also at --base runs (5,000), before the rest are cloned: the cost per added run.

    .venv/bin/python scripts/bench_registry.py [--runs 20000] [--base 5000] [--repeats 3]
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
CPU_S: dict[tuple, float] = {}  # CPU seconds of each command timed (see timed)
PER_RUN_TARGET_US = 20.0  # cost of one more run for the commands that show a page of results
SETTLE_S = 2.5  # bnexp caches nothing changed within the last 2 s (the clock's resolution)


def bnexp(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnexp", *args], env=env, capture_output=True, text=True,
                          check=check)


def timed(args: tuple, env: dict, repeats: int, check: bool = True) -> float:
    """Median wall-clock seconds; the command's CPU seconds (user + system, steadier on a busy
    machine) are kept in CPU_S under the same arguments."""
    samples, cpu = [], []
    for _ in range(repeats):
        before, start = os.times(), time.perf_counter()
        bnexp(*args, env=env, check=check)
        samples.append(time.perf_counter() - start)
        after = os.times()
        cpu.append(after.children_user + after.children_system - before.children_user - before.children_system)
    CPU_S[args] = statistics.median(cpu)
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
    finally:  # stopping removes the private logdir's links: slow on a busy disk, and not timed
        server.terminate()
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def clone_runs(out: Path, first: int, count: int) -> list[str]:
    """Clones number ``first`` .. ``count - 1`` of the one trained run (number 0); all their ids."""
    template = min((out / "runs").iterdir(), key=lambda d: len(d.name))
    for i in range(first, count):
        clone = template.with_name(f"{template.name[:-4]}{i:05x}")  # 5 hex digits: never the template's 4
        shutil.copytree(template, clone, ignore=shutil.ignore_patterns("checkpoint.pt", ".lock"))
        summary = json.loads((clone / "run.json").read_text())
        summary["id"] = clone.name
        (clone / "run.json").write_text(json.dumps(summary))
    return [template.name] + [f"{template.name[:-4]}{i:05x}" for i in range(1, count)]


def page_commands(ids: list[str]) -> dict[str, tuple]:
    """The commands that show a page of results: their cost should not grow with the registry."""
    return {"bnexp runs (table)": ("runs",), "bnexp runs --sort best_val_acc -n 10": ("runs", "--sort", "best_val_acc",
                                                                                     "-n", "10"),
            "bnexp show <id>": ("show", ids[len(ids) // 2])}


def time_all(commands: dict[str, tuple], env: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """``label -> (median wall s, median CPU s)``; the first command alone may fail (a refused rm)."""
    return {label: (timed(args, env, repeats, check=not label.startswith("bnexp rm")), CPU_S[args])
            for label, args in commands.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base", type=int, default=5000,
                        help="also time the page commands at this many runs: the cost per added run (default 5000)")
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="bnexp-registry-"))
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(out), "COLUMNS": "120"}
    try:
        bnexp("train", "-q", "epochs=1", "dataset.limit_train=128", "dataset.limit_val=64", env=env)
        base = min(args.base, args.runs)
        started = time.perf_counter()
        ids = clone_runs(out, 1, base)
        time.sleep(SETTLE_S)
        bnexp("runs", env=env)  # builds the index
        at_base = time_all(page_commands(ids), env, args.repeats)
        ids = clone_runs(out, base, args.runs)
        print(f"cloned {args.runs} run directories in {time.perf_counter() - started:.0f} s", flush=True)
        time.sleep(SETTLE_S)
        start = time.perf_counter()
        listed = json.loads(bnexp("runs", "--json", env=env).stdout)
        cold = time.perf_counter() - start  # the index knows only the first `base` runs: the rest are read
        assert len(listed) == args.runs, f"bnexp runs listed {len(listed)} of {args.runs} runs"
        running = out / "runs" / ids[-1]  # a run whose writer is alive: rm must refuse it
        lock = os.open(running / ".lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(lock, fcntl.LOCK_EX)
        fifty = ids[:: max(1, len(ids) // 50)][:50]  # by id: resolved through the registry, not as paths
        timings = time_all({"bnexp --help (start-up alone)": ("--help",), "bnexp runs --json": ("runs", "--json"),
                            **page_commands(ids), "bnexp compare <50 ids>": ("compare", *fifty),
                            "bnexp rm <running run> (refused)": ("rm", ids[-1], "--yes")}, env, args.repeats)
        os.close(lock)
        for label, (seconds, cpu) in timings.items():  # now, so that a failing dashboard loses none of them
            print(f"  {label:40s} {seconds:6.2f} s (CPU {cpu:5.2f} s)", flush=True)
        boards = [tensorboard_ready(env) for _ in range(max(1, args.repeats - 1))]
        board = statistics.median(boards)
    finally:
        shutil.rmtree(out, ignore_errors=True)

    print(f"{args.runs} run directories, median of {args.repeats}, wall clock incl. process start-up "
          f"(and the commands' CPU time, user + system: what a quiet machine would approach):")
    print(f"  {f'first bnexp runs --json after {args.runs - base} new runs':40s} {cold:6.2f} s  (once)")
    for label, (seconds, cpu) in timings.items():
        over = "  ok" if seconds < TARGET_S else f"  OVER {TARGET_S:g} s"
        verdict = "" if label.startswith("bnexp --help") else over
        print(f"  {label:40s} {seconds:6.2f} s (CPU {cpu:5.2f} s){verdict}")
    print(f"  {'bnexp tensorboard (until it answers)':40s} {board:6.2f} s"
          f"{'  ok' if board < TENSORBOARD_TARGET_S else f'  OVER {TENSORBOARD_TARGET_S:g} s'}"
          f"  (each: {', '.join(f'{b:.2f} s' for b in boards)}; the first parses every config.yaml)")
    if base < args.runs:
        print(f"cost per added run, {base} -> {args.runs} runs (target <= {PER_RUN_TARGET_US:g} us), wall and CPU:")
        for label, (seconds, cpu) in at_base.items():
            per_run, per_run_cpu = ((timings[label][k] - v) / (args.runs - base) * 1e6 for k, v in enumerate((seconds, cpu)))
            verdict = "ok" if per_run <= PER_RUN_TARGET_US else "OVER"
            print(f"  {label:40s} {seconds:6.2f} s -> {timings[label][0]:6.2f} s: {per_run:6.1f} us/run  {verdict}"
                  f"  (CPU {cpu:5.2f} s -> {timings[label][1]:5.2f} s: {per_run_cpu:5.1f} us/run)")
    print(f"  (load average {os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} CPUs)")
    slow = [k for k, (v, _) in timings.items() if v >= TARGET_S and not k.startswith("bnexp --help")]
    print(f"target: every registry command under {TARGET_S:g} s -> "
          f"{'met' if not slow else 'NOT met: ' + ', '.join(slow)}")


if __name__ == "__main__":
    main()
