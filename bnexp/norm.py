"""Batch normalization written from scratch, numerically interchangeable with ``torch.nn.BatchNorm*d``.

This is what ``norm=custom`` runs: Algorithm 1 of Ioffe & Szegedy (2015), "Batch Normalization:
Accelerating Deep Network Training by Reducing Internal Covariate Shift", in plain tensor ops (no
``F.batch_norm``/``torch.batch_norm``), with the same constructor, parameters, buffers, ``state_dict``
and ``repr`` as torch's modules, so a model can switch between ``norm=custom`` and ``norm=builtin``
and a checkpoint from one loads into the other with ``strict=True``::

    from bnexp.norm import BatchNorm1d, BatchNorm2d, BatchNorm3d, batch_norm

For an input with C channels the statistics are taken per channel over every other dimension
(batch and, for 2d/3d, the spatial positions); with ``m`` values per channel:

* training: ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the batch mean and the
  *biased* batch variance (divide by ``m``), then
  ``running = (1 - momentum) * running + momentum * batch_stat``, where the running variance is fed
  the *unbiased* batch variance (divide by ``m - 1``); ``momentum=None`` uses the cumulative
  average (factor ``1 / num_batches_tracked``); ``num_batches_tracked`` counts training forwards;
* evaluation: the running statistics replace the batch ones; with ``track_running_stats=False``
  there are no buffers and batch statistics are used in both modes.

Where common tutorial versions (e.g. d2l's ``batch_norm``) differ from torch, and so from this
module:

* momentum is applied to the *old* value in those versions (``new = momentum * old +
  (1 - momentum) * batch`` with ``momentum=0.9``); torch weighs the *new* batch statistic by
  ``momentum`` (default 0.1);
* they update the running variance with the biased batch variance; torch uses the unbiased one;
* they pick batch or running statistics from ``torch.is_grad_enabled()``; torch uses the module's
  ``training`` flag, so ``model.eval()`` matters and ``torch.no_grad()`` in training mode still
  normalizes with (and updates) batch statistics.

Speed (``scripts/bench_bn.py``): :class:`_BatchNormFunction` computes the forward in a handful of
passes with the output as its only full-size allocation, and its backward is the closed-form
gradient (:func:`batch_norm_backward`) rather than autograd's replay of every elementwise op. It
saves only the input (alive anyway), the parameters and two per-channel vectors, so memory stays at
builtin's level. :func:`compile_batch_norms` runs the same Function through ``torch.compile``,
which fuses the passes; that pays off only on long runs, since compiling takes tens of seconds.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor, nn

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "batch_norm",
    "batch_norm_backward",
    "compile_batch_norms",
]


# --------------------------------------------------------------------------------------------
# Functional core
# --------------------------------------------------------------------------------------------


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    """A length-C vector shaped ``(1, C, 1, ...)`` to broadcast against ``x``."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


def _channel_sum(t: Tensor) -> Tensor:
    """Per-channel sums shaped ``(1, C, 1, ...)``: over each (n, c) plane first, then over the batch.

    Two short reductions are faster than one over dims (0, 2, 3, ...) and, like torch's own
    kernels, keep the partial sums small, which keeps rounding low.
    """
    planes = t.sum(tuple(range(2, t.dim())), keepdim=True) if t.dim() > 2 else t
    return planes.sum(0, keepdim=True)


def _batch_norm_math(x: Tensor, weight: Tensor | None, bias: Tensor | None, stats, eps: float) -> Tensor:
    """Batch norm in plain differentiable ops: the reference that the fast path reproduces.

    ``stats=None`` normalizes with the batch statistics (Algorithm 1: mean, then biased variance,
    then ``(x - mean) / sqrt(var + eps) * weight + bias``); otherwise ``stats = (mean, invstd)`` are
    constants (evaluation). Autograd differentiates this for double backward.
    """
    m = x.numel() // x.shape[1]
    if stats is None:
        mean = _channel_sum(x) / m
        var = _channel_sum((x - mean).square()) / m  # biased: divided by m
        invstd = torch.rsqrt(var + eps)
    else:
        mean, invstd = stats
    scale = invstd if weight is None else invstd * _per_channel(weight, x)
    out = (x - mean) * scale
    return out if bias is None else out + _per_channel(bias, x)


