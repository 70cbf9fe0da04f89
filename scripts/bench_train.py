#!/usr/bin/env python
"""Training throughput of bnexp's trainer against the course notes' loop and a bare loop.

Trains the same model (LeNet + torch BatchNorm by default) with the same optimizer (the sgd
config), seed and batch size on the same data (the 8,000-image train split of MNIST t10k read with
``dataset=idx``) in one process, and reports training examples/s of these variants:

    course       the course notes' loop: a torchvision-style Dataset whose ``__getitem__`` builds a
                 PIL image and applies ``Compose([ToTensor(), Normalize((0.1307,), (0.3081,))])``,
                 ``DataLoader(batch_size, shuffle=True, num_workers=0)``, ``loss.item()`` every step
    bare         the same model over pre-normalized, pre-batched tensors in a list: no shuffling,
                 metrics or logging; the upper bound
    lightning    PyTorch Lightning: the same model and optimizer in a ``LightningModule`` (loss
                 logged every step through ``self.log``), ``Trainer`` with a ``TensorBoardLogger``
                 (``log_every_n_steps`` = bnexp's), a ``DataLoader(shuffle=True)`` over a
                 ``TensorDataset`` of the pre-normalized images; no checkpointing, progress bar or
                 model summary. Skipped, with a note, when ``lightning`` is not installed
                 (``pip install lightning``; not a dependency of bnexp)
    bnexp        ``bnexp.launch.trainer.train(cfg, [], run_dir=tmp, progress=False)``: scalars every
                 ``log_every_steps`` (10), histograms off
    bnexp-quiet  the trainer without step logging (``log_every_steps`` 1e9, ``hist_every_steps`` 0)
    bnexp-full   the trainer with full logging at the config defaults: scalars every 10 steps and,
                 every 100 steps (default), histograms (+ per-channel gamma/beta scalars, percentile
                 records) and the gradient telemetry (bnexp.tracking.diagnostics: gradient and weight norms,
                 effective LR, gamma/beta gradient norms, pre-activation gradient histograms)
    bnexp-probes the trainer with every BN-science probe on (shift every 10 steps, ICS and smoothness
                 every 50, signal propagation at the start; docs/bn-science.md): their cost. With the
                 probes off (the default) no probe listener exists, so ``bnexp`` *is* the probes-off run
    bnexp-custom the same as bnexp-full with ``norm=custom`` (bnexp's own BatchNorm): custom vs
                 builtin BN in the same run

What is timed, alike for every variant: whole training epochs, from the epoch's first batch to its
last optimizer step (device synchronized), after a warm-up (the trainer's first epoch; 20 batches
of the course and bare loops). Setup, evaluation and checkpoints are not timed. The trainer is
timed from inside by a listener passed as ``train(..., callbacks=[EpochTimer(...)])``; its own
``examples_per_s`` agrees with that wall clock (kept in --json as a cross-check). The per-epoch BN
diagnostics (validation with batch statistics and with recalibrated statistics, ``recalibrate_batches``
at the config default) run after each epoch's validation, outside the timed epoch: their time is shown
apart ("val diagnostics"), as a share of the epoch's training time.

Two clocks, both always shown: wall-clock and process CPU time (all threads). On a shared CPU
machine the CPU-time clock with one torch thread is the steadier measure of the work and is the
default for ratios there (--clock); on a GPU it is the wall clock.

Timings on a shared machine are noisy, so the variants run interleaved: each repeat runs every
variant once (a fresh model), in an order that rotates between repeats. Throughputs are medians
over all timed epochs; ratios are medians of the per-repeat ratios, with their min..max. The
logging overhead is given twice: end to end (1 - full/quiet throughput, between runs, noisy) and
directly (time inside the trainer's listeners' per-step hooks / epoch time, within the same epochs;
the gradient telemetry's forward and gradient hooks run inside the steps and count only end to end).

    .venv/bin/python scripts/bench_train.py                 # batch 64 and 256, ~8 min on 2 busy CPU cores
    .venv/bin/python scripts/bench_train.py --quick         # one repeat, one timed epoch (~2 min)
    .venv/bin/python scripts/bench_train.py --device cuda --batch-size 64 256 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

try:  # what torchvision's MNIST.__getitem__ calls (Image.fromarray minus Pillow's deprecation warning)
    from torchvision.utils import _Image_fromarray
except ImportError:  # older torchvision
    from PIL import Image

    def _Image_fromarray(array, mode):
        return Image.fromarray(array, mode=mode)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bnexp.engine.callbacks import Callback  # noqa: E402  (torch-free; after the path is set

DEFAULT_DATA = REPO.parent / "shared" / "data" / "mnist-t10k"
QUIET_LOG_EVERY = 10**9  # "never" for log_every_steps (it must be >= 1)
WARMUP_BATCHES = 20  # warm-up of the course and bare loops (the trainer's warm-up is its whole first epoch)
VARIANTS = ("course", "bare", "lightning", "bnexp", "bnexp-quiet", "bnexp-full", "bnexp-custom", "bnexp-probes")
# bnexp-probes: every BN-science probe on (docs/bn-science.md), at these intervals
PROBES = ["diagnostics.shift_every=10", "diagnostics.ics_every=50", "diagnostics.smooth_every=50",
          "diagnostics.signal_prop=true"]

# Course-notes normalization constants (MNIST train-set mean/std), as in torchvision's examples.
NOTES_MEAN, NOTES_STD = (0.1307,), (0.3081,)

TARGETS = {  # check -> (numerator variant, denominator variant, kind, target)
    "bnexp vs course": ("bnexp", "course", "ratio>=", 2.0),
    "bnexp full logging vs bare": ("bnexp-full", "bare", "ratio>=", 0.97),
    "bnexp full logging vs lightning": ("bnexp-full", "lightning", "ratio>=", 1.15),
    "custom BN vs builtin BN (full logging)": ("bnexp-custom", "bnexp-full", "ratio>=", 1.0),
    "logging overhead (full)": ("bnexp-full", "bnexp-quiet", "overhead<=", 0.03),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Targets: bnexp >= 2x course; with full logging >= 0.97x bare and >= 1.15x "
                                       "Lightning; norm=custom >= 1.0x builtin; full logging <= 3%%.")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help=f"directory holding the MNIST t10k IDX files (default: {DEFAULT_DATA})")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch-size", type=int, nargs="+", default=[64, 256], metavar="B",
                   help="one or more batch sizes, each benchmarked separately (default: 64 256)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds over all variants (default: 3)")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per variant and repeat (default: 2)")
    p.add_argument("--quick", action="store_true", help="short run: 1 repeat, 1 timed epoch")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: 1; 0: torch's default). On a shared machine more threads "
                        "than idle cores make every step wait at OpenMP barriers: 5-20x slower and erratic")
    p.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                   help="clock of the ratios and targets (default auto: cpu time on --device cpu with 1 thread, "
                        "wall otherwise); both clocks are always shown")
    p.add_argument("--model", default="lenet", help="bnexp model option (default: lenet)")
    p.add_argument("--norm", default="builtin", help="bnexp norm option (default: builtin = torch.nn.BatchNorm)")
    p.add_argument("--log-every", type=int, default=10, help="log_every_steps of bnexp, bnexp-full (default: 10)")
    p.add_argument("--hist-every", type=int, default=100, help="hist_every_steps of bnexp-full (default: 100, the config default)")
    p.add_argument("--recalibrate-batches", type=int, default=None, metavar="N",
                   help="recalibrate_batches of the bnexp variants (default: the config default)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader num_workers of the course loop "
                                                          "(default: 0, as in the notes)")
    p.add_argument("--variants", nargs="+", default=None, choices=VARIANTS, metavar="NAME",
                   help=f"run only these variants ({', '.join(VARIANTS)})")
    p.add_argument("--json", type=Path, default=None, help="also write settings, checks and every epoch's "
                                                           "timings to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.epochs = 1, 1
    if args.repeats < 1 or args.epochs < 1 or min(args.batch_size) < 2 or args.threads < 0 or args.workers < 0:
        p.error("--repeats and --epochs must be >= 1, every --batch-size >= 2, --threads and --workers >= 0")
    if args.log_every < 1 or args.hist_every < 1:
        p.error("--log-every and --hist-every must be >= 1")
    return args


def check_data(data: Path) -> Path:
    """The data directory, resolved; exits with a one-line message when the files are not there."""
    data = data.expanduser().resolve()
    wanted = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    missing = [w for w in wanted if not ((data / w).is_file() or (data / f"{w}.gz").is_file())]
    if missing:
        where = "does not exist" if not data.is_dir() else f"lacks {', '.join(m + '[.gz]' for m in missing)}"
        sys.exit(f"bench_train: MNIST t10k data not found: {data} {where}. The benchmark needs the official "
                 f"MNIST test set (t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz); pass --data DIR.")
    return data


# --- the variants --------------------------------------------------------------------------------


@dataclass
class Epoch:
    """One timed training epoch: examples trained, wall-clock and process CPU seconds."""

    examples: int
    wall_s: float
    cpu_s: float
    reported: Optional[float] = None  # the trainer's own examples_per_s for this epoch (bnexp variants)
    log_wall_s: float = 0.0  # time inside the trainer's per-step listener hooks (bnexp variants)
    log_cpu_s: float = 0.0
    diagnostics_wall_s: float = 0.0  # time in the listeners' on_validation after this epoch (bnexp variants)
    diagnostics_cpu_s: float = 0.0

    def rate(self, clock: str) -> float:
        return self.examples / max(self.wall_s if clock == "wall" else self.cpu_s, 1e-9)

    def log_share(self, clock: str) -> float:
        return self.log_wall_s / self.wall_s if clock == "wall" else self.log_cpu_s / self.cpu_s

    def diagnostics_share(self, clock: str) -> float:
        return self.diagnostics_wall_s / self.wall_s if clock == "wall" else self.diagnostics_cpu_s / self.cpu_s


@dataclass
class Variant:
    name: str
    what: str
    repeats: list[list[Epoch]] = field(default_factory=list)  # per repeat: its timed epochs

    def rates(self, clock: str) -> list[float]:
        return [e.rate(clock) for rep in self.repeats for e in rep]

    def repeat_rate(self, i: int, clock: str) -> float:
        return statistics.median(e.rate(clock) for e in self.repeats[i])

    def log_share(self, clock: str) -> float:
        """Median over timed epochs of the share of epoch time spent inside logging calls."""
        return statistics.median(e.log_share(clock) for rep in self.repeats for e in rep)

    def diagnostics_share(self, clock: str) -> float:
        """Median over timed epochs of the BN diagnostics' time after the epoch / the epoch's time."""
        return statistics.median(e.diagnostics_share(clock) for rep in self.repeats for e in rep)


class Stopwatch:
    """Wall-clock and CPU time (all threads of this process) of one epoch, the device synchronized."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        sync(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_model(cfg, data, device):
    """The model and optimizer bnexp's trainer builds for ``cfg`` (same seed, same initial weights)."""
    from bnexp.engine.loop import build_optimizer
    from bnexp.nn.models import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.norm, data.in_channels, data.image_size, data.num_classes).to(device)
    return model, build_optimizer(cfg.optimizer, model.parameters())


