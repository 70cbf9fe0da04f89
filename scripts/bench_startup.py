"""Wall time of what a user waits for at the shell: `bnexp --help`, `bnexp runs` over many runs, and a
default `bnexp train` (5 epochs of the bundled digits), each the median of a few runs of the real CLI,
process start-up included, against its target.

The first `bnexp train` in a fresh data folder also builds the resized-digits cache (it imports
scikit-learn); it is timed and shown apart ("cold"), the targets apply to the warm runs.

    .venv/bin/python scripts/bench_startup.py [--repeats 5] [--runs 5000]
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
from datetime import datetime, timedelta, timezone
from pathlib import Path

TARGETS_S = {"bnexp --help": 0.5, "bnexp runs": 1.0, "bnexp train": 3.5}


def timed(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bnexp", *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def fill_registry(root: Path, count: int) -> None:
    """``count`` finished runs as `bnexp runs` reads them: run.json and config.yaml."""
    started = datetime(2026, 11, 20, tzinfo=timezone.utc)
    for i in range(count):
        run_id = f"20261120-{i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}-mlp-custom-{i:04x}"
        run_dir = root / "runs" / run_id
        run_dir.mkdir(parents=True)
        record = {"id": run_id, "status": "completed", "started": (started + timedelta(seconds=i)).isoformat(),
                  "duration_s": 4.2, "model": "mlp", "norm": "custom", "dataset": "digits", "optimizer": "sgd",
                  "lr": 0.1, "batch_size": 64, "epochs": 5, "seed": i % 5, "device": "cpu",
                  "overrides": [f"optimizer.lr=0.{i % 9 + 1}", "model.hidden_sizes=[100,100]"],
                  "metrics": {"best_val_acc": 0.9 + (i % 97) / 1000, "val_acc": 0.9, "val_loss": 0.3}}
        (run_dir / "run.json").write_text(json.dumps(record))
        (run_dir / "config.yaml").write_text("model:\n  name: mlp\nnorm:\n  kind: custom\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5000, help="runs in the registry that `bnexp runs` lists")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bnexp-startup-"))
    registry, trained, data = work / "registry", work / "trained", work / "data"
    base = {**os.environ, "COLUMNS": "120", "BNEXP_DATA_DIR": str(data)}
    try:
        fill_registry(registry, args.runs)
        cold = timed(["train"], {**base, "BNEXP_OUTPUT_DIR": str(trained)})
        samples: dict[str, list[float]] = {label: [] for label in [*TARGETS_S, "bnexp train threads=1"]}
        for _ in range(args.repeats):  # interleaved, so a burst of load hits every command alike
            samples["bnexp --help"].append(timed(["--help"], base))
            samples["bnexp runs"].append(timed(["runs"], {**base, "BNEXP_OUTPUT_DIR": str(registry)}))
            samples["bnexp train"].append(timed(["train"], {**base, "BNEXP_OUTPUT_DIR": str(trained)}))
            samples["bnexp train threads=1"].append(timed(["train", "threads=1"],
                                                          {**base, "BNEXP_OUTPUT_DIR": str(trained)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"median of {args.repeats}, wall clock incl. process start-up ({os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at the end):")
    print(f"  {'command':34s} {'measured':>9s} {'target':>8s} {'ratio':>6s}")
    for label, values in samples.items():
        median = statistics.median(values)
        what = f"{label} ({args.runs} runs)" if label == "bnexp runs" else label
        if label not in TARGETS_S:
            print(f"  {what:34s} {median:8.2f}s  (no target: one torch thread, steadier on a busy machine)")
            continue
        verdict = "met" if median <= TARGETS_S[label] else "NOT met"
        print(f"  {what:34s} {median:8.2f}s {TARGETS_S[label]:7.2f}s {median / TARGETS_S[label]:6.2f}  {verdict}")
    print(f"  {'bnexp train, cold digits cache':34s} {cold:8.2f}s  (first run only: imports scikit-learn)")


if __name__ == "__main__":
    main()
