"""Batch normalization written from scratch, numerically interchangeable with ``torch.nn.BatchNorm*d``.

This is what ``norm=custom`` runs: Algorithm 1 of Ioffe & Szegedy (2015), "Batch Normalization:
Accelerating Deep Network Training by Reducing Internal Covariate Shift", in plain tensor ops (no
``F.batch_norm``/``torch.batch_norm``), with the same constructor, parameters, buffers, ``state_dict``
and ``repr`` as torch's modules, so a model can switch between ``norm=custom`` and ``norm=builtin``
and a checkpoint from one loads into the other with ``strict=True``::

    from bnexp.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, batch_norm

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

Beyond torch's layers, two training-time options (keyword-only constructor arguments):

* ``ghost_batch_size=k``: ghost batch norm (Hoffer et al. 2017, "Train longer, generalize better"),
  statistics over virtual batches of ``k`` examples; :class:`GhostBatchNorm` does the same around
  torch's own layers;
* ``sync=True``: statistics over the batches of all processes of a ``torch.distributed`` group, on
  CPU (gloo) as on CUDA (NCCL); :func:`convert_sync_batchnorm` switches a whole model.

Accuracy: in float32 the errors against a float64 computation are at most torch's, and far
smaller for inputs whose mean is large next to their spread (``tests/test_norm.py`` measures
both). Statistics come from the corrected two-pass algorithm around a center (the mean of the
first few examples), per-channel sums and constants are float64, and the output is
``(x - center) * scale + shift`` rather than torch's ``x * scale + shift``, which cancels
catastrophically when ``|mean| >> std``.

Speed (``scripts/bench_bn.py``): :class:`_BatchNormFunction` computes the forward in a handful of
passes with the output as its only full-size allocation, and its backward is the closed-form
gradient (:func:`batch_norm_backward`) rather than autograd's replay of every elementwise op. It
saves only the input (alive anyway), the parameters and two per-channel vectors, so memory stays at
builtin's level. :func:`compile_batch_norms` runs the same Function through ``torch.compile``,
which fuses the passes; that pays off only on long runs, since compiling costs
a few seconds per input shape on CPU (5.8 s for LeNet's four BN shapes: README, scripts/bench_bn.py).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GhostBatchNorm",
    "batch_norm",
    "batch_norm_backward",
    "compile_batch_norms",
    "convert_sync_batchnorm",
]


# --------------------------------------------------------------------------------------------
# Functional core
# --------------------------------------------------------------------------------------------

# Per-channel statistics, sums and constants are kept in float64: they are C numbers, so this is
# cheap, and it leaves the float32 roundings of the elementwise passes as the only sizeable errors.
STATS_DTYPE = torch.float64

# Examples whose mean centers the statistics (see _batch_stats): enough for a center well within a
# standard deviation of the batch mean, few enough that finding it costs a small part of a pass.
CENTER_SAMPLES = 16


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    """A length-C vector shaped ``(1, C, 1, ...)`` to broadcast against ``x``."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


def _channel_sum(t: Tensor) -> Tensor:
    """Per-channel sums in float64, shaped ``(1, C, 1, ...)``: over each (n, c) plane, then over the batch.

    The plane sums run in ``t``'s dtype, with torch's pairwise (cascade) summation; their float64
    sum over the batch then adds no rounding of its own. (A float64 sum of the whole tensor would
    first copy it to float64: twice its memory and four times the time.) Two short reductions are
    also faster than one over dims (0, 2, 3, ...). For (N, C) inputs, where a plane is one value,
    the batch sum itself runs pairwise in ``t``'s dtype and is then converted.
    """
    if t.dim() == 2:  # one value per plane: a float64 copy of t would cost more than the sum itself
        return t.sum(0, keepdim=True).to(STATS_DTYPE)
    return t.sum(tuple(range(2, t.dim())), keepdim=True).sum(0, keepdim=True, dtype=STATS_DTYPE)


def _channel_sum_of_squares(t: Tensor) -> Tensor:
    """Per-channel ``sum(t^2)`` in float64, shaped ``(1, C, 1, ...)``, without writing ``t^2`` anywhere.

    One read of ``t`` for the norm of each (n, c) plane (rounded like :func:`_channel_sum`'s plane
    sums), then the float64 norm of those over the batch, squared.
    """
    if t.dim() == 2:
        return torch.linalg.vector_norm(t, dim=0, keepdim=True).to(STATS_DTYPE).square_()
    planes = torch.linalg.vector_norm(t, dim=tuple(range(2, t.dim())), keepdim=True)
    return torch.linalg.vector_norm(planes, dim=0, keepdim=True, dtype=STATS_DTYPE).square_()