class NotesMNIST(Dataset):
    """The course notes' dataset: torchvision's ``MNIST.__getitem__`` over in-memory uint8 images."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform):
        self.data, self.targets, self.transform = images, targets, transform  # (N, H, W) uint8, (N,) int64

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        img, target = self.data[index], int(self.targets[index])
        img = _Image_fromarray(img.numpy(), mode="L")  # a PIL image, as torchvision's MNIST makes it
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def run_course(cfg, data, device, epochs: int, workers: int) -> list[Epoch]:
    """The course notes' loop, verbatim in spirit: per-sample transforms, DataLoader, loss.item()."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(NOTES_MEAN, NOTES_STD)])
    dataset = NotesMNIST(data.train_x[:, 0].cpu(), data.train_y.cpu(), transform)
    # a last batch of one example would make BatchNorm fail in training mode; the trainer drops it too
    drop_last = len(dataset) % cfg.batch_size == 1
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=workers, drop_last=drop_last)
    model, optimizer = fresh_model(cfg, data, device)
    timed = []
    for epoch in range(1 + epochs):
        with Stopwatch(device) as clock:
            model.train()
            running_loss, seen = 0.0, 0
            for i, (x, y) in enumerate(loader):
                if epoch == 0 and i == WARMUP_BATCHES:
                    break
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                running_loss += loss.item() * len(y)
                seen += len(y)
        if epoch > 0:
            timed.append(Epoch(seen, clock.wall, clock.cpu))
    return timed


