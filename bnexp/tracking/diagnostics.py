"""BN diagnostics: listeners of the training loop that measure what batch norm does beyond the
activations Telemetry logs. :func:`diagnostics` picks those a run's config asks for.

Train/eval gap (:class:`TrainEvalGap`, runs with BN): after each epoch's validation with running
statistics (``val_acc``), the same validation set is scored twice more and added to the epoch
entry (metrics.jsonl, run.json, TensorBoard ``val/<rest>``):

    val_loss_batch_stats, val_acc_batch_stats        BN in training mode: each evaluation batch
                                                     (``eval_batch_size``) normalized by its own statistics
    val_loss_recalibrated, val_acc_recalibrated      running statistics recomputed ("precise BN") over
                                                     ``recalibrate_batches`` training batches, then eval mode

Recalibration (:func:`recalibrate`) is fvcore's ``update_bn_stats`` / torch's
``swa_utils.update_bn``: no gradients, every BN layer's running statistics reset and re-estimated as
the plain average over the batches (``momentum=None``) instead of the exponential average training
leaves behind. The listener does it on the model's own buffers and puts them back afterwards, so
training goes on exactly as without it; the batches are a seeded draw of their own
(:func:`recalibration_indices`), independent of the training shuffle, so a continued run gets the
same numbers as an uninterrupted one.

Gradients and effective learning rate (:class:`GradientTelemetry`, every run with histograms on),
at every ``hist_every_steps`` step, per norm site (``normK``) and the conv/linear layer before it:

    grad_norm/<site>, weight_norm/<site>     ||dL/dW|| and ||W|| of the preceding layer's weight
    effective_lr/<site>                      lr / ||W||^2: the step size of a layer that BN makes
                                             scale-invariant (van Laarhoven 2017; Hoffer et al. 2018)
    gamma_grad_norm/<site>, beta_grad_norm/<site>    (runs with BN)
    grad/<site>                              histogram of dL/d(norm input), the pre-activation gradient

The weight norm and lr are taken at the forward (the weights and rate of that step); the gradients
once the step is done. The same numbers go to metrics.jsonl as ``kind: grad`` entries.
"""

from __future__ import annotations

from typing import Optional

import torch
from omegaconf import DictConfig
from torch import nn

from bnexp.config.groups import NORMS
from bnexp.engine.callbacks import Callback
from bnexp.engine.recalibrate import buffers_restored, recalibrate, recalibration_batches
from bnexp.nn.models import norm_layers
from bnexp.tracking.probes import ScienceProbes, running_stat_error, site_stat_layers
from bnexp.tracking.sinks import Measurements


def diagnostics(cfg: DictConfig, model, out: Optional[Measurements]) -> list[Callback]:
    """The diagnostic listeners for this run: the train/eval gap for norms with running statistics,
    gradient telemetry when histograms are on; each measures into ``out``."""
    listeners: list[Callback] = []
    if NORMS[cfg.norm.kind].running_stats:
        listeners.append(TrainEvalGap(int(cfg.recalibrate_batches), out))
    if cfg.hist_every_steps:
        listeners.append(GradientTelemetry(model, out))
    if ScienceProbes.wanted(cfg, model):
        listeners.append(ScienceProbes(cfg, model, out))
    return listeners


# --- recalibration ("precise BN") -----------------------------------------------------------------


class TrainEvalGap(Callback):
    """Validation with batch statistics and, when ``recalibrate_batches`` > 0, with recalibrated
    running statistics: how far the running estimate is from what the network was trained with.

    The recalibration also gives the running-statistics error (:func:`bnexp.tracking.probes.running_stat_error`)
    of each site: ``running_mean_err``/``running_var_err`` in the epoch entry (mean over sites), per
    site as ``kind: running_stats`` entries and ``running_stats/{mean_err,var_err}/<site>`` scalars
    when ``out`` is given."""

    def __init__(self, recalibrate_batches: int, out: Optional[Measurements] = None):
        self.batches, self.out = recalibrate_batches, out

    def on_validation(self, loop) -> dict:
        devices = [loop.device] if loop.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # noisy BN draws in train mode: keep the training RNG as it was
            return self.measure(loop)

    def measure(self, loop) -> dict:
        from bnexp.engine.evaluate import evaluate

        cfg, data, model = loop.cfg, loop.data, loop.module
        metrics = {}
        if len(data.val_x) >= 2:  # batch statistics of a single example do not exist
            loss, acc = evaluate(model, data, data.val_x, data.val_y, cfg.eval_batch_size, batch_stats=True)
            metrics.update(val_loss_batch_stats=loss, val_acc_batch_stats=acc)
        if self.batches:
            layers = site_stat_layers(model)
            ema = {site: (m.running_mean.clone(), m.running_var.clone()) for site, m in layers.items()}
            with buffers_restored(model):
                recalibrate(model, recalibration_batches(data, cfg.batch_size, cfg.seed, loop.epoch, self.batches))
                loss, acc = evaluate(model, data, data.val_x, data.val_y, cfg.eval_batch_size)
                metrics.update(self.stat_errors(loop, layers, ema))
            metrics.update(val_loss_recalibrated=loss, val_acc_recalibrated=acc)
        return metrics

    def stat_errors(self, loop, layers: dict, ema: dict) -> dict:
        """Running statistics (``ema``, kept before the recalibration) against the recalibrated ones."""
        per_site = {site: running_stat_error(*ema[site], m.running_mean, m.running_var) for site, m in layers.items()}
        for site, errors in per_site.items():
            if self.out is not None:
                self.out.entry({"kind": "running_stats", "step": loop.progress.step, "epoch": loop.epoch,
                                "site": site, **errors})
                self.out.scalars({f"running_stats/{name}/{site}": value for name, value in errors.items()},
                                 loop.progress.step)
        if not per_site:
            return {}
        return {f"running_{name}": sum(e[name] for e in per_site.values()) / len(per_site)
                for name in ("mean_err", "var_err")}


