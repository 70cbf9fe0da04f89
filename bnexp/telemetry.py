"""What a run reports while it trains: TensorBoard events, norm-site probes and the progress bar.

TensorBoard tags written into the run directory:

    train/loss, train/acc, train/lr, train/examples_per_s      every ``log_every_steps``
    val/loss, val/acc, epoch/train_loss, epoch/train_acc,
    epoch/examples_per_s                                        every epoch (x = global step)
    activations/<site>/input, activations/<site>/output         histograms every ``hist_every_steps``
    gamma/<site>, beta/<site>, running_mean/<site>, running_var/<site>   histograms, same interval
    gamma_channels/<site>/cNNN, beta_channels/<site>/cNNN       per-channel scalars (first ``log_channels``)
    final/*                                                     metrics of the HParams entry
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from bnexp.config import flatten
from bnexp.models import norm_layers

PERCENTILES = (15, 50, 85)
HISTOGRAM_SAMPLE = 2048  # values per activation histogram: plenty for 30 buckets and 3 percentiles, cheap to bin
# Buckets per TensorBoard histogram. The writer's default ("tensorflow": ~1,500 exponential edges) makes
# ~5 KB events, and tensorboard (without TensorFlow) checksums every event byte by byte in pure Python
# (CRC-32C): at hist_every_steps=50 that alone cost ~4 % of CPU training time. TensorBoard redraws
# histograms with 30 buckets anyway.
HISTOGRAM_BINS = 64
HPARAM_SKIP = ("output_dir", "resume", "description", "log_every_steps", "hist_every_steps", "log_channels",
               "checkpoint", "threads", "name")


def _sample(values: torch.Tensor) -> torch.Tensor:
    """A strided subsample of at most HISTOGRAM_SAMPLE values, as float32 on the CPU."""
    flat = values.reshape(-1)
    stride = max(1, math.ceil(flat.numel() / HISTOGRAM_SAMPLE))
    return flat[::stride].float().cpu()


def _percentiles(values: torch.Tensor) -> dict[str, float]:
    if values.numel() == 0:
        return {}
    qs = np.percentile(values.numpy().astype(np.float64), PERCENTILES)  # a CPU sample (see _sample)
    return {f"p{p}": float(q) for p, q in zip(PERCENTILES, qs)}


class NormProbe:
    """Forward hooks on every norm site; while ``armed`` they keep each site's input and output."""

    def __init__(self, model):
        self.armed = False
        self.captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, module in norm_layers(model):
            module.register_forward_hook(self._keep(name))

    def _keep(self, name: str):
        def hook(_module, inputs, output):
            if self.armed:
                self.captured[name] = (inputs[0].detach(), output.detach())
        return hook

    def take(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        captured, self.captured, self.armed = self.captured, {}, False
        return captured


class Telemetry:
    """The TensorBoard writer of one run plus the probes and summaries that feed it."""

    def __init__(self, run_dir: Path, cfg: DictConfig, model, purge_step: Optional[int] = None):
        from torch.utils.tensorboard import SummaryWriter

        self.cfg, self.model = cfg, model
        # plain ints: an OmegaConf attribute read costs ~20 us, and these are read every step
        self.hist_every, self.log_channels = int(cfg.hist_every_steps), int(cfg.log_channels)
        # a deep queue: the writer thread checksums events in pure Python; training should not wait on it
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step, max_queue=1000, flush_secs=10)
        self.probe = NormProbe(model)
        if purge_step is None:
            self.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg, resolve=True) + "\n```", 0)

    def histograms_due(self, step: int) -> bool:
        return self.hist_every > 0 and (step == 1 or step % self.hist_every == 0)

    def log_train(self, record: dict) -> None:
        for key in ("loss", "acc", "lr", "examples_per_s"):
            self.writer.add_scalar(f"train/{key}", record[key], record["step"])

    def log_epoch(self, record: dict) -> None:
        step = record["step"]
        for tag, key in (("val/loss", "val_loss"), ("val/acc", "val_acc"), ("epoch/train_loss", "train_loss"),
                         ("epoch/train_acc", "train_acc"), ("epoch/examples_per_s", "examples_per_s")):
            self.writer.add_scalar(tag, record[key], step)

    def log_histograms(self, step: int, epoch: int, run) -> None:
        """Activations at every norm site (input and output: the activation's input) and the BN
        parameters and buffers; percentile bands go to metrics.jsonl for the report."""
        w = self.writer
        for site, (before, after) in self.probe.take().items():
            sample_in, sample_out = _sample(before), _sample(after)
            w.add_histogram(f"activations/{site}/input", sample_in, step, bins=HISTOGRAM_BINS)
            w.add_histogram(f"activations/{site}/output", sample_out, step, bins=HISTOGRAM_BINS)
            unit0 = _sample(after[:, 0])
            run.log({"kind": "activation", "step": step, "epoch": epoch, "site": site,
                     "input": _percentiles(sample_in), "output": _percentiles(sample_out),
                     "unit0": _percentiles(unit0)})
        for site, module in norm_layers(self.model):
            for name, tensor in self._norm_tensors(module).items():
                w.add_histogram(f"{name}/{site}", tensor.detach().float().cpu(), step, bins=HISTOGRAM_BINS)
                if name in ("gamma", "beta"):
                    for c, value in enumerate(tensor[: self.log_channels].tolist()):
                        w.add_scalar(f"{name}_channels/{site}/c{c:03d}", value, step)

    @staticmethod
    def _norm_tensors(module) -> dict[str, torch.Tensor]:
        found = {"gamma": getattr(module, "weight", None), "beta": getattr(module, "bias", None),
                 "running_mean": getattr(module, "running_mean", None),
                 "running_var": getattr(module, "running_var", None)}
        return {k: v for k, v in found.items() if v is not None}

    def norm_params(self) -> dict[str, dict[str, list[float]]]:
        return {site: {name: t.detach().float().cpu().tolist() for name, t in self._norm_tensors(m).items()}
                for site, m in norm_layers(self.model)}

    def finish(self, metrics: dict, status: str) -> None:
        """The HParams entry, written into this run's own event file (not a sub-run, unlike
        ``SummaryWriter.add_hparams``): flattened config as hparams, final metrics as metrics.
        The table's columns (the *experiment*) are not written per run: TensorBoard uses one
        experiment per logdir, picked arbitrarily among several, so a sweep writes one for its jobs
        and ``bnexp tensorboard`` one for its selection (see :mod:`bnexp.dashboard`)."""
        from torch.utils.tensorboard.summary import hparams

        params = {k: ("null" if v is None else v) for k, v in flatten(self.cfg).items()
                  if k.split(".")[0] not in HPARAM_SKIP}
        params["status"] = status
        final = {f"final/{k}": float(metrics[k]) for k in ("val_acc", "best_val_acc", "val_loss", "train_loss",
                                                           "train_acc") if k in metrics}
        _, session_start, session_end = hparams(params, final)
        for summary in (session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        step = int(metrics.get("step", 0))
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()

    @contextlib.contextmanager
    def progress(self, total: int, done: int, enabled: bool) -> Iterator["ProgressBar"]:
        bar = ProgressBar(total, done, enabled)
        with bar.live():
            yield bar


class ProgressBar:
    """Rich progress with live loss/accuracy, and one line per finished epoch; silent when disabled."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._progress = Progress(
            TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
        )
        self._task = self._progress.add_task("train", total=total, completed=done, stats="")

    @contextlib.contextmanager
    def live(self):
        if not self.enabled:
            yield
            return
        with self._progress:
            yield

    def advance(self) -> None:
        if self.enabled:
            self._progress.advance(self._task)

    def show_train(self, record: dict) -> None:
        if self.enabled:
            self._progress.update(self._task, description=f"epoch {record['epoch']}",
                                  stats=f"loss {record['loss']:.4f} acc {record['acc']:.3f}")

    def show_epoch(self, epoch: int, epochs: int, m: dict) -> None:
        if self.enabled:
            self._progress.console.print(
                f"epoch {epoch}/{epochs}  train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f}  "
                f"val loss {m['val_loss']:.4f} acc {m['val_acc']:.4f}  {m['examples_per_s']:,.0f} ex/s"
            )