def run_bare(cfg, data, device, epochs: int) -> list[Epoch]:
    """The upper bound: the same steps over a fixed list of normalized batches, nothing else."""
    x_all = data.normalize(data.train_x.to(device))
    y_all = data.train_y.to(device)
    batches = list(zip(x_all.split(cfg.batch_size), y_all.split(cfg.batch_size)))
    if len(batches[-1][1]) < 2:
        batches.pop()
    seen = sum(len(y) for _, y in batches)
    model, optimizer = fresh_model(cfg, data, device)
    model.train()
    timed = []
    for epoch in range(1 + epochs):
        with Stopwatch(device) as clock:
            for x, y in batches[:WARMUP_BATCHES] if epoch == 0 else batches:
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
        if epoch > 0:
            timed.append(Epoch(seen, clock.wall, clock.cpu))
    return timed


def lightning_missing() -> Optional[str]:
    """Why the Lightning variant cannot run here, or None."""
    try:
        import lightning  # noqa: F401
    except ImportError as exc:
        return f"lightning is not installed ({exc}); pip install lightning to measure it"
    return None


def run_lightning(cfg, data, device, epochs: int, log_every: int) -> list[Epoch]:
    """What a Lightning user writes: a LightningModule, a DataLoader, Trainer.fit with TensorBoard.

    Timed from inside, like the trainer: from ``on_train_epoch_start`` to ``on_train_epoch_end``
    (the device synchronized); the first epoch is the warm-up."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    model, optimizer = fresh_model(cfg, data, device)
    x_all = data.normalize(data.train_x.to(device))
    dataset = TensorDataset(x_all, data.train_y.to(device))
    drop_last = len(dataset) % cfg.batch_size == 1  # a last batch of one example breaks BatchNorm
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=drop_last)

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.model(x), y)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return optimizer

    class Timer(L.Callback):
        def __init__(self):
            self.epochs = []

        def on_train_epoch_start(self, trainer, module):
            sync(device)
            self.start = (time.perf_counter(), time.process_time())

        def on_train_epoch_end(self, trainer, module):
            sync(device)
            self.epochs.append((time.perf_counter() - self.start[0], time.process_time() - self.start[1]))

    timer = Timer()
    with tempfile.TemporaryDirectory(prefix="bench_train-lightning-") as tmp:
        trainer = L.Trainer(max_epochs=1 + epochs, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                            logger=TensorBoardLogger(tmp, name="lightning"), log_every_n_steps=log_every,
                            callbacks=[timer], enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp)
        trainer.fit(Classifier(), train_dataloaders=loader)
    seen = len(dataset) - (1 if drop_last else 0)
    return [Epoch(seen, wall, cpu) for wall, cpu in timer.epochs[1:]]


class EpochTimer(Callback):
    """A listener that times the trainer from inside, passed as ``train(..., callbacks=[timer])``.

    An epoch runs from the end of the previous epoch's listeners (or of ``on_start``) to the end of
    its last step's listeners: evaluation, checkpoints and setup fall outside. Within it, the time
    spent inside the trainer's other listeners' per-step hooks (``on_step``, ``on_log``: scalars,
    histograms, gradient telemetry, metrics.jsonl) is the logging time; the time inside their
    ``on_validation`` (the BN diagnostics' extra validations) is kept apart, per epoch. Registered
    last, so its own hooks run after everyone else's."""

    def __init__(self, device):
        self.device = device
        self.epochs: list[tuple[float, float, float, float, float, float]] = []  # wall, cpu, log, diagnostics
        self.clock = self.last = (0.0, 0.0)
        self.logging = [0.0, 0.0]
        self.diagnostics = [0.0, 0.0]

    def now(self) -> tuple[float, float]:
        sync(self.device)
        return time.perf_counter(), time.process_time()

    def on_start(self, loop):
        for listener in loop.listeners.listeners:
            if listener is not self:
                for hook in ("on_step", "on_log"):
                    setattr(listener, hook, self.timed(getattr(listener, hook), self.logging))
                listener.on_validation = self.timed(listener.on_validation, self.diagnostics)
        self.clock = self.last = self.now()

    def timed(self, hook, into: list[float]):
        def timed_hook(*args):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return hook(*args)
            finally:
                into[0] += time.perf_counter() - wall
                into[1] += time.process_time() - cpu
        return timed_hook

    def on_step(self, loop):
        self.last = self.now()

    def on_log(self, loop, log):
        self.last = self.now()

    def on_epoch(self, loop, record):  # the diagnostics ran in on_validation, just before
        (w0, c0), (w1, c1) = self.clock, self.last
        self.epochs.append((w1 - w0, c1 - c0, *self.logging, *self.diagnostics))
        self.logging[:], self.diagnostics[:] = [0.0, 0.0], [0.0, 0.0]
        self.clock = self.last = self.now()


def run_bnexp(cfg, data, epochs: int) -> list[Epoch]:
    """``bnexp.launch.trainer.train`` for 1 + epochs epochs (the first is the warm-up), timed by an
    :class:`EpochTimer`. The trainer's own ``examples_per_s`` is kept as a cross-check."""
    from omegaconf import OmegaConf

    from bnexp.launch.trainer import train

    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, True)
    cfg.epochs = 1 + epochs
    timer = EpochTimer(data.train_x.device)
    with tempfile.TemporaryDirectory(prefix="bench_train-") as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        train(cfg, [], run_dir=run_dir, progress=False, callbacks=[timer])
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    reported = [r["examples_per_s"] for r in sorted((r for r in records if r["kind"] == "epoch"),
                                                   key=lambda r: r["epoch"])]
    n = len(data.train_x) - (1 if cfg.norm.kind != "none" and len(data.train_x) % cfg.batch_size == 1 else 0)
    return [Epoch(n, wall, cpu, rate, log_wall, log_cpu, diag_wall, diag_cpu)
            for (wall, cpu, log_wall, log_cpu, diag_wall, diag_cpu), rate in zip(timer.epochs[1:], reported[1:])]