# --- gradients and effective learning rate -------------------------------------------------------


def preceding_layers(model) -> dict[str, nn.Module]:
    """Each norm site's preceding conv/linear layer (the module just before it in the Sequential)."""
    names = list(model._modules)
    found = {}
    for site, _ in norm_layers(model):
        before = model._modules[names[names.index(site) - 1]]
        if isinstance(getattr(before, "weight", None), torch.Tensor):
            found[site] = before
    return found


def affine_parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    """A norm site's gamma and beta (a GhostBatchNorm wrapper's are its layer's)."""
    params = dict(module.named_parameters())
    found = {"gamma": params.get("weight", params.get("layer.weight")),
             "beta": params.get("bias", params.get("layer.bias"))}
    return {k: v for k, v in found.items() if v is not None}


class GradientTelemetry(Callback):
    """Gradient and effective-LR scalars and pre-activation gradient histograms on histogram steps
    (``loop.hist_due``), handed to ``out``; its hooks are removed when the run ends."""

    def __init__(self, model, out: Measurements):
        self.model, self.out = model, out
        self.layers = preceding_layers(model)
        self.sites = [site for site, _ in norm_layers(model)]
        self.handles: list = []
        self.at_forward: dict[str, tuple[float, torch.Tensor]] = {}  # site -> (lr, ||W||) of the step
        self.input_grads: dict[str, torch.Tensor] = {}  # site -> sample of dL/d(norm input)

    def on_start(self, loop):
        for site, module in norm_layers(self.model):
            self.handles.append(module.register_forward_hook(self._capture(site, loop)))

    def _capture(self, site: str, loop):
        layer = self.layers.get(site)

        def hook(_module, inputs, _output):
            if not (loop.hist_due and torch.is_grad_enabled()):
                return
            if layer is not None:
                self.at_forward[site] = (loop.optimizer.param_groups[0]["lr"], layer.weight.detach().norm())
            x = inputs[0]
            if x.requires_grad:
                x.register_hook(lambda grad: self._keep_grad(site, grad))
        return hook

    def _keep_grad(self, site: str, grad: torch.Tensor) -> None:
        from bnexp.tracking.telemetry import sample

        self.input_grads[site] = sample(grad)

    def on_step(self, loop):
        if loop.hist_due:
            self.log(loop.progress.step, loop.epoch)

    def log(self, step: int, epoch: int) -> None:
        at_forward, self.at_forward = self.at_forward, {}
        input_grads, self.input_grads = self.input_grads, {}
        for site in self.sites:
            grad = input_grads.get(site)
            if grad is not None:
                self.out.histogram(f"grad/{site}", grad, step)
            norms: dict[str, torch.Tensor] = {}
            layer = self.layers.get(site)
            if site in at_forward and layer.weight.grad is not None:
                norms.update(grad_norm=layer.weight.grad.norm(), weight_norm=at_forward[site][1])
            for name, param in affine_parameters(getattr(self.model, site)).items():
                if param.grad is not None:
                    norms[f"{name}_grad_norm"] = param.grad.norm()
            if not norms:
                continue
            numbers = dict(zip(norms, torch.stack([v.float() for v in norms.values()]).cpu().tolist()))
            if "weight_norm" in numbers:
                numbers["effective_lr"] = at_forward[site][0] / max(numbers["weight_norm"] ** 2, 1e-30)
            self.out.scalars({f"{name}/{site}": value for name, value in numbers.items()}, step)
            entry = {"kind": "grad", "step": step, "epoch": epoch, "site": site, **numbers}
            if site in at_forward:
                entry["lr"] = at_forward[site][0]
            self.out.entry(entry)

    def on_end(self, loop, outcome):
        for handle in self.handles:
            handle.remove()
