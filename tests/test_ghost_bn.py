"""Ghost batch norm: bnexp layers with ``ghost_batch_size`` and ``GhostBatchNorm`` around torch's layers
both behave exactly like passing the batch's chunks through the layer in turn."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bnexp.nn.batchnorm as bn
from bnexp.nn.check import TOLERANCE

CASES = [  # (class, input shape, ghost batch size)
    ("BatchNorm1d", (12, 5), 4),  # divisible
    ("BatchNorm1d", (13, 5), 4),  # last chunk of one value per channel: folded into the one before
    ("BatchNorm1d", (14, 5, 3), 4),  # last chunk of 2
    ("BatchNorm1d", (13, 5, 3), 4),  # last chunk of one example with 3 positions: normalized alone
    ("BatchNorm2d", (10, 3, 4, 4), 3),
    ("BatchNorm2d", (9, 3, 1, 1), 4),  # one example, one position: folded
]


def chunk_sizes(batch: int, ghost: int, positions: int) -> list[int]:
    """The documented rule, written out independently of the implementation."""
    sizes = [ghost] * (batch // ghost) + ([batch % ghost] if batch % ghost else [])
    if len(sizes) > 1 and sizes[-1] == 1 and positions == 1:
        sizes[-2:] = [sizes[-2] + 1]
    return sizes


def run(module, x, grad, sizes=None, steps=2):
    """``steps`` training steps of ``module`` (on chunks of ``sizes`` in turn, outputs concatenated,
    when given); returns outputs, input gradients and parameter gradients of every step."""
    results = []
    for step in range(steps):
        xi = (x * (step + 1) + step).requires_grad_()
        y = module(xi) if sizes is None else torch.cat([module(c) for c in xi.split(sizes)])
        y.backward(grad)
        results.append([y.detach(), xi.grad] + [p.grad.clone() for p in module.parameters()])
        module.zero_grad(set_to_none=True)
    return results


def buffers(module):
    return [b.clone() for b in module.buffers()]


def assert_close(a, b, dtype):
    """The check-bn standard: ``max|a - b| <= tolerance * max|b|``."""
    assert a.shape == b.shape
    if b.numel():
        tolerance = TOLERANCE[str(dtype).removeprefix("torch.")]
        assert (a - b).abs().max().item() <= tolerance * max(b.abs().max().item(), 1e-30)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls_name,shape,ghost", CASES)
def test_ghost_batches_are_chunks_through_the_layer(cls_name, shape, ghost, momentum, dtype):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1).to(dtype)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    sizes = chunk_sizes(shape[0], ghost, math.prod(shape[2:]))
    kwargs = {"momentum": momentum, "dtype": dtype}
    custom_ghost = getattr(bn, cls_name)(shape[1], ghost_batch_size=ghost, **kwargs)
    custom_plain = getattr(bn, cls_name)(shape[1], **kwargs)
    builtin_ghost = bn.GhostBatchNorm(getattr(nn, cls_name)(shape[1], **kwargs), ghost)
    builtin_plain = getattr(nn, cls_name)(shape[1], **kwargs)
    with torch.no_grad():
        custom_ghost.weight.uniform_(0.5, 1.5, generator=gen), custom_ghost.bias.uniform_(-1, 1, generator=gen)
    for module in (custom_plain, builtin_ghost, builtin_plain):
        module.load_state_dict(custom_ghost.state_dict(), strict=True)

    reference = run(custom_plain, x, grad, sizes)
    # The custom ghost layer runs the plain layer's code on each chunk: bit for bit the same.
    for ours, theirs in zip(run(custom_ghost, x, grad), reference):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert all(torch.equal(a, b) for a, b in zip(buffers(custom_ghost), buffers(custom_plain)))
    assert custom_ghost.num_batches_tracked.item() == 2 * len(sizes)
    # torch's layer, wrapped or fed the chunks by hand, agrees within rounding.
    for module, chunks in ((builtin_ghost, None), (builtin_plain, sizes)):
        for ours, theirs in zip(run(module, x, grad, chunks), reference):
            for a, b in zip(ours, theirs):
                assert_close(a, b, dtype)
        for a, b in zip(buffers(module), buffers(custom_ghost)):
            if b.is_floating_point():
                assert_close(a, b, dtype)
            else:  # num_batches_tracked
                assert torch.equal(a, b)


@pytest.mark.parametrize("cls_name,shape,ghost", CASES)
def test_one_ghost_batch_is_plain_batch_norm(cls_name, shape, ghost):
    """A batch of at most ghost_batch_size examples runs plain batch norm: equal to the bit; so
    does evaluation, whatever the batch."""
    gen = torch.Generator().manual_seed(1)
    x, grad = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    for ghost_batch_size in (shape[0], shape[0] + 5):
        ghost_layer = getattr(bn, cls_name)(shape[1], ghost_batch_size=ghost_batch_size)
        plain = getattr(bn, cls_name)(shape[1])
        for ours, theirs in zip(run(ghost_layer, x, grad), run(plain, x, grad)):
            assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
        assert all(torch.equal(a, b) for a, b in zip(buffers(ghost_layer), buffers(plain)))
    ghost_layer = getattr(bn, cls_name)(shape[1], ghost_batch_size=ghost)
    wrapped = bn.GhostBatchNorm(getattr(nn, cls_name)(shape[1]), ghost)
    ghost_layer(x), wrapped(x)  # training: running statistics of the virtual batches
    ghost_layer.eval(), wrapped.eval()
    plain = getattr(bn, cls_name)(shape[1]).eval()
    plain.load_state_dict(ghost_layer.state_dict())
    assert torch.equal(ghost_layer(x), plain(x))
    assert torch.equal(wrapped(x), wrapped.layer(x))


def test_repr_and_state_dict_stay_torch_compatible():
    layer = bn.BatchNorm2d(4, ghost_batch_size=8)
    assert repr(layer) == repr(nn.BatchNorm2d(4))[:-1] + ", ghost_batch_size=8)"
    assert list(layer.state_dict()) == list(nn.BatchNorm2d(4).state_dict())
    wrapped = bn.GhostBatchNorm(nn.BatchNorm2d(4), 8)
    assert "ghost_batch_size=8" in repr(wrapped) and "BatchNorm2d(4" in repr(wrapped)
    assert list(wrapped.state_dict()) == list(nn.BatchNorm2d(4).state_dict())


def test_checkpoints_move_between_ghost_wrapped_and_plain_models():
    """A model's ``norm1`` keeps its keys (``norm1.running_mean``...) when wrapped, so checkpoints of
    custom-ghost, wrapped-builtin and plain runs load into one another with strict=True."""

    def net(norm):
        return nn.Sequential(nn.Conv2d(1, 3, 3), norm(3), nn.ReLU())

    models = {
        "custom ghost": net(lambda c: bn.BatchNorm2d(c, ghost_batch_size=4)),
        "builtin wrapped": net(lambda c: bn.GhostBatchNorm(nn.BatchNorm2d(c), 4)),
        "builtin": net(nn.BatchNorm2d),
    }
    torch.manual_seed(0)
    models["custom ghost"](torch.randn(10, 1, 6, 6))  # running statistics and num_batches_tracked = 3
    source = models["custom ghost"].state_dict()
    assert "1.running_mean" in source and source["1.num_batches_tracked"].item() == 3
    for name, model in models.items():
        assert list(model.state_dict()) == list(source), name
        model.load_state_dict(source, strict=True)
        for key, value in model.state_dict().items():
            assert torch.equal(value, source[key]), (name, key)
    wrapped = models["builtin wrapped"]
    wrapped[1].layer.running_var.fill_(2)
    for name in ("custom ghost", "builtin"):
        models[name].load_state_dict(wrapped.state_dict(), strict=True)
        assert torch.all(models[name][1].running_var == 2)
    # A checkpoint from before num_batches_tracked existed (no version metadata) still loads.
    old = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    wrapped.load_state_dict(old, strict=True)
    assert wrapped[1].layer.num_batches_tracked.item() == 3  # kept, as torch does


@pytest.mark.parametrize("size", [0, -2, 2.5, True, "8"])
def test_ghost_batch_size_must_be_a_positive_int(size):
    with pytest.raises(ValueError, match="ghost_batch_size must be a positive int"):
        bn.BatchNorm1d(3, ghost_batch_size=size)
    with pytest.raises(ValueError, match="ghost_batch_size must be a positive int"):
        bn.GhostBatchNorm(nn.BatchNorm1d(3), size)


def test_ghost_and_sync_do_not_combine():
    with pytest.raises(ValueError, match="ghost_batch_size and sync=True cannot be combined"):
        bn.BatchNorm2d(3, ghost_batch_size=4, sync=True)
    for model in (nn.Sequential(bn.BatchNorm2d(3, ghost_batch_size=4)),
                  nn.Sequential(bn.GhostBatchNorm(nn.BatchNorm2d(3), 4))):
        with pytest.raises(ValueError, match="ghost batches and sync do not combine"):
            bn.convert_sync_batchnorm(model)