# --- measuring and reporting -----------------------------------------------------------------------


def paired_ratio(num: Variant, den: Variant, clock: str) -> tuple[float, float, float]:
    """Median, min and max over repeats of num's rate / den's rate in the same repeat."""
    ratios = [num.repeat_rate(i, clock) / den.repeat_rate(i, clock) for i in range(len(num.repeats))]
    return statistics.median(ratios), min(ratios), max(ratios)


def bench_batch_size(args, base_overrides: list[str], data_dir: Path, batch_size: int, console) -> dict:
    from bnexp.config.compose import load
    from bnexp.data.datasets import load_dataset

    def config(log_every: int, hist_every: int, extra: tuple[str, ...] = ()):
        cfg = load(base_overrides + [f"batch_size={batch_size}", f"log_every_steps={log_every}",
                                     f"hist_every_steps={hist_every}", *extra])
        cfg.dataset.path = str(data_dir)  # set after composing: no override-grammar quoting of the path
        return cfg

    cfg_scalars = config(args.log_every, 0)
    cfg_quiet = config(QUIET_LOG_EVERY, 0)
    cfg_full = config(args.log_every, args.hist_every)
    cfg_probes = config(args.log_every, 0, tuple(PROBES))
    cfg_custom = config(args.log_every, args.hist_every, ("norm=custom",))
    device = torch.device(args.device)
    data = load_dataset(cfg_scalars.dataset, device)  # the trainer's own split: the same images for all

    runners = {
        "course": (f"notes: PIL+ToTensor+Normalize per sample, DataLoader(workers={args.workers}), loss.item()",
                   lambda: run_course(cfg_scalars, data, device, args.epochs, args.workers)),
        "bare": ("pre-normalized pre-batched tensors; no shuffle, metrics or logging",
                 lambda: run_bare(cfg_scalars, data, device, args.epochs)),
        "lightning": (f"Lightning Trainer + TensorBoardLogger (log every {args.log_every} steps), "
                      "DataLoader(shuffle) over a TensorDataset",
                      lambda: run_lightning(cfg_scalars, data, device, args.epochs, args.log_every)),
        "bnexp": (f"train(): scalars every {args.log_every} steps, histograms off",
                  lambda: run_bnexp(cfg_scalars, data, args.epochs)),
        "bnexp-quiet": ("train(): no step logging (log_every_steps=1e9, hist_every_steps=0)",
                        lambda: run_bnexp(cfg_quiet, data, args.epochs)),
        "bnexp-full": (f"train(): scalars every {args.log_every}, histograms and gradient telemetry every "
                       f"{args.hist_every} steps",
                       lambda: run_bnexp(cfg_full, data, args.epochs)),
        "bnexp-custom": ("bnexp-full with norm=custom (bnexp's BatchNorm)",
                         lambda: run_bnexp(cfg_custom, data, args.epochs)),
        "bnexp-probes": (f"train(): scalars every {args.log_every}, BN-science probes on ({' '.join(PROBES)})",
                         lambda: run_bnexp(cfg_probes, data, args.epochs)),
    }
    names = [n for n in runners if (args.variants is None or n in args.variants)
             and not (n == "lightning" and lightning_missing())]
    variants = {n: Variant(n, runners[n][0]) for n in names}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: no variant always first or last
        for name in order:
            started = time.perf_counter()
            variants[name].repeats.append(runners[name][1]())
            console.log(f"batch {batch_size} repeat {r + 1}/{args.repeats} {name:<11} "
                        f"{variants[name].repeat_rate(r, 'wall'):>7,.0f} ex/s wall "
                        f"{variants[name].repeat_rate(r, 'cpu'):>7,.0f} ex/CPU-s "
                        f"({time.perf_counter() - started:.0f} s with setup)", highlight=False)
    return {"batch_size": batch_size, "train_examples": len(data.train_x), "variants": variants}


