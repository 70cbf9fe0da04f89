"""Variants of batch norm for the experiments of docs/bn-science.md: batch renormalization, frozen
batch norm and batch norm with injected noise.

* :class:`BatchRenorm1d`/``2d`` (``norm=batch_renorm``; Ioffe 2017, "Batch Renormalization: Towards
  Reducing Minibatch Dependence in Batch-Normalized Models"). In training,
  ``y = gamma * ((x - mu_B) / sigma_B * r + d) + beta`` with ``r = clip(sigma_B / sigma, 1/rmax, rmax)``
  and ``d = clip((mu_B - mu) / sigma, -dmax, dmax)`` treated as constants (no gradient), where
  ``mu``, ``sigma = sqrt(running_var + eps)`` are the running statistics *before* this batch's
  update. Since r and d are constants this is batch norm with weight ``gamma * r`` and bias
  ``beta + gamma * d``, so the layer runs bnexp's own batch-norm kernel (:func:`bnexp.nn.batchnorm.batch_norm`)
  with those: its statistics, closed-form backward and running-stat update are the custom BN's, and
  with ``rmax=1, dmax=0`` (r = 1, d = 0 exactly) it *is* the custom BN. Evaluation is plain BN with
  the running statistics. Warm-up as in the paper: r = 1, d = 0 for ``warmup_steps`` training
  forwards, then ``rmax`` and ``dmax`` grow linearly from 1 and 0 to their values over
  ``relax_steps``. The layer counts how often r and d hit their limits (:meth:`BatchRenorm1d.clip_rates`).
* :class:`FrozenBatchNorm` (``norm=frozen``; detectron2's ``FrozenBatchNorm2d``): fixed statistics
  and affine, ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` in training as
  in evaluation, nothing learned (all four are buffers). Loaded from a BN checkpoint it freezes a
  trained BN; from scratch it is an identity up to ``1/sqrt(1 + eps)``.
* :class:`NoisyNorm` (``norm.noise=s``; Santurkar et al. 2018, sec. 2.1): after the wrapped norm, in
  training, each channel is scaled and shifted by noise drawn anew at every forward,
  ``y = exp(s * u) * norm(x) + s * v`` with ``u, v ~ N(0, 1)`` per channel: a non-zero mean and
  non-unit variance that change at every step, i.e. a deliberately increased covariate shift after
  the normalization. Evaluation is the wrapped norm alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnexp.nn.batchnorm import BatchNorm1d, BatchNorm2d, _add_layer_prefix, _BatchNorm, _drop_layer_prefix, batch_norm


class _BatchRenorm(_BatchNorm):
    """Batch renormalization on the custom BN's parameters, buffers and kernel (see the module doc)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, rmax: float = 3.0, dmax: float = 5.0,
                 warmup_steps: int = 0, relax_steps: int = 0, ghost_batch_size: int | None = None) -> None:
        if not (rmax >= 1 and dmax >= 0):
            raise ValueError(f"batch renorm needs rmax >= 1 and dmax >= 0, got rmax={rmax}, dmax={dmax}")
        if warmup_steps < 0 or relax_steps < 0:
            raise ValueError(f"warmup_steps and relax_steps must be >= 0, got {warmup_steps}, {relax_steps}")
        if not track_running_stats:
            raise ValueError("batch renorm corrects towards the running statistics: track_running_stats must be True")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         ghost_batch_size=ghost_batch_size)
        self.rmax, self.dmax = float(rmax), float(dmax)
        self.warmup_steps, self.relax_steps = int(warmup_steps), int(relax_steps)
        # clip counters since the last clip_rates(): channels whose r / d hit a limit, channels seen
        self.register_buffer("clip_counts", torch.zeros(3, device=device), persistent=False)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}, warmup_steps={self.warmup_steps}, "
                f"relax_steps={self.relax_steps}")

    def limits(self, step: int) -> tuple[float, float]:
        """``(rmax, dmax)`` after ``step`` training forwards: (1, 0) during the warm-up, then linear
        growth to the configured values over ``relax_steps``."""
        if step < self.warmup_steps:
            return 1.0, 0.0
        grown = 1.0 if self.relax_steps == 0 else min(1.0, (step - self.warmup_steps) / self.relax_steps)
        return 1.0 + grown * (self.rmax - 1.0), grown * self.dmax

    def clip_rates(self) -> dict[str, float]:
        """Fractions of channel-steps whose r and d were clipped since the last call (then reset)."""
        r, d, seen = self.clip_counts.tolist()
        self.clip_counts.zero_()
        return {} if seen == 0 else {"r_clip": r / seen, "d_clip": d / seen}

    def _forward_batch(self, input: Tensor) -> Tensor:
        if not self.training:
            return super()._forward_batch(input)
        rmax, dmax = self.limits(int(self.num_batches_tracked))
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        with torch.no_grad():
            var, mean = torch.var_mean(input.detach(), dim=(0, *range(2, input.dim())), unbiased=False)
            sigma = (self.running_var + self.eps).sqrt()
            ratio = (var + self.eps).sqrt() / sigma
            offset = (mean - self.running_mean) / sigma
            r, d = ratio.clamp(1.0 / rmax, rmax), offset.clamp(-dmax, dmax)
            self.clip_counts += torch.stack([(r != ratio).sum(), (d != offset).sum(),
                                             torch.tensor(float(r.numel()), device=r.device)]).to(self.clip_counts)
        if self.weight is None:  # affine=False
            weight, bias = r, d
        else:
            weight = self.weight * r
            bias = self.weight * d if self.bias is None else torch.addcmul(self.bias, self.weight, d)
        return batch_norm(input, self.running_mean, self.running_var, weight, bias, True, factor, self.eps)


