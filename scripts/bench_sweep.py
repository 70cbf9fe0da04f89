"""Wall time of a 4-job sweep run sequentially (hydra/launcher=basic) versus 2 joblib workers.

Sequential runs twice: with torch's default thread count (what a user gets) and with one thread
(the fairest baseline on a busy machine, where multi-threaded runs degrade). Every sweep runs the
same jobs through ``bnexp sweep`` in a fresh process (start-up included), in turn when repeated,
into a temporary output directory. Jobs take several seconds each so that process start-up does
not dominate. Prints one table and the ratios parallel / sequential (target on 2 cores: <= 0.65).

    python scripts/bench_sweep.py                 # 2 rounds, jobs of ~15 s
    python scripts/bench_sweep.py --repeat 3 --epochs 300
    python scripts/bench_sweep.py --overhead 12    # per-job overhead of 12 one-epoch jobs; -j 2 / -j 1,
                                                   # for those and for 12 jobs of >= 1 s (--long-epochs)
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



# ---------------------------------------------------------------------------------------------
# Per-job overhead: many tiny jobs, where the sweep's own work per job is what shows


TINY_JOB = ["dataset.limit_train=256", "dataset.limit_val=128", "batch_size=64", "hist_every_steps=0",
            "log_every_steps=50", "threads=1", "device=cpu", "recalibrate_batches=0"]


def plain_loop(output_dir: Path, jobs: int) -> float:
    """Seconds per job of the same trainings called in a loop in one process (no sweep at all)."""
    code = (
        "import sys, time\n"
        "from bnexp.config.compose import load\n"
        "from bnexp.launch.trainer import train\n"
        f"args = {TINY_JOB + ['epochs=1']!r}\n"
        "train(load(args + ['seed=999']), args, progress=False)  # warm: imports, data cache\n"
        "started = time.perf_counter()\n"
        f"for seed in range({jobs}):\n"
        "    overrides = args + [f'seed={seed}']\n"
        "    train(load(overrides), overrides, progress=False)\n"
        f"print((time.perf_counter() - started) / {jobs})\n")
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(output_dir)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"plain loop failed:\n{done.stderr}")
    return float(done.stdout.strip().splitlines()[-1])


def tiny_sweep(output_dir: Path, jobs: int, extra: list[str], epochs: int = 1) -> tuple[float, float]:
    """Wall seconds of one ``bnexp sweep`` of ``jobs`` jobs, and the mean training time of a job."""
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(output_dir)}
    seeds = f"seed=range({jobs})" if jobs > 1 else "seed=0"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bnexp", "sweep", seeds, *TINY_JOB, f"epochs={epochs}", *extra],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"bnexp sweep {' '.join(extra)} failed:\n{done.stdout}\n{done.stderr}")
    newest = max((output_dir / "sweeps").iterdir(), key=lambda p: p.stat().st_mtime)
    durations = [job["duration_s"] or 0 for job in json.loads((newest / "sweep.json").read_text())["jobs"]]
    return wall, statistics.mean(durations)


def overhead(repeat: int, jobs: int, long_epochs: int) -> None:
    """Per-job cost of a sweep beyond the training itself: (wall of N jobs - wall of 1 job) / (N - 1),
    minus the same training's time in a plain loop; and ``-j 2`` against ``-j 1`` on the same jobs,
    one-epoch jobs and jobs of ``long_epochs`` epochs (>= 1 s each)."""
    rows: dict[str, list[float]] = {k: [] for k in ("plain", "seq1", "seqN", "parN", "longSeq", "longPar", "longJob")}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bnexp-bench-overhead-") as tmp:
        for _ in range(repeat):
            rows["plain"].append(plain_loop(Path(tmp), jobs))
            rows["seq1"].append(tiny_sweep(Path(tmp), 1, ["--launcher", "basic"])[0])
            rows["seqN"].append(tiny_sweep(Path(tmp), jobs, ["--launcher", "basic"])[0])
            rows["parN"].append(tiny_sweep(Path(tmp), jobs, ["-j", "2"])[0])
            wall, job = tiny_sweep(Path(tmp), jobs, ["--launcher", "basic"], long_epochs)
            rows["longSeq"].append(wall)
            rows["longJob"].append(job)
            rows["longPar"].append(tiny_sweep(Path(tmp), jobs, ["-j", "2"], long_epochs)[0])
            loads.append(os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in rows.items()}
    per_job_seq = (med["seqN"] - med["seq1"]) / (jobs - 1)
    print(f"{jobs} jobs ({' '.join(TINY_JOB)}), {os.cpu_count()} cores, median of {repeat}, "
          f"1-min load average {min(loads):.1f}-{max(loads):.1f} during the run:")
    print(f"  plain loop in one process:     {med['plain']:.3f} s per one-epoch job")
    print(f"  sweep, sequential (basic):     {med['seqN']:.1f} s wall; {per_job_seq:.3f} s per job "
          f"(start-up excluded); overhead {per_job_seq - med['plain']:.3f} s per job (target <= 0.15)")
    print(f"  sweep, -j 2 (joblib):          {med['parN']:.1f} s wall")
    print(f"  -j 2 / -j 1 wall, one-epoch jobs:            {med['parN'] / med['seqN']:.2f}x (target <= 1.0)")
    print(f"  -j 2 / -j 1 wall, {long_epochs}-epoch jobs ({med['longJob']:.2f} s each): "
          f"{med['longPar']:.1f} s / {med['longSeq']:.1f} s = {med['longPar'] / med['longSeq']:.2f}x (target < 1.0)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=150, help="epochs per job (default 150: ~15 s on one core)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of every mode, in turn; medians reported")
    parser.add_argument("--overhead", type=int, metavar="JOBS", default=0,
                        help="instead: the per-job overhead of JOBS one-epoch jobs, and -j 2 against -j 1")
    parser.add_argument("--long-epochs", type=int, default=60,
                        help="with --overhead: epochs of the longer jobs (default 60: >= 1 s each on one core)")
    args = parser.parse_args()
    if args.overhead:
        overhead(args.repeat, args.overhead, args.long_epochs)
        return

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
