"""How long `bnexp runs` takes over many runs (target: under 1 s for 500).

Trains one tiny real run, clones its directory (TensorBoard events and all, the checkpoint left out)
into N runs with their own ids, then times the real CLI as a user runs it: `bnexp runs --json` and
the Rich table, each the median of a few repeats, wall clock, process start-up included.

    .venv/bin/python scripts/bench_registry.py [--runs 500] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def bnexp(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnexp", *args], env=env, capture_output=True, text=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="bnexp-registry-"))
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(out), "COLUMNS": "200"}
    try:
        bnexp("train", "-q", "epochs=1", "dataset.limit_train=128", "dataset.limit_val=64", env=env)
        template = next((out / "runs").iterdir())
        for i in range(1, args.runs):
            clone = template.with_name(f"{template.name[:-4]}{i:04x}")
            shutil.copytree(template, clone, ignore=shutil.ignore_patterns("checkpoint.pt"))
            summary = json.loads((clone / "run.json").read_text())
            summary["id"] = clone.name
            (clone / "run.json").write_text(json.dumps(summary))
        listed = json.loads(bnexp("runs", "--json", env=env).stdout)
        assert len(listed) == args.runs, f"bnexp runs listed {len(listed)} of {args.runs} runs"

        timings = {}
        for label, cli in (("bnexp runs --json", ("runs", "--json")), ("bnexp runs (table)", ("runs",)),
                           ("bnexp --help (start-up alone)", ("--help",))):
            samples = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                bnexp(*cli, env=env)
                samples.append(time.perf_counter() - start)
            timings[label] = statistics.median(samples)
    finally:
        shutil.rmtree(out, ignore_errors=True)

    print(f"{args.runs} run directories, median of {args.repeats}, wall clock incl. process start-up:")
    for label, seconds in timings.items():
        print(f"  {label:32s} {seconds:6.2f} s")
    verdict = "met" if timings["bnexp runs (table)"] < 1.0 else "NOT met"
    print(f"target: table under 1 s for {args.runs} runs -> {verdict}")


if __name__ == "__main__":
    main()