class BatchRenorm1d(_BatchRenorm, BatchNorm1d):
    """Batch renormalization over (N, C) or (N, C, L) inputs."""


class BatchRenorm2d(_BatchRenorm, BatchNorm2d):
    """Batch renormalization over (N, C, H, W) inputs."""


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics and affine (all buffers): the same map in training and evaluation."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    def forward(self, input: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        shape = (1, -1, *([1] * (input.dim() - 2)))
        return input * scale.view(shape).to(input.dtype) + shift.view(shape).to(input.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # a BN checkpoint loads into the frozen layer
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class NoisyNorm(nn.Module):
    """``layer`` followed, in training, by a random per-channel scale ``exp(noise * u)`` and shift
    ``noise * v`` (``u, v ~ N(0, 1)``, drawn at every forward). Transparent in ``state_dict`` like
    :class:`bnexp.nn.batchnorm.GhostBatchNorm`."""

    def __init__(self, layer: nn.Module, noise: float) -> None:
        super().__init__()
        if not noise > 0:
            raise ValueError(f"noise must be > 0, got {noise}")
        self.layer, self.noise = layer, float(noise)
        self.register_state_dict_post_hook(_drop_layer_prefix)
        self.register_load_state_dict_pre_hook(_add_layer_prefix)

    def extra_repr(self) -> str:
        return f"noise={self.noise}"

    def forward(self, input: Tensor) -> Tensor:
        out = self.layer(input)
        if not self.training:
            return out
        shape = (1, out.shape[1], *([1] * (out.dim() - 2)))
        scale = torch.randn(shape, device=out.device, dtype=out.dtype).mul_(self.noise).exp_()
        shift = torch.randn(shape, device=out.device, dtype=out.dtype).mul_(self.noise)
        return torch.addcmul(shift, out, scale)


def batch_renorm(norm_cfg, spatial: bool, num_features: int) -> nn.Module:
    """The ``norm=batch_renorm`` site (builder of its :data:`bnexp.config.groups.NORMS` entry)."""
    return (BatchRenorm2d if spatial else BatchRenorm1d)(
        num_features, eps=norm_cfg.eps, momentum=norm_cfg.momentum, rmax=norm_cfg.rmax, dmax=norm_cfg.dmax,
        warmup_steps=norm_cfg.warmup_steps, relax_steps=norm_cfg.relax_steps,
        ghost_batch_size=norm_cfg.ghost_batch_size or None)


def frozen_batch_norm(norm_cfg, spatial: bool, num_features: int) -> nn.Module:
    """The ``norm=frozen`` site (builder of its :data:`bnexp.config.groups.NORMS` entry)."""
    return FrozenBatchNorm(num_features, eps=norm_cfg.eps)