def _values_per_channel(x: Tensor) -> int:
    return math.prod((x.shape[0], *x.shape[2:]))


def _all_gather_stats(mean: Tensor, var: Tensor, count: int, group) -> tuple[Tensor, Tensor, int]:
    """Combine every rank's ``(count, mean, var)`` into the statistics of the union of their batches.

    One ``all_gather`` (ranks may hold different batch sizes, so counts travel too), then Chan et
    al.'s parallel formula ``M2 = sum(n_r * var_r + n_r * (mean_r - mean)^2)``, which does not
    cancel the way ``sum(x^2) - n * mean^2`` would. Every rank computes it identically, so running
    statistics stay equal across ranks.
    """
    local = torch.cat([mean.new_full((1,), count), mean.flatten(), var.flatten()])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    counts, means, variances = torch.stack(gathered).split([1, mean.numel(), var.numel()], dim=1)
    total = counts.sum()
    global_mean = (counts * means).sum(0) / total
    global_var = (counts * (variances + (means - global_mean).square())).sum(0) / total
    return global_mean.view_as(mean), global_var.view_as(var), int(total.item())


def _batch_stats(x: Tensor, deviations: Tensor, sync_group=None) -> tuple[Tensor, Tensor, Tensor, int]:
    """Per-channel ``(center, mean, var, count)`` of the batch, leaving ``x - center`` in ``deviations``.

    The shifted-data form of the corrected two-pass algorithm (Chan, Golub & LeVeque 1983): the
    mean of the first ``CENTER_SAMPLES`` examples, in ``x``'s dtype, is the ``center``; the
    deviations ``d = x - center`` then give ``mean = center + mean(d)`` and the biased
    ``var = mean(d^2) - mean(d)^2``, whose relative rounding grows only like
    ``1 + mean(d)^2 / var`` (about 1 for a center within a standard deviation of the mean, which a
    sample mean is). Taking the center from a sample rather than from a full first pass saves a
    read of the whole input. ``x - center`` is exact for values within a
    factor of 2 of the center and the deviations are small, so a mean that is large next to the
    spread costs no precision, whereas torch's kernel computes the output as ``x * scale + shift``
    and loses a factor 10^4 of it at mean -100 and std 0.01. ``mean``/``var``: float64;
    ``center``: ``x``'s dtype; all ``(1, C, 1, ...)``. ``deviations`` is the output buffer, which
    :func:`_scale_and_shift_` turns into the output. With ``sync_group``, mean, variance and count
    are those of all ranks' batches together.
    """
    count = _values_per_channel(x)
    divisor = max(count, 1)  # a synchronized rank may hold an empty batch
    if x.shape[0]:
        center = x[:CENTER_SAMPLES].mean((0, *range(2, x.dim())), keepdim=True)
    else:
        center = x.new_zeros((1, x.shape[1], *[1] * (x.dim() - 2)))
    torch.sub(x, center, out=deviations)
    shift = _channel_sum(deviations) / divisor
    var = torch.addcmul(_channel_sum_of_squares(deviations) / divisor, shift, shift, value=-1)
    mean = shift + center
    if sync_group is not None:
        mean, var, count = _all_gather_stats(mean, var, count, sync_group)
    if count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.size()}")
    return center, mean, var, count


def _scale_and_shift_(deviations: Tensor, offset: Tensor, invstd: Tensor, weight: Tensor | None,
                      bias: Tensor | None) -> Tensor:
    """In place, ``deviations = x - center`` becomes the output ``(x - mean) * invstd * weight + bias``.

    ``offset = center - mean`` and ``invstd`` are float64 per-channel vectors; the offset goes into
    the shift: ``deviations * scale + (offset * scale + bias)``, two elementwise passes.
    """
    scale = invstd if weight is None else invstd * _per_channel(weight, deviations)
    shift = offset * scale if bias is None else torch.addcmul(_per_channel(bias, deviations), offset, scale)
    return deviations.mul_(scale.to(deviations.dtype)).add_(shift.to(deviations.dtype))


