"""What a run reports while it trains: a listener of the loop (bnexp.engine.callbacks) that measures
once and hands the numbers to the run's sinks (bnexp.tracking.sinks). The tags (TensorBoard's names;
MLflow gets the scalars under the same names):

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
from omegaconf import DictConfig

from bnexp.engine.callbacks import Callback
from bnexp.nn.models import norm_layers
from bnexp.store.files import NORM_PARAMS_FILE
from bnexp.tracking.sinks import Measurements

PERCENTILES = (15, 50, 85)
HISTOGRAM_SAMPLE = 2048  # values per activation histogram: plenty for 30 buckets and 3 percentiles, cheap to bin


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
    site's input and output. :meth:`remove` takes the hooks off (a run's end)."""

    def __init__(self, model, loop_flag):
        self.due = loop_flag  # a callable: is this step recorded?
        self.captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = [module.register_forward_hook(self._keep(name)) for name, module in norm_layers(model)]

    def _keep(self, name: str):
        def hook(_module, inputs, output):
            if self.due() and torch.is_grad_enabled():
                self.captured[name] = (inputs[0].detach(), output.detach())
        return hook

    def take(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        captured, self.captured = self.captured, {}
        return captured

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def norm_tensors(module) -> dict[str, torch.Tensor]:
    """A norm site's gamma, beta and running statistics (those it has; a GhostBatchNorm wrapper's
    are its layer's)."""
    module = getattr(module, "layer", module)
    found = {"gamma": getattr(module, "weight", None), "beta": getattr(module, "bias", None),
             "running_mean": getattr(module, "running_mean", None),
             "running_var": getattr(module, "running_var", None)}
    return {k: v for k, v in found.items() if v is not None}


class Telemetry(Callback):
    """Measures what a run reports while it trains and hands it to the run's sinks
    (:mod:`bnexp.tracking.sinks`: TensorBoard, MLflow, ... as ``logger`` says): training and
    validation scalars, activations at every norm site, the norm parameters and buffers.

    Also writes the activation percentiles (``kind: activation``) to metrics.jsonl, which the report
    draws, and ``norm_params.json`` when the run ends.
    """

    def __init__(self, cfg: DictConfig, model, out: Measurements):
        self.cfg, self.model, self.out = cfg, model, out
        self.log_channels = int(cfg.log_channels)
        self.probe: Optional[NormProbe] = None

    def on_start(self, loop):
        self.probe = NormProbe(self.model, lambda: loop.hist_due)

    def on_log(self, loop, log):
        self.out.scalars({f"train/{key}": getattr(log, key) for key in ("loss", "acc", "lr", "examples_per_s")},
                         log.step)

    def on_step(self, loop):
        if loop.hist_due:
            self.log_histograms(loop.progress.step, loop.epoch)

    def on_epoch(self, loop, entry):
        values = {"val/" + key[4:]: value for key, value in entry.items()
                  if key.startswith("val_") and isinstance(value, float)}
        values.update({f"epoch/{key}": entry[key] for key in ("train_loss", "train_acc", "examples_per_s")})
        self.out.scalars(values, entry["step"])

    def log_histograms(self, step: int, epoch: int) -> None:
        """Activations at every norm site (input and output: the activation's input) and the norm
        parameters and buffers; percentile bands go to metrics.jsonl for the report."""
        for site, (before, after) in self.probe.take().items():
            sample_in, sample_out = sample(before), sample(after)
            self.out.histogram(f"activations/{site}/input", sample_in, step)
            self.out.histogram(f"activations/{site}/output", sample_out, step)
            unit0 = sample(after[:, 0])
            self.out.entry({"kind": "activation", "step": step, "epoch": epoch, "site": site,
                            "input": percentiles(sample_in), "output": percentiles(sample_out),
                            "unit0": percentiles(unit0)})
        channels: dict[str, float] = {}
        for site, module in norm_layers(self.model):
            for name, tensor in norm_tensors(module).items():
                self.out.histogram(f"{name}/{site}", tensor.detach().float().cpu(), step)
                if name in ("gamma", "beta"):
                    for c, value in enumerate(tensor[: self.log_channels].tolist()):
                        channels[f"{name}_channels/{site}/c{c:03d}"] = value
        self.out.scalars(channels, step)

    def norm_params(self) -> dict[str, dict[str, list[float]]]:
        return {site: {name: t.detach().float().cpu().tolist() for name, t in norm_tensors(m).items()}
                for site, m in norm_layers(self.model)}

    def on_end(self, loop, outcome):
        if self.probe is not None:
            self.probe.remove()
        if outcome.status in ("completed", "diverged"):
            self.out.file(NORM_PARAMS_FILE, self.norm_params())
