"""Wall time of a 4-job sweep run sequentially (hydra/launcher=basic) versus 2 joblib workers.

Sequential runs twice: with torch's default thread count (what a user gets) and with one thread
(the fairest baseline on a busy machine, where multi-threaded runs degrade). Every sweep runs the
same jobs through ``bnexp sweep`` in a fresh process (start-up included), in turn when repeated,
into a temporary output directory. Jobs take several seconds each so that process start-up does
not dominate. Prints one table and the ratios parallel / sequential (target on 2 cores: <= 0.65).

    python scripts/bench_sweep.py                 # 2 rounds, jobs of ~15 s
    python scripts/bench_sweep.py --repeat 3 --epochs 300
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sweep_args(epochs: int) -> list[str]:
    return ["model=mlp", "model.hidden_sizes=[256,256]", "norm=none,custom", "optimizer.lr=0.05,0.1",
            f"epochs={epochs}", "hist_every_steps=0", "log_every_steps=50", "device=cpu"]


def run_sweep(output_dir: Path, extra: list[str], epochs: int) -> tuple[float, dict]:
    """Wall seconds of one ``bnexp sweep`` process and its sweep.json."""
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(output_dir)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bnexp", "sweep", *sweep_args(epochs), *extra],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"bnexp sweep {' '.join(extra)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    newest = max((output_dir / "sweeps").iterdir(), key=lambda p: p.stat().st_mtime)
    return wall, json.loads((newest / "sweep.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=150, help="epochs per job (default 150: ~15 s on one core)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of every mode, in turn; medians reported")
    args = parser.parse_args()

    modes = {"sequential (basic, torch's default threads)": ["--launcher", "basic"],
             "sequential (basic, threads=1)": ["--launcher", "basic", "threads=1"],
             "parallel (joblib, 2 workers, 1 thread each)": ["-j", "2"]}
    walls: dict[str, list[float]] = {mode: [] for mode in modes}
    job_seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="bnexp-bench-sweep-") as tmp:
        for _ in range(args.repeat):
            for mode, extra in modes.items():
                wall, sweep = run_sweep(Path(tmp), extra, args.epochs)
                walls[mode].append(wall)
                job_seconds[mode].append(sum(job["duration_s"] or 0 for job in sweep["jobs"]))
                print(f"{mode}: {wall:.1f} s wall, {len(sweep['jobs'])} jobs", flush=True)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"4-job sweep ({' '.join(sweep_args(args.epochs))}), {os.cpu_count()} cores, "
                        f"median of {args.repeat}", title_justify="left")
    for name in ("mode", "wall", "sum of job times"):
        table.add_column(name, justify="left" if name == "mode" else "right")
    for mode in modes:
        table.add_row(mode, f"{statistics.median(walls[mode]):.1f} s", f"{statistics.median(job_seconds[mode]):.1f} s")
    Console().print(table)
    *sequential, parallel = (statistics.median(w) for w in walls.values())
    for mode, wall in zip(modes, sequential):
        print(f"parallel / {mode}: {parallel / wall:.2f}x wall time (target <= 0.65x)")


if __name__ == "__main__":
    main()
