"""Does ``bnexp.nn.batchnorm`` still match ``torch.nn.BatchNorm*d``? The check behind ``bnexp check-bn``.

Runs each custom class side by side with torch's on the same random inputs, in training and
evaluation mode, and reports the largest differences. :func:`compare` is also what
``tests/test_norm.py`` asserts on, so the command and the test suite apply the same standard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

import bnexp.nn.batchnorm

# Relative tolerance per dtype: rounding level (1e-5 is about 80 float32 ulps).
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}

# (class, input shape): every class and every input rank it accepts, at LeNet-ish sizes.
SHAPES = [
    ("BatchNorm1d", (64, 12)),
    ("BatchNorm1d", (16, 12, 20)),
    ("BatchNorm2d", (16, 6, 10, 10)),
    ("BatchNorm3d", (8, 4, 5, 6, 7)),
]

# Constructor options beyond torch's defaults; each is run with every class.
CONFIGS = {
    "default": {},
    "momentum=None": {"momentum": None},
    "mom=0.3,eps=1e-3": {"momentum": 0.3, "eps": 1e-3},
    "affine=False": {"affine": False},
    "no running stats": {"track_running_stats": False},
    # Virtual batches of 3 (custom layer vs torch's wrapped in GhostBatchNorm). SHAPES' batches end
    # in a single example without spatial positions (64x12: folded into the chunk before), a single
    # example with them (16x...: normalized over its positions), or two examples (8x...).
    "ghost_batch_size=3": {"ghost_batch_size": 3},
}


@dataclass
class Comparison:
    """Largest relative differences, custom vs builtin, over all steps of one case.

    Each difference is ``max|custom - builtin| / scale`` for one tensor, the worst tensor reported:
    the output; the gradients w.r.t. input, weight and bias; the running mean and variance (``None``
    without running statistics). ``scale`` is ``max|builtin|``, except where a value can cancel to
    nearly zero by chance and so has no meaningful relative error: for the weight and bias gradients,
    per-channel sums, it is at least the size such a sum has when its terms do not cancel
    (``sqrt(sum(term^2))``, the largest over channels); for the running mean, at least the spread of
    the data it averages (``sqrt(running_var)``).
    """

    layer: str
    shape: tuple
    config: str = "default"
    mode: str = "train"
    out_diff: float = 0.0
    grad_diff: float = 0.0
    stat_diff: Optional[float] = None
    tolerance: float = 0.0
    failures: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def compare(
    cls_name: str,
    shape,
    config: Optional[dict] = None,
    *,
    mode: str = "train",
    dtype: str = "float32",
    device: str = "cpu",
    steps: int = 5,
    seed: int = 0,
    config_name: Optional[str] = None,
) -> Comparison:
    """Compare ``bnexp.nn.batchnorm.<cls_name>(**config)`` with ``torch.nn.<cls_name>(**config)``.

    Both start from the same random affine parameters. ``mode="train"``: ``steps`` training
    forwards and backwards on fresh random inputs (random scale and offset per step) and a common
    random output gradient; outputs, all gradients and, at the end, the running statistics are
    compared. ``mode="eval"``: ``steps`` uncompared training steps build the running statistics, then
    ``steps`` evaluation forwards and backwards are compared. A ``ghost_batch_size`` in ``config``
    goes to the custom layer; torch's layer is wrapped in ``bnexp.nn.batchnorm.GhostBatchNorm`` instead.
    """
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    config = dict(config or {})
    torch_dtype = getattr(torch, dtype)
    name = config_name or (",".join(f"{k}={v}" for k, v in config.items()) or "default")
    result = Comparison(cls_name, tuple(shape), name, mode, tolerance=TOLERANCE[dtype])
    gen = torch.Generator().manual_seed(seed)

    def rand(*size, uniform=False):
        t = (torch.rand if uniform else torch.randn)(size, generator=gen, dtype=torch.float64)
        return t.to(device=device, dtype=torch_dtype)

    custom = getattr(bnexp.nn.batchnorm, cls_name)(shape[1], **config, device=device, dtype=torch_dtype)
    ghost_batch_size = config.pop("ghost_batch_size", None)
    builtin = getattr(torch.nn, cls_name)(shape[1], **config, device=device, dtype=torch_dtype)
    wrapped = builtin if ghost_batch_size is None else bnexp.nn.batchnorm.GhostBatchNorm(builtin, ghost_batch_size)
    if custom.affine:
        with torch.no_grad():
            custom.weight.copy_(rand(shape[1]) * 0.5 + 1)
            if custom.bias is not None:
                custom.bias.copy_(rand(shape[1]) * 0.5)
    wrapped.load_state_dict(custom.state_dict(), strict=True)

    def check(what: str, a, b, floor: float = 0.0) -> float:
        """Relative difference of custom's ``a`` from builtin's ``b``; records a failure beyond tolerance."""
        if a is None or b is None or a.shape != b.shape:
            if not (a is None and b is None):
                result.failures.append(f"{what}: missing or of another shape")
            return 0.0 if a is None and b is None else float("inf")
        if a.numel() == 0:
            return 0.0
        a, b = a.detach().double(), b.detach().double()
        scale = max(b.abs().max().item(), floor)
        rel = (a - b).abs().max().item() / (scale if scale > 0 else 1.0)
        if not rel <= result.tolerance:  # NaN fails too
            result.failures.append(f"{what}: {rel:.1e}")
        return rel

    def sum_scales(x, grad) -> tuple[float, float]:
        """Size of the weight/bias gradient sums without cancellation: max over channels of
        ``sqrt(sum((dy * x_hat)^2))`` and ``sqrt(sum(dy^2))``."""
        x, dy = x.double(), grad.double()
        dims = (0, *range(2, x.dim()))
        if builtin.training or builtin.running_mean is None:
            mean, var = x.mean(dims, keepdim=True), x.var(dims, keepdim=True, unbiased=False)
        else:
            view = (1, -1, *([1] * (x.dim() - 2)))
            mean, var = builtin.running_mean.double().view(view), builtin.running_var.double().view(view)
        x_hat = (x - mean) / torch.sqrt(var + builtin.eps)
        return ((dy * x_hat).square().sum(dims).sqrt().max().item(), dy.square().sum(dims).sqrt().max().item())

    def step(compared: bool, index: int) -> None:
        # Realistic activations: per-step scale in [0.1, 10], offset up to 3 standard deviations.
        scale = 10 ** (rand(1, uniform=True).item() * 2 - 1)
        offset = (rand(1, uniform=True).item() * 6 - 3) * scale
        x, grad = rand(*shape) * scale + offset, rand(*shape)
        floors = {"input": 0.0, "weight": 0.0, "bias": 0.0}
        if x.numel():
            floors["weight"], floors["bias"] = sum_scales(x, grad)
        outs, grads = [], []
        for module, layer in ((custom, custom), (wrapped, builtin)):
            xi = x.clone().requires_grad_()
            y = module(xi)
            y.backward(grad)
            outs.append(y)
            grads.append({"input": xi.grad, **{k: None if p is None else p.grad
                                              for k, p in (("weight", layer.weight), ("bias", layer.bias))}})
            layer.zero_grad(set_to_none=True)
        if compared:
            result.out_diff = max(result.out_diff, check(f"output (step {index})", *outs))
            for what, floor in floors.items():
                rel = check(f"grad {what} (step {index})", grads[0][what], grads[1][what], floor)
                result.grad_diff = max(result.grad_diff, rel)

    custom.train(), wrapped.train()
    for i in range(steps):
        step(compared=mode == "train", index=i)
    if mode == "eval":
        custom.eval(), wrapped.eval()
        for i in range(steps):
            step(compared=True, index=i)
    if builtin.track_running_stats:
        spread = builtin.running_var.double().sqrt().max().item()  # a mean is as exact as the data it averages
        result.stat_diff = max(check("running_mean", custom.running_mean, builtin.running_mean, spread),
                               check("running_var", custom.running_var, builtin.running_var))
        if not torch.equal(custom.num_batches_tracked, builtin.num_batches_tracked):
            result.failures.append(f"num_batches_tracked: {custom.num_batches_tracked.item()} "
                                   f"!= {builtin.num_batches_tracked.item()}")
    return result


def run_all(dtype: str = "float32", device: str = "cpu", steps: int = 5, seed: int = 0) -> list[Comparison]:
    """:func:`compare` for every class/input rank, constructor config and mode."""
    results = []
    for i, (cls_name, shape) in enumerate(SHAPES):
        for j, (config_name, config) in enumerate(CONFIGS.items()):
            for mode in ("train", "eval"):
                results.append(compare(cls_name, shape, config, mode=mode, dtype=dtype, device=device, steps=steps,
                                       seed=seed * 1000 + i * 100 + j * 10 + (mode == "eval"),
                                       config_name=config_name))
    return results
