"""Data-parallel throughput: one process versus two, and what synchronized BN costs per step.

Trains the same run four ways through ``bnexp.launch.trainer.train`` (the real trainer; the two-process
runs go through bnexp's launcher and torch's elastic agent), side by side, in turn when repeated:

    N=1                  one process, torch's default threads (all cores)
    N=1 threads=1        one process, one thread (steadier than several threads on a busy machine)
    N=2 sync=false       two processes (the cores shared out: one thread each on 2 cores),
                         per-replica BN statistics
    N=2 sync=true        two processes, BN statistics all-reduced across them every layer, every step

``batch_size`` is the global batch in all four, so they do the same arithmetic per step. The
throughput of a run is the mean examples/s of its epochs after the first (warm-up): rank 0's clock
over whole epochs, so process start-up, torch import and rendezvous are not counted (the wall time
per run, start-up included, is printed too). Prints one table, then the ratios N=2 / N=1 and
sync / no-sync, and the synchronized statistics' cost per step in ms.

    python scripts/bench_ddp.py                    # CPU, gloo (2 rounds of 4 runs, a few minutes here)
    python scripts/bench_ddp.py --repeat 3 --epochs 6
    python scripts/bench_ddp.py --device cuda      # a machine with >= 2 GPUs (NCCL; nn.SyncBatchNorm
                                                   # for --norm builtin, bnexp's synchronized layer for custom)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# mode -> (nproc, norm.sync, threads)
MODES = {"N=1": (1, False, None), "N=1 threads=1": (1, False, 1), "N=2 sync=false": (2, False, None),
         "N=2 sync=true": (2, True, None)}
DEFAULT_THREADS = torch.get_num_threads()  # torch's default in a fresh process


def run_config(args, output_dir: Path, nproc: int, sync: bool, threads):
    from bnexp.config.compose import load

    cfg = load([f"model={args.model}", f"norm={args.norm}", f"norm.sync={str(sync).lower()}",
                f"batch_size={args.batch_size}", f"epochs={args.epochs}", f"dataset.limit_train={args.limit_train}",
                "dataset.limit_val=256", "hist_every_steps=0", "recalibrate_batches=0", "log_every_steps=50",
                "checkpoint=false", f"device={args.device}", f"output_dir={output_dir}"])
    cfg.nproc, cfg.threads = nproc, threads
    return cfg


def measure(args, output_dir: Path, nproc: int, sync: bool, threads) -> tuple[float, float, int]:
    """(examples/s over the epochs after the first, wall seconds with start-up, steps per epoch)."""
    from bnexp.launch.trainer import train

    torch.set_num_threads(DEFAULT_THREADS)  # a threads=1 run in this process must not carry over
    started = time.perf_counter()
    record = train(run_config(args, output_dir, nproc, sync, threads), [], progress=False)
    wall = time.perf_counter() - started
    epochs = [json.loads(line) for line in (Path(record.dir) / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in epochs if e["kind"] == "epoch"]
    rates = [e["examples_per_s"] for e in epochs[1:]]
    steps_per_epoch = epochs[0]["step"]
    return len(rates) / sum(1 / r for r in rates), wall, steps_per_epoch  # harmonic mean: equal-size epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--norm", default="custom", choices=("custom", "builtin"))
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (default 128: 64 per process)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is warm-up (default 4)")
    parser.add_argument("--limit-train", type=int, default=1408, help="training images (default: all 1,437 "
                                                                      "digits, in whole batches)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of every mode, in turn; medians reported")
    args = parser.parse_args()
    if args.epochs < 2:
        sys.exit("--epochs must be >= 2 (the first is warm-up)")

    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    walls: dict[str, list[float]] = {mode: [] for mode in MODES}
    steps = 0
    with tempfile.TemporaryDirectory(prefix="bnexp-bench-ddp-") as tmp:
        for round_ in range(args.repeat):
            for mode, (nproc, sync, threads) in MODES.items():
                rate, wall, steps = measure(args, Path(tmp), nproc, sync, threads)
                rates[mode].append(rate)
                walls[mode].append(wall)
                print(f"round {round_ + 1}, {mode}: {rate:,.0f} examples/s, {wall:.1f} s wall", flush=True)

    from bnexp.core.vocab import fmt_rate

    median = {mode: statistics.median(values) for mode, values in rates.items()}
    step_ms = {mode: 1000 * args.batch_size / rate for mode, rate in median.items()}
    print(f"\n{args.model}, norm={args.norm}, device={args.device}, global batch {args.batch_size}, "
          f"{steps} steps per epoch, medians of {args.repeat} round(s):")
    for mode in MODES:
        print(f"  {mode:<15} {fmt_rate(median[mode]):>8} examples/s  {step_ms[mode]:7.2f} ms/step  "
              f"{statistics.median(walls[mode]):5.1f} s wall (start-up included)")
    for one in ("N=1", "N=1 threads=1"):
        print(f"N=2 / {one} throughput: {median['N=2 sync=false'] / median[one]:.2f}x with sync=false, "
              f"{median['N=2 sync=true'] / median[one]:.2f}x with sync=true")
    print(f"sync / no sync time per step at N=2: {step_ms['N=2 sync=true'] / step_ms['N=2 sync=false']:.2f}x "
          f"({step_ms['N=2 sync=true'] - step_ms['N=2 sync=false']:+.2f} ms/step for the all-reduced statistics)")


if __name__ == "__main__":
    main()