def report(args, results: list[dict], settings: dict, console) -> list[dict]:
    from rich.table import Table

    clock, other = args.clock, ("wall" if args.clock == "cpu" else "cpu")
    unit = {"wall": "ex/s", "cpu": "ex/CPU-s"}
    settings_table = Table(title="settings", show_header=False, box=None, title_justify="left")
    for key, value in settings.items():
        settings_table.add_row(f"[bold]{key}", str(value))
    console.print(settings_table)

    checks = []
    for res in results:
        vs = res["variants"]
        table = Table(title=f"training throughput, batch {res['batch_size']}, {res['train_examples']:,} train images "
                            f"(median over timed epochs; ratios: median of per-repeat ratios; {clock} clock)",
                      title_justify="left")
        for col in ("variant", "what", unit[clock], "min..max", unit[other], "vs course", "vs bare", "vs lightning",
                    "in log calls", "val diagnostics"):
            table.add_column(col, justify="left" if col in ("variant", "what") else "right")
        for v in vs.values():
            rates = v.rates(clock)
            ratio = {ref: (f"{paired_ratio(v, vs[ref], clock)[0]:.2f}x" if ref in vs else "-")
                     for ref in ("course", "bare", "lightning")}
            trainer = v.name.startswith("bnexp")
            share = f"{v.log_share(clock):.1%}" if trainer else "-"
            diagnostics = f"{v.diagnostics_share(clock):.1%}" if trainer else "-"
            table.add_row(v.name, v.what, f"{statistics.median(rates):,.0f}", f"{min(rates):,.0f}..{max(rates):,.0f}",
                          f"{statistics.median(v.rates(other)):,.0f}", ratio["course"], ratio["bare"],
                          ratio["lightning"], share, diagnostics)
        console.print(table)

        target_table = Table(title=f"targets, batch {res['batch_size']} ({clock} clock: median, min..max over "
                                   f"{args.repeats} repeat(s); column '{other}': the median on the {other} clock)",
                             title_justify="left")
        for col in ("check", "measured", "range", other, "target", "verdict"):
            target_table.add_column(col, justify="left" if col == "check" else "right")

        def add(label, value, text, span, alt_text, target, met, rng):
            verdict = "-" if met is None else ("[green]met" if met else "[red]NOT met")
            target_text = "-" if target is None else (f">= {target:g}x" if "vs" in label else f"<= {target:.0%}")
            target_table.add_row(label, text, span, alt_text, target_text, verdict)
            checks.append({"batch_size": res["batch_size"], "check": label, "clock": clock, "value": value,
                           "range": rng, "target": target, "met": met})

        rows = [(label, *spec) for label, spec in TARGETS.items()]
        rows.append(("logging overhead (scalars only)", "bnexp", "bnexp-quiet", "overhead<=", None))
        rows.append(("BN-science probes on (cost)", "bnexp-probes", "bnexp", "overhead<=", None))
        for label, num, den, kind, target in rows:
            if num not in vs or den not in vs:
                continue
            mid, lo, hi = paired_ratio(vs[num], vs[den], clock)
            alt = paired_ratio(vs[num], vs[den], other)[0]
            if kind == "ratio>=":
                add(label, mid, f"{mid:.2f}x", f"{lo:.2f}..{hi:.2f}x", f"{alt:.2f}x", target, mid >= target, [lo, hi])
            else:  # overhead = 1 - (throughput with logging) / (throughput without), end to end
                add(label + ", end to end", 1 - mid, f"{1 - mid:+.1%}", f"{1 - hi:+.1%}..{1 - lo:+.1%}",
                    f"{1 - alt:+.1%}", target, None if target is None else 1 - mid <= target, [1 - hi, 1 - lo])
        if "bnexp-full" in vs:  # the same overhead measured inside each epoch: insensitive to drift between runs
            full = vs["bnexp-full"]
            shares = [e.log_share(clock) for rep in full.repeats for e in rep]
            value = full.log_share(clock)
            add("logging overhead (full), time in log calls", value, f"{value:.1%}",
                f"{min(shares):.1%}..{max(shares):.1%}", f"{full.log_share(other):.1%}", TARGETS[
                    "logging overhead (full)"][3], value <= TARGETS["logging overhead (full)"][3],
                [min(shares), max(shares)])
        console.print(target_table)
    return checks