def _batch_norm_math(x: Tensor, weight: Tensor | None, bias: Tensor | None, stats, eps: float) -> Tensor:
    """Batch norm in plain differentiable ops: the reference that the fast path reproduces.

    ``stats=None`` normalizes with the batch statistics (Algorithm 1: mean, then biased variance,
    then ``(x - mean) / sqrt(var + eps) * weight + bias``); otherwise ``stats = (mean, invstd)`` are
    constants (evaluation). Autograd differentiates this for double backward.
    """
    if stats is None:
        dims = (0, *range(2, x.dim()))
        mean = x.mean(dims, keepdim=True)
        invstd = torch.rsqrt((x - mean).square().mean(dims, keepdim=True) + eps)  # biased variance
    else:
        mean, invstd = (s.to(x.dtype) for s in stats)
    scale = invstd if weight is None else invstd * _per_channel(weight, x)
    out = (x - mean) * scale
    return out if bias is None else out + _per_channel(bias, x)


def _update_running_stats(running_mean, running_var, mean: Tensor, var: Tensor, m: int, momentum) -> None:
    """``running = (1 - momentum) * running + momentum * batch`` (a lerp), fed the *unbiased* variance.

    The batch statistics are rounded once to the buffers' dtype and lerped in it, in place, as
    torch's kernel does (so call it without autograd, inside a Function's forward). ``momentum``: a
    float, or a 0-dim tensor on the compiled path.
    """
    for running, batch in ((running_mean, mean), (running_var, var * (m / (m - 1)))):
        if running is not None:
            running.lerp_(batch.view(-1).to(running.dtype), momentum)