def _update_running_stats(running_mean, running_var, mean: Tensor, var: Tensor, m: int, momentum) -> None:
    """``running = (1 - momentum) * running + momentum * batch`` (a lerp), fed the *unbiased* variance.

    In place, so call it without autograd (inside a Function's forward). ``momentum``: a float, or
    a 0-dim tensor on the compiled path.
    """
    if running_mean is not None:
        running_mean.lerp_(mean.view(-1).to(running_mean.dtype), momentum)
    if running_var is not None:
        running_var.lerp_((var.view(-1) * (m / (m - 1))).to(running_var.dtype), momentum)


def batch_norm_backward(
    grad_out: Tensor,
    x: Tensor,
    mean: Tensor,
    invstd: Tensor,
    weight: Tensor | None,
    training: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form gradients of batch norm: ``(grad_input, grad_weight, grad_bias)``.

    With ``dy = grad_out``, ``x_hat = (x - mean) * invstd`` and ``m`` values per channel (the sums run
    over them)::

        grad_bias   = sum(dy)
        grad_weight = sum(dy * x_hat)
        grad_input  = weight * invstd * (dy - grad_bias / m - x_hat * grad_weight / m)   # training
        grad_input  = weight * invstd * dy                                                 # evaluation

    The training line is the paper's chain rule through ``x_hat``, ``mean`` and ``var``, collapsed:
    ``dy`` minus its projections on the constant and on ``x_hat``, the two directions that
    normalizing with batch statistics removes. In evaluation the statistics are constants and
    those terms vanish. ``mean`` and ``invstd`` are shaped ``(1, C, 1, ...)``.

    ``x_hat`` is recomputed rather than saved, and everything is assembled in the buffer returned as
    ``grad_input``: its only full-size allocation, as in builtin (fresh multi-megabyte buffers cost
    page faults on CPU that can exceed the arithmetic).
    """
    m = x.numel() // x.shape[1]
    grad_bias = _channel_sum(grad_out)
    grad_input = torch.sub(x, mean)  # first as scratch for dy * (x - mean)
    dot = _channel_sum(grad_input.mul_(grad_out))  # sum(dy * (x - mean)) = grad_weight / invstd
    grad_weight = dot * invstd
    scale = invstd if weight is None else invstd * _per_channel(weight, x)
    if training:
        # scale * (dy - grad_bias/m - x_hat * grad_weight/m)
        #   = (x - mean) * (-grad_weight * invstd * scale/m) + dy * scale - grad_bias * scale/m
        torch.sub(x, mean, out=grad_input).mul_(grad_weight * invstd * scale * (-1 / m))
        grad_input.addcmul_(grad_out, scale).add_(grad_bias * scale * (-1 / m))
    else:
        torch.mul(grad_out, scale, out=grad_input)
    return grad_input, grad_weight.flatten(), grad_bias.flatten()


class _BatchNormFunction(torch.autograd.Function):
    """Batch norm with the hand-written backward of :func:`batch_norm_backward`.

    The forward is the math of :func:`_batch_norm_math`, computed outside autograd with the output
    as the only full-size allocation (its buffer first holds ``(x - mean)^2`` for the variance); in
    training it also updates the running statistics, as torch's kernel does. Saves ``x`` (alive
    anyway as the previous layer's output), the parameters and two per-channel vectors.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training: bool, momentum: float, eps: float):
        m = x.numel() // x.shape[1]
        if training:
            mean = _channel_sum(x) / m
            out = torch.sub(x, mean)
            var = _channel_sum(out.square_()) / m  # biased: divided by m
            invstd = torch.rsqrt(var + eps)
            _update_running_stats(running_mean, running_var, mean, var, m, momentum)
        else:
            mean = _per_channel(running_mean, x).clone()  # saved: a later update must not change it
            invstd = torch.rsqrt(_per_channel(running_var, x) + eps)
            out = torch.empty_like(x)
        # (x - mean) * invstd * weight + bias  ==  x * scale + shift: one multiply-add per element
        scale = invstd if weight is None else invstd * _per_channel(weight, x)
        shift = -mean * scale if bias is None else _per_channel(bias, x) - mean * scale
        torch.mul(x, scale, out=out).add_(shift)
        ctx.training, ctx.eps = training, eps
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            # create_graph=True (double backward, gradgradcheck): the gradients must themselves be
            # differentiable, so let autograd differentiate the plain-op forward instead.
            stats = None if ctx.training else (mean, invstd)
            out = _batch_norm_math(x, weight, bias, stats, ctx.eps)
            inputs = [t for t, need in zip((x, weight, bias), needs) if need]
            grads = iter(torch.autograd.grad(out, inputs, grad_out, create_graph=True))
            grads = [next(grads) if need else None for need in needs]
        else:
            grads = batch_norm_backward(grad_out, x, mean, invstd, weight, ctx.training)
            grads = [g if need else None for g, need in zip(grads, needs)]
        return (*grads, None, None, None, None, None)


def _check_arguments(x: Tensor, running_mean, running_var, weight, bias, training: bool, eps: float) -> None:
    """torch's argument checks, with messages that say what to change."""
    if x.dim() < 2:
        raise ValueError(f"batch_norm expects input of shape (N, C, ...), got {x.dim()}D input")
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (it keeps 1/sqrt(var + eps) finite), got eps={eps}")
    channels = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is not None and t.numel() != channels:
            raise ValueError(
                f"expected input with {t.numel()} channels (dim 1, the size of {name}), "
                f"got input of shape {tuple(x.shape)} with {channels}"
            )
    if training:
        if math.prod((x.shape[0], *x.shape[2:])) == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.size()}")
    elif running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var must be given in evaluation mode (training=False)")


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalization over dim 1 of ``input``; same signature and semantics as
    ``torch.nn.functional.batch_norm``.

    ``training=True`` normalizes with batch statistics and, when the running buffers are given,
    updates them in place (``momentum`` weighs the new batch; the variance fed to ``running_var``
    is unbiased). ``training=False`` normalizes with ``running_mean``/``running_var``.
    """
    _check_arguments(input, running_mean, running_var, weight, bias, training, eps)
    if input.numel() == 0:
        # Like torch: an empty output that still depends on weight and bias (their gradients are
        # zeros, not None), and running statistics left as they are.
        out = input.clone()
        if weight is not None:
            out = out * weight[0]
        if bias is not None:
            out = out + bias[0]
        return out
    return _BatchNormFunction.apply(input, weight, bias, running_mean, running_var, training, momentum, eps)


# --------------------------------------------------------------------------------------------
# Compiled path
# --------------------------------------------------------------------------------------------


_compiled_function = None

# Smaller inputs stay eager even in compiled layers: for them the compiled call's fixed overhead
# outweighs the fused passes (measured: (256, 120) is slower compiled, (256, 16, 10, 10) 1.5x faster).
COMPILE_MIN_NUMEL = 1 << 16


def _train_function(x: Tensor, weight, bias, running_mean, running_var, momentum, eps: float) -> Tensor:
    return _BatchNormFunction.apply(x, weight, bias, running_mean, running_var, True, momentum, eps)


def _compiled_train_step(x: Tensor, weight, bias, running_mean, running_var, momentum, eps: float) -> Tensor:
    """Training-mode batch norm through ``torch.compile`` of the very same :class:`_BatchNormFunction`.

    Inductor fuses its forward and its hand-written backward into a few passes over the data.
    Shapes are static (``dynamic=False``): each new input shape compiles once; past dynamo's
    recompile limit it simply runs the eager Function. A float ``momentum`` is compiled in as a
    constant; pass a 0-dim tensor when it changes every step (the cumulative average).
    """
    global _compiled_function
    if _compiled_function is None:
        _compiled_function = torch.compile(_train_function, dynamic=False)
    return _compiled_function(x, weight, bias, running_mean, running_var, momentum, eps)


def compile_batch_norms(module: nn.Module) -> int:
    """Switch every bnexp batch-norm layer inside ``module`` to ``torch.compile`` of the same Function.

    Returns how many layers were switched. Compilation is lazy: the first training step at each new
    input shape pays it (5-15 s per shape on CPU, less once the inductor cache is warm), so run a
    warm-up step and time it to show the cost. Only training-mode normalization of inputs with at
    least ``COMPILE_MIN_NUMEL`` elements is compiled; evaluation (one multiply-add per element) and
    small inputs stay eager. Compiled code does not support double backward (``create_graph=True``):
    leave layers eager for that. Set ``layer.compiled = False`` to switch one back.
    """
    switched = 0
    for layer in module.modules():
        if isinstance(layer, _BatchNorm):
            layer.compiled = True
            switched += 1
    return switched


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


# Recent torch has a keyword-only ``bias`` flag (affine weight without bias) and shows it in repr.
_TORCH_REPR_HAS_BIAS = "bias" in inspect.signature(nn.modules.batchnorm._NormBase.__init__).parameters


class _BatchNorm(nn.Module):
    """Parameters, buffers and the train/eval logic shared by :class:`BatchNorm1d`/``2d``/``3d``.

    Mirrors ``torch.nn.modules.batchnorm._BatchNorm`` so the two are interchangeable, down to the
    ``state_dict`` keys and version (checkpoints without ``num_batches_tracked`` still load).
    """

    _version = 2

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps must be > 0 (it keeps 1/sqrt(var + eps) finite), got eps={eps}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.compiled = False  # set by compile_batch_norms()
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        bias = f"bias={self.bias is not None}, " if _TORCH_REPR_HAS_BIAS else ""
        text = (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, {bias}track_running_stats={self.track_running_stats}"
        )
        return text + (", compiled=True" if self.compiled else "")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        # Batch statistics when training, or when there are no running statistics to use.
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        # Running buffers are updated only when training and tracking.
        track = not self.training or self.track_running_stats
        running_mean = self.running_mean if track else None
        running_var = self.running_var if track else None
        if self.compiled and use_batch_stats and input.numel() >= COMPILE_MIN_NUMEL:
            _check_arguments(input, running_mean, running_var, self.weight, self.bias, True, self.eps)
            if self.momentum is None and running_mean is not None:  # a new factor each step: no recompiles
                factor = torch.tensor(factor, dtype=running_mean.dtype, device=running_mean.device)
            return _compiled_train_step(input, self.weight, self.bias, running_mean, running_var, factor, self.eps)
        return batch_norm(input, running_mean, running_var, self.weight, self.bias, use_batch_stats, factor, self.eps)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version", None)
        if (version is None or version < 2) and self.track_running_stats:
            # num_batches_tracked appeared in version 2: default it for older checkpoints.
            key = prefix + "num_batches_tracked"
            if key not in state_dict:
                state_dict[key] = (
                    self.num_batches_tracked
                    if self.num_batches_tracked is not None and self.num_batches_tracked.device != torch.device("meta")
                    else torch.tensor(0, dtype=torch.long)
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) inputs; drop-in for ``torch.nn.BatchNorm1d``."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) inputs; drop-in for ``torch.nn.BatchNorm2d``."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")


class BatchNorm3d(_BatchNorm):
    """Batch norm over (N, C, D, H, W) inputs; drop-in for ``torch.nn.BatchNorm3d``."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(f"expected 5D input (got {input.dim()}D input)")