def summary(checks: list[dict], batch_sizes: list[int], console) -> None:
    """Every check of every batch size side by side: the figures of the README's table in one place."""
    from rich.table import Table

    table = Table(title="all ratios side by side (median, min..max over repeats)", title_justify="left")
    table.add_column("check")
    for b in batch_sizes:
        table.add_column(f"batch {b}", justify="right")
    table.add_column("target", justify="right")
    labels = list(dict.fromkeys(c["check"] for c in checks))
    for label in labels:
        cells, target = [], "-"
        for b in batch_sizes:
            check = next((c for c in checks if c["check"] == label and c["batch_size"] == b), None)
            if check is None:
                cells.append("-")
                continue
            overhead = "vs" not in label  # a share (overhead, cost), as the per-batch table shows it
            lo, hi = check["range"]
            text = (f"{check['value']:.1%} ({lo:.1%}..{hi:.1%})" if overhead
                    else f"{check['value']:.2f}x ({lo:.2f}..{hi:.2f})")
            if check["met"] is not None:
                text = f"[green]{text}" if check["met"] else f"[red]{text}"
            cells.append(text)
            if check["target"] is not None:
                target = f"<= {check['target']:.0%}" if overhead else f">= {check['target']:g}x"
        table.add_row(label, *cells, target)
    console.print(table)


