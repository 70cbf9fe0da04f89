"""What a run reports to TensorBoard while it trains: a listener of the loop (bnexp.engine.callbacks).

TensorBoard tags written into the run directory:

    train/loss, train/acc, train/lr, train/examples_per_s      every ``log_every_steps``
    val/loss, val/acc (and val/<metric> of the BN diagnostics), epoch/train_loss, epoch/train_acc,
    epoch/examples_per_s                                        every epoch (x = global step)
    activations/<site>/input, activations/<site>/output         histograms every ``hist_every_steps``
    gamma/<site>, beta/<site>, running_mean/<site>, running_var/<site>   histograms, same interval
    gamma_channels/<site>/cNNN, beta_channels/<site>/cNNN       per-channel scalars (first ``log_channels``)
    final/*                                                     metrics of the HParams entry
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from bnexp.config.compose import flatten
from bnexp.core.vocab import is_plumbing
from bnexp.engine.callbacks import Callback
from bnexp.nn.models import norm_layers
from bnexp.store.files import NORM_PARAMS_FILE, write_json

PERCENTILES = (15, 50, 85)
HISTOGRAM_SAMPLE = 2048  # values per activation histogram: plenty for 30 buckets and 3 percentiles, cheap to bin
# Buckets per TensorBoard histogram. The writer's default ("tensorflow": ~1,500 exponential edges) makes
# ~5 KB events, and tensorboard (without TensorFlow) checksums every event byte by byte in pure Python
# (CRC-32C): at hist_every_steps=50 that alone cost ~4 % of CPU training time. TensorBoard redraws
# histograms with 30 buckets anyway.
HISTOGRAM_BINS = 64
FINAL_METRICS = ("val_acc", "best_val_acc", "val_loss", "train_loss", "train_acc")


def sample(values: torch.Tensor) -> torch.Tensor:
    """A strided subsample of at most HISTOGRAM_SAMPLE values, as float32 on the CPU."""
    flat = values.reshape(-1)
    stride = max(1, math.ceil(flat.numel() / HISTOGRAM_SAMPLE))
    return flat[::stride].float().cpu()


def percentiles(values: torch.Tensor) -> dict[str, float]:
    if values.numel() == 0:
        return {}
    qs = np.percentile(values.numpy().astype(np.float64), PERCENTILES)  # a CPU sample (see sample)
    return {f"p{p}": float(q) for p, q in zip(PERCENTILES, qs)}


class NormProbe:
    """Forward hooks on every norm site; on steps whose ``loop.hist_due`` is set they keep each
    site's input and output."""

    def __init__(self, model, loop_flag):
        self.due = loop_flag  # a callable: is this step recorded?
        self.captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, module in norm_layers(model):
            module.register_forward_hook(self._keep(name))

    def _keep(self, name: str):
        def hook(_module, inputs, output):
            if self.due() and torch.is_grad_enabled():
                self.captured[name] = (inputs[0].detach(), output.detach())
        return hook

    def take(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        captured, self.captured = self.captured, {}
        return captured


def norm_tensors(module) -> dict[str, torch.Tensor]:
    """A norm site's gamma, beta and running statistics (those it has; a GhostBatchNorm wrapper's
    are its layer's)."""
    module = getattr(module, "layer", module)
    found = {"gamma": getattr(module, "weight", None), "beta": getattr(module, "bias", None),
             "running_mean": getattr(module, "running_mean", None),
             "running_var": getattr(module, "running_var", None)}
    return {k: v for k, v in found.items() if v is not None}


class Telemetry(Callback):
    """The TensorBoard writer of one run, and the probes and summaries that feed it.

    Also writes the activation percentiles (``kind: activation``) to metrics.jsonl, which the report
    draws, and ``norm_params.json`` when the run ends.
    """

    def __init__(self, run, cfg: DictConfig, model, purge_step: Optional[int] = None):
        """``purge_step``: a continued run drops the events its first run wrote after its checkpoint."""
        from torch.utils.tensorboard import SummaryWriter

        self.run, self.cfg, self.model = run, cfg, model
        self.log_channels = int(cfg.log_channels)
        # a deep queue: the writer thread checksums events in pure Python; training should not wait on it
        self.writer = SummaryWriter(log_dir=str(run.path), purge_step=purge_step, max_queue=1000, flush_secs=10)
        if purge_step is None:
            self.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg, resolve=True) + "\n```", 0)
        self.probe: Optional[NormProbe] = None

    def on_start(self, loop):
        self.probe = NormProbe(self.model, lambda: loop.hist_due)

    def on_log(self, loop, log):
        for key in ("loss", "acc", "lr", "examples_per_s"):
            self.writer.add_scalar(f"train/{key}", getattr(log, key), log.step)

    def on_step(self, loop):
        if loop.hist_due:
            self.log_histograms(loop.progress.step, loop.epoch)

    def on_epoch(self, loop, record):
        step = record["step"]
        for key, value in record.items():
            if key.startswith("val_") and isinstance(value, float):
                self.writer.add_scalar("val/" + key[4:], value, step)
        for key in ("train_loss", "train_acc", "examples_per_s"):
            self.writer.add_scalar(f"epoch/{key}", record[key], step)

    def log_histograms(self, step: int, epoch: int) -> None:
        """Activations at every norm site (input and output: the activation's input) and the BN
        parameters and buffers; percentile bands go to metrics.jsonl for the report."""
        w = self.writer
        for site, (before, after) in self.probe.take().items():
            sample_in, sample_out = sample(before), sample(after)
            w.add_histogram(f"activations/{site}/input", sample_in, step, bins=HISTOGRAM_BINS)
            w.add_histogram(f"activations/{site}/output", sample_out, step, bins=HISTOGRAM_BINS)
            unit0 = sample(after[:, 0])
            self.run.log({"kind": "activation", "step": step, "epoch": epoch, "site": site,
                          "input": percentiles(sample_in), "output": percentiles(sample_out),
                          "unit0": percentiles(unit0)})
        for site, module in norm_layers(self.model):
            for name, tensor in norm_tensors(module).items():
                w.add_histogram(f"{name}/{site}", tensor.detach().float().cpu(), step, bins=HISTOGRAM_BINS)
                if name in ("gamma", "beta"):
                    for c, value in enumerate(tensor[: self.log_channels].tolist()):
                        w.add_scalar(f"{name}_channels/{site}/c{c:03d}", value, step)

    def norm_params(self) -> dict[str, dict[str, list[float]]]:
        return {site: {name: t.detach().float().cpu().tolist() for name, t in norm_tensors(m).items()}
                for site, m in norm_layers(self.model)}

    def on_end(self, loop, outcome):
        try:
            if outcome.status in ("completed", "diverged"):
                self.write_hparams(loop.progress.metrics, outcome.status)
                write_json(self.run.path / NORM_PARAMS_FILE, self.norm_params())
        finally:
            self.writer.close()

    def write_hparams(self, metrics: dict, status: str) -> None:
        """The HParams entry, written into this run's own event file (not a sub-run, unlike
        ``SummaryWriter.add_hparams``): flattened config as hparams, final metrics as metrics.
        The table's columns (the *experiment*) are not written per run: TensorBoard uses one
        experiment per logdir, picked arbitrarily among several, so a sweep writes one for its jobs
        and ``bnexp tensorboard`` one for its selection (see :mod:`bnexp.views.dashboard`)."""
        from torch.utils.tensorboard.summary import hparams

        params = {k: ("null" if v is None else v) for k, v in flatten(self.cfg).items() if not is_plumbing(k)}
        params["status"] = status
        final = {f"final/{k}": float(metrics[k]) for k in FINAL_METRICS if k in metrics}
        _, session_start, session_end = hparams(params, final)
        for summary in (session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        step = int(metrics.get("step", 0))
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, step)