def batch_norm_backward(
    grad_out: Tensor,
    x: Tensor,
    mean: Tensor,
    invstd: Tensor,
    weight: Tensor | None,
    training: bool = True,
    sync_group=None,
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
    those terms vanish. ``mean`` and ``invstd`` are float64, shaped ``(1, C, 1, ...)``, and so are
    the sums and constants computed from them.

    With ``sync_group`` (synchronized batch norm, whose statistics covered every rank's batch), the
    two sums and ``m`` in the ``grad_input`` line are all-reduced over the group, as in torch's
    ``SyncBatchNorm``; ``grad_weight`` and ``grad_bias`` stay this rank's own sums, which
    ``DistributedDataParallel`` then reduces like any other parameter gradient.

    ``x_hat`` is recomputed rather than saved, and everything is assembled in the buffer returned as
    ``grad_input``: its only full-size allocation, as in builtin (fresh multi-megabyte buffers cost
    page faults on CPU that can exceed the arithmetic).
    """
    center = mean.to(x.dtype)  # x - center: exact near the mean, as in _batch_stats
    offset = center - mean
    grad_bias = _channel_sum(grad_out)
    grad_input = torch.sub(x, center)  # first as scratch for dy * (x - center)
    dot = torch.addcmul(_channel_sum(grad_input.mul_(grad_out)), offset, grad_bias)  # sum(dy * (x - mean))
    grad_weight = dot * invstd
    scale = invstd if weight is None else invstd * _per_channel(weight, x)
    if training:
        sum_dy, sum_dy_xmu, m = grad_bias, dot, _values_per_channel(x)
        if sync_group is not None:
            sum_dy, sum_dy_xmu, m = _all_reduce_sums(grad_bias, dot, m, sync_group)
        # scale * (dy - sum_dy/m - (x - mean) * invstd^2 * sum_dy_xmu/m), with x - mean = (x - center) + offset:
        #   (x - center) * k + dy * scale + (offset * k - sum_dy * scale/m),  k = -scale * invstd^2 * sum_dy_xmu/m
        k = scale * invstd.square() * sum_dy_xmu / -m
        constant = torch.addcmul(offset * k, sum_dy, scale / -m)
        torch.sub(x, center, out=grad_input).mul_(k.to(x.dtype))
        grad_input.addcmul_(grad_out, scale.to(x.dtype)).add_(constant.to(x.dtype))
    else:
        torch.mul(grad_out, scale.to(x.dtype), out=grad_input)
    param_dtype = x.dtype if weight is None else weight.dtype
    return grad_input, grad_weight.flatten().to(param_dtype), grad_bias.flatten().to(param_dtype)


def _all_reduce_sums(sum_dy: Tensor, sum_dy_xmu: Tensor, m: int, group) -> tuple[Tensor, Tensor, Tensor]:
    """The per-channel sums of :func:`batch_norm_backward` and the count, summed over ``group`` (one all_reduce)."""
    sums = torch.cat([sum_dy.flatten(), sum_dy_xmu.flatten(), sum_dy.new_full((1,), m)])
    dist.all_reduce(sums, group=group)
    channels = sum_dy.numel()
    return sums[:channels].view_as(sum_dy), sums[channels:-1].view_as(sum_dy_xmu), sums[-1]


class _BatchNormFunction(torch.autograd.Function):
    """Batch norm with the hand-written backward of :func:`batch_norm_backward`.

    The forward is the math of :func:`_batch_norm_math`, computed outside autograd with the output
    as the only full-size allocation (its buffer first holds ``x - center``, see
    :func:`_batch_stats`); in training it also updates the running statistics, as torch's kernel
    does. Saves ``x`` (alive anyway as the previous layer's output), the parameters and two
    per-channel float64 vectors. ``sync_group``: see :func:`batch_norm`.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training: bool, momentum: float, eps: float,
                sync_group=None):
        out = torch.empty_like(x)
        if training:
            center, mean, var, count = _batch_stats(x, out, sync_group)
            _update_running_stats(running_mean, running_var, mean, var, count, momentum)
        else:
            # copies: a later update of the running buffers must not change what backward uses
            mean, var = (_per_channel(s, x).to(STATS_DTYPE, copy=True) for s in (running_mean, running_var))
            center = mean.to(x.dtype)
            torch.sub(x, center, out=out)
        invstd = (var + eps).rsqrt_()
        ctx.training, ctx.eps, ctx.sync_group = training, eps, sync_group
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        return _scale_and_shift_(out, center - mean, invstd, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            # create_graph=True (double backward, gradgradcheck): the gradients must themselves be
            # differentiable, so let autograd differentiate the plain-op forward instead.
            if ctx.sync_group is not None:
                raise RuntimeError("double backward (create_graph=True) through a synchronized batch norm "
                                   "is not supported: use sync=False for it")
            stats = None if ctx.training else (mean, invstd)
            out = _batch_norm_math(x, weight, bias, stats, ctx.eps)
            inputs = [t for t, need in zip((x, weight, bias), needs) if need]
            grads = iter(torch.autograd.grad(out, inputs, grad_out, create_graph=True))
            grads = [next(grads) if need else None for need in needs]
        else:
            grads = batch_norm_backward(grad_out, x, mean, invstd, weight, ctx.training, ctx.sync_group)
            grads = [g if need else None for g, need in zip(grads, needs)]
        return (*grads, None, None, None, None, None, None)


def _check_arguments(x: Tensor, running_mean, running_var, weight, bias, training: bool, eps: float) -> None:
    """torch's argument checks, with messages that say what to change.

    (More than one value per channel when training is checked on the statistics' count, which for
    synchronized batch norm is that of all ranks.)
    """
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
    if not training and (running_mean is None or running_var is None):
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
    *,
    sync_group=None,
) -> Tensor:
    """Batch normalization over dim 1 of ``input``; same signature and semantics as
    ``torch.nn.functional.batch_norm``.

    ``training=True`` normalizes with batch statistics and, when the running buffers are given,
    updates them in place (``momentum`` weighs the new batch; the variance fed to ``running_var``
    is unbiased). ``training=False`` normalizes with ``running_mean``/``running_var``.

    ``sync_group`` (a ``torch.distributed`` process group; training only): take the batch
    statistics over the batches of all its ranks, which must all call this together
    (synchronized batch norm; see :func:`batch_norm_backward` for the gradients).
    """
    _check_arguments(input, running_mean, running_var, weight, bias, training, eps)
    sync_group = sync_group if training else None
    if input.numel() == 0 and sync_group is None:
        # Like torch: an empty output that still depends on weight and bias (their gradients are
        # zeros, not None), and running statistics left as they are. (A synchronized rank with an
        # empty batch still joins the other ranks' collectives, in the Function.)
        out = input.clone()
        if weight is not None:
            out = out * weight[0]
        if bias is not None:
            out = out + bias[0]
        return out
    return _BatchNormFunction.apply(input, weight, bias, running_mean, running_var, training, momentum, eps,
                                    sync_group)


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
    input shape pays it (a few seconds per shape on CPU, less once the inductor cache is warm), so run a
    warm-up step and time it to show the cost. Only training-mode normalization of inputs with at
    least ``COMPILE_MIN_NUMEL`` elements is compiled; evaluation (plain elementwise passes),
    small inputs and synchronized statistics (collectives) stay eager. Compiled code does not
    support double backward (``create_graph=True``): leave layers eager for that. Set
    ``layer.compiled = False`` to switch one back.
    """
    switched = 0
    for layer in module.modules():
        if isinstance(layer, _BatchNorm):
            layer.compiled = True
            switched += 1
    return switched


# --------------------------------------------------------------------------------------------
# Ghost batches and synchronized statistics
# --------------------------------------------------------------------------------------------


def _check_ghost_batch_size(ghost_batch_size) -> None:
    if isinstance(ghost_batch_size, bool) or not isinstance(ghost_batch_size, int) or ghost_batch_size < 1:
        raise ValueError(f"ghost_batch_size must be a positive int (examples per virtual batch), "
                         f"got {ghost_batch_size!r}")


def _in_ghost_batches(forward, x: Tensor, ghost_batch_size: int) -> Tensor:
    """``forward`` applied to consecutive chunks of ``ghost_batch_size`` examples, outputs concatenated.

    Exactly ``torch.cat([forward(c) for c in x.split(ghost_batch_size)])``, except that a last
    chunk of a single example with no spatial positions (one value per channel, which cannot be
    normalized) joins the chunk before it. A batch that fits in one chunk is passed whole.
    """
    sizes = [ghost_batch_size] * (x.shape[0] // ghost_batch_size)
    if x.shape[0] % ghost_batch_size:
        sizes.append(x.shape[0] % ghost_batch_size)
    if len(sizes) > 1 and sizes[-1] == 1 and math.prod(x.shape[2:]) == 1:
        sizes[-2:] = [sizes[-2] + 1]
    if len(sizes) <= 1:
        return forward(x)
    return torch.cat([forward(chunk) for chunk in x.split(sizes)])


class GhostBatchNorm(nn.Module):
    """Ghost batch norm around any batch-norm layer, e.g. ``GhostBatchNorm(torch.nn.BatchNorm2d(16), 32)``.

    In training, the batch is split into virtual batches of ``ghost_batch_size`` examples that go
    through ``layer`` in turn (so its running statistics are updated, and ``num_batches_tracked``
    counted, once per virtual batch) and the outputs are concatenated; a last virtual batch of one
    example without spatial positions joins the one before it. Evaluation passes the whole batch.
    These are the semantics of bnexp's layers with ``ghost_batch_size=...``.

    Transparent in ``state_dict``: the keys are the wrapped layer's (``norm1.running_mean``, not
    ``norm1.layer.running_mean``), so checkpoints move between wrapped, unwrapped and bnexp
    layers. (``named_parameters`` does show the ``layer.`` level.)
    """

    def __init__(self, layer: nn.Module, ghost_batch_size: int) -> None:
        super().__init__()
        _check_ghost_batch_size(ghost_batch_size)
        self.layer = layer
        self.ghost_batch_size = ghost_batch_size
        self.register_state_dict_post_hook(_drop_layer_prefix)
        self.register_load_state_dict_pre_hook(_add_layer_prefix)

    def extra_repr(self) -> str:
        return f"ghost_batch_size={self.ghost_batch_size}"

    def forward(self, input: Tensor) -> Tensor:
        if not self.training:
            return self.layer(input)
        return _in_ghost_batches(self.layer, input, self.ghost_batch_size)


def _drop_layer_prefix(module: GhostBatchNorm, state_dict, prefix: str, local_metadata) -> None:
    """state_dict hook: ``<prefix>layer.<key>`` -> ``<prefix><key>``, with the layer's version metadata."""
    inner = prefix + "layer."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None and inner[:-1] in metadata:
        metadata[prefix[:-1]] = metadata.pop(inner[:-1])


def _add_layer_prefix(module: GhostBatchNorm, state_dict, prefix: str, local_metadata, *args) -> None:
    """load_state_dict pre-hook, the inverse of :func:`_drop_layer_prefix`."""
    inner = prefix + "layer."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix):]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        metadata[inner[:-1]] = local_metadata  # e.g. the layer's version, for num_batches_tracked


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Synchronize every batch norm in ``module`` across processes, on CPU (gloo) as on CUDA.

    bnexp layers get ``sync=True``; ``torch.nn.BatchNorm1d/2d/3d`` layers are replaced by the bnexp
    class of the same rank with ``sync=True``, sharing their parameters and buffers (so an
    optimizer built before still updates them, and ``state_dict`` keys do not change). Like
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (which produces layers that refuse CPU
    tensors), it converts in place and returns ``module``, or its replacement when ``module`` is
    itself a batch norm. ``process_group``: the group to synchronize over (None: the default one).
    Ghost batches cannot be synchronized: raises ValueError on a ghost layer.
    """
    if getattr(module, "ghost_batch_size", None) is not None:  # a GhostBatchNorm or a bnexp ghost layer
        raise ValueError(f"cannot synchronize ghost batch norm {module}: ghost batches and sync do not combine")
    if isinstance(module, _BatchNorm):
        module.sync, module.process_group = True, process_group
    elif type(module) in _CUSTOM_CLASS:
        converted = _CUSTOM_CLASS[type(module)](
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
            bias=module.bias is not None, sync=True, process_group=process_group, device="meta",
        )
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            setattr(converted, name, getattr(module, name))
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, process_group))
    return module


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


# Recent torch has a keyword-only ``bias`` flag (affine weight without bias) and shows it in repr.
_TORCH_REPR_HAS_BIAS = "bias" in inspect.signature(nn.modules.batchnorm._NormBase.__init__).parameters


class _BatchNorm(nn.Module):
    """Parameters, buffers and the train/eval logic shared by :class:`BatchNorm1d`/``2d``/``3d``.

    Mirrors ``torch.nn.modules.batchnorm._BatchNorm`` so the two are interchangeable, down to the
    ``state_dict`` keys and version (checkpoints without ``num_batches_tracked`` still load).

    Keyword-only extras, both for training mode only:

    * ``ghost_batch_size``: ghost batch norm; statistics over virtual batches of that many
      examples, exactly as if the batch were split (``x.split(ghost_batch_size)``) and each chunk
      passed through this layer in turn: running statistics updated and ``num_batches_tracked``
      counted once per chunk, outputs concatenated. A last chunk of one example with no spatial
      positions (one value per channel: nothing to normalize) joins the chunk before it. A batch
      of at most ``ghost_batch_size`` examples is plain batch norm.
    * ``sync``: take the statistics over the batches of every process of ``process_group`` (None:
      the default group) once ``torch.distributed`` is initialized with more than one of them;
      otherwise plain batch norm. Ranks may hold different batch sizes (even empty ones). The
      running statistics get the global unbiased variance; ``grad_input`` is that of the global
      batch, while ``grad_weight``/``grad_bias`` stay this rank's share, for
      ``DistributedDataParallel`` to reduce. Every rank must run the layer's forward and backward.
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
        ghost_batch_size: int | None = None,
        sync: bool = False,
        process_group=None,
    ) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps must be > 0 (it keeps 1/sqrt(var + eps) finite), got eps={eps}")
        if ghost_batch_size is not None:
            _check_ghost_batch_size(ghost_batch_size)
            if sync:
                raise ValueError("ghost_batch_size and sync=True cannot be combined: synchronized statistics "
                                 "cover every rank's whole batch, ghost ones a part of one rank's")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.ghost_batch_size = ghost_batch_size
        self.sync = sync
        self.process_group = process_group
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
        if self.ghost_batch_size is not None:
            text += f", ghost_batch_size={self.ghost_batch_size}"
        return text + (", sync=True" if self.sync else "") + (", compiled=True" if self.compiled else "")

    def _sync_group(self):
        """The process group to take training statistics over, or None for this process's batch alone."""
        if not (self.sync and self.training and dist.is_available() and dist.is_initialized()):
            return None
        group = dist.group.WORLD if self.process_group is None else self.process_group
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if self.training and self.ghost_batch_size is not None:
            return _in_ghost_batches(self._forward_batch, input, self.ghost_batch_size)
        return self._forward_batch(input)

    def _forward_batch(self, input: Tensor) -> Tensor:
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
        sync_group = self._sync_group()
        if self.compiled and use_batch_stats and sync_group is None and input.numel() >= COMPILE_MIN_NUMEL:
            _check_arguments(input, running_mean, running_var, self.weight, self.bias, True, self.eps)
            if self.momentum is None and running_mean is not None:  # a new factor each step: no recompiles
                factor = torch.tensor(factor, dtype=running_mean.dtype, device=running_mean.device)
            return _compiled_train_step(input, self.weight, self.bias, running_mean, running_var, factor, self.eps)
        return batch_norm(input, running_mean, running_var, self.weight, self.bias, use_batch_stats, factor, self.eps,
                          sync_group=sync_group)

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


# torch's layers and the bnexp class that replaces each in convert_sync_batchnorm().
_CUSTOM_CLASS = {nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d}