def main(argv=None) -> int:
    args = parse_args(argv)
    data_dir = check_data(args.data)

    import torchvision
    from rich.console import Console

    from bnexp.config.compose import load
    from bnexp.core.errors import BnexpError

    console = Console(width=max(Console().width, 130))
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_train: --device cuda: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "auto":  # CPU time measures the work when one thread does it; on a GPU it does not
        args.clock = "cpu" if args.device == "cpu" and torch.get_num_threads() == 1 else "wall"
    base = [f"model={args.model}", f"norm={args.norm}", "dataset=idx", "dataset.val_fraction=0.2",
            "optimizer=sgd", f"device={args.device}", "checkpoint=false"]
    if args.threads:
        base.append(f"threads={args.threads}")
    if args.recalibrate_batches is not None:
        base.append(f"recalibrate_batches={args.recalibrate_batches}")
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        cfg = load(base)
        results = [bench_batch_size(args, base, data_dir, b, console) for b in args.batch_size]
    except BnexpError as exc:
        sys.exit(f"bench_train: {exc}")

    hw = torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    settings = {
        "command": " ".join([Path(sys.executable).name, "scripts/bench_train.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "model": f"{cfg.model.name} channels={list(cfg.model.channels)} hidden={list(cfg.model.hidden_sizes)} "
                 f"activation={cfg.model.activation}, norm={cfg.norm.kind}",
        "optimizer": f"{cfg.optimizer.name} lr={cfg.optimizer.lr} momentum={cfg.optimizer.momentum}, "
                     f"schedule={cfg.optimizer.schedule}",
        "data": f"{data_dir} (dataset=idx, val_fraction=0.2, split_seed={cfg.dataset.split_seed})",
        "batch sizes": ", ".join(map(str, args.batch_size)),
        "BN diagnostics": f"recalibrate_batches={cfg.recalibrate_batches} (after each epoch, not timed in it)",
        "timing": f"{args.repeats} interleaved repeat(s), each variant: fresh model, 1 warm-up + {args.epochs} timed "
                  f"epoch(s); clock for ratios: {args.clock}",
        "device": f"{args.device} ({hw}), torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
                  f"load avg {load_before:.1f} -> {os.getloadavg()[0]:.1f}",
        "versions": f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
                    f"python {platform.python_version()}",
        "wall time": f"{time.perf_counter() - started:.0f} s",
    }
    missing = lightning_missing()
    if missing:
        settings["lightning"] = f"skipped: {missing}"
    else:
        import lightning

        settings["versions"] += f", lightning {lightning.__version__}"
    checks = report(args, results, settings, console)
    summary(checks, args.batch_size, console)
    if missing:
        console.print(f"[yellow]note: the Lightning column was skipped: {missing}")
    if os.getloadavg()[0] > (os.cpu_count() or 1) and args.device == "cpu":
        console.print(f"[yellow]note: the machine was busy (load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
                      f"CPUs): wall-clock rates are depressed and noisy; the CPU-time clock is the steadier one.")
    if args.json:
        payload = {"settings": settings, "checks": checks, "results": [
            {"batch_size": r["batch_size"], "train_examples": r["train_examples"],
             "variants": {n: {"what": v.what, "repeats": [[asdict(e) for e in rep] for rep in v.repeats]}
                          for n, v in r["variants"].items()}}
            for r in results]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
