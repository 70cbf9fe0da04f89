"""Synchronized batch norm on CPU: two gloo processes, each with part of one batch, against one
process normalizing the whole batch.

One spawn of two ranks runs every case (spawning costs seconds, the cases milliseconds) and leaves
its results in files; the comparisons run in the test process.
"""

from __future__ import annotations

import datetime
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import bnexp.nn.batchnorm as bn
from bnexp.nn.check import TOLERANCE

BATCH, CHANNELS, STEPS = 64, 3, 2
SHAPES = {"BatchNorm1d": (BATCH, CHANNELS), "BatchNorm2d": (BATCH, CHANNELS, 3, 2)}
TIMEOUT_S = 180

# name: (class, examples per rank, dtype, layer options, how the rank builds its layer)
CASES = {
    f"{cls_name} {'+'.join(map(str, split))} {dtype}": (cls_name, split, dtype, {}, "custom")
    for cls_name in SHAPES
    for split in ((32, 32), (40, 24))
    for dtype in ("float32", "float64")
}
CASES.update({
    "BatchNorm2d 40+24 float64 momentum=None": ("BatchNorm2d", (40, 24), "float64", {"momentum": None}, "custom"),
    "BatchNorm2d 64+0 float64 (an empty rank)": ("BatchNorm2d", (64, 0), "float64", {}, "custom"),
    "BatchNorm1d 32+32 float64 torch's, converted": ("BatchNorm1d", (32, 32), "float64", {}, "converted"),
    "BatchNorm2d 40+24 float64 torch's, converted": ("BatchNorm2d", (40, 24), "float64", {}, "converted"),
    "BatchNorm2d 32+32 float64 sync=False": ("BatchNorm2d", (32, 32), "float64", {}, "unsynced"),
    "BatchNorm1d 40+24 float64 own process group": ("BatchNorm1d", (40, 24), "float64", {}, "own group"),
})


def case_data(name: str):
    """The whole batch, its output gradient (per step) and the initial parameters of a case."""
    cls_name, _, dtype, _, _ = CASES[name]
    gen = torch.Generator().manual_seed(sorted(CASES).index(name))

    def rand(*size, uniform=False):
        return (torch.rand if uniform else torch.randn)(size, generator=gen, dtype=torch.float64).to(getattr(torch, dtype))

    shape = SHAPES[cls_name]
    steps = [(rand(*shape) * (step + 2) + 5 * step - 3, rand(*shape)) for step in range(STEPS)]
    return steps, {"weight": rand(CHANNELS, uniform=True) + 0.5, "bias": rand(CHANNELS)}


def run_case(layer: nn.Module, name: str, rows: slice) -> dict:
    """Training steps on ``rows`` of each step's batch, then an evaluation forward; what to compare."""
    steps, params = case_data(name)
    with torch.no_grad():
        layer.weight.copy_(params["weight"]), layer.bias.copy_(params["bias"])
    result = {}
    for step, (x, grad) in enumerate(steps):
        xi = x[rows].clone().requires_grad_()
        y = layer(xi)
        y.backward(grad[rows])
        result.update({f"output {step}": y.detach(), f"grad_input {step}": xi.grad,
                       f"grad_weight {step}": layer.weight.grad.clone(), f"grad_bias {step}": layer.bias.grad.clone()})
        layer.zero_grad(set_to_none=True)
    layer.eval()
    result["eval output"] = layer(steps[0][0][rows]).detach()
    result.update({key: buffer.clone() for key, buffer in layer.named_buffers()})
    return result


def rank_main(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One rank: every case on its share of the batch; results saved to ``out_dir/<rank>.pt``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S / 2))
    own_groups = [dist.new_group([r]) for r in range(world_size)]  # every rank creates every group
    results = {}
    for name, (cls_name, split, dtype, options, build) in CASES.items():
        factory = {"dtype": getattr(torch, dtype)}
        if build == "converted":
            layer = bn.convert_sync_batchnorm(nn.Sequential(getattr(nn, cls_name)(CHANNELS, **options, **factory)))[0]
            assert type(layer) is getattr(bn, cls_name) and layer.sync
        else:
            layer = getattr(bn, cls_name)(CHANNELS, sync=build != "unsynced", **options, **factory)
            if build == "own group":
                layer.process_group = own_groups[rank]
        start = sum(split[:rank])
        results[name] = run_case(layer, name, slice(start, start + split[rank]))
    torch.save(results, f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    """Both ranks' results, from one spawn of two gloo processes on 127.0.0.1."""
    out_dir = tmp_path_factory.mktemp("ranks")
    context = mp.start_processes(rank_main, args=(2, free_port(), str(out_dir)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two ranks did not finish within {TIMEOUT_S} s (a collective hung?)")
    return [torch.load(out_dir / f"{rank}.pt") for rank in range(2)]


def assert_close(actual, expected, dtype: str, what: str) -> None:
    """The check-bn standard: ``max|actual - expected| <= tolerance * max|expected|``."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    if expected.numel():
        scale = max(expected.abs().max().item(), 1e-30)
        diff = (actual - expected).abs().max().item()
        assert diff <= TOLERANCE[dtype] * scale, f"{what}: max diff {diff:.3g} vs scale {scale:.3g}"


def reference(name: str, rows: slice | None = None, ghost_batch_size: int | None = None) -> dict:
    """One process, plain custom batch norm: on the whole batch, on ``rows`` of it, or in ghost batches."""
    cls_name, _, dtype, options, _ = CASES[name]
    layer = getattr(bn, cls_name)(CHANNELS, ghost_batch_size=ghost_batch_size, dtype=getattr(torch, dtype), **options)
    return run_case(layer, name, rows or slice(None))


@pytest.mark.parametrize("name", [n for n, case in CASES.items() if case[4] in ("custom", "converted")])
def test_two_ranks_equal_one_process_on_the_whole_batch(rank_results, name):
    _, split, dtype, _, _ = CASES[name]
    whole = reference(name)
    for key, expected in whole.items():
        parts = [results[name][key] for results in rank_results]
        if key.startswith(("output", "grad_input", "eval output")):  # per example: this rank's rows
            assert_close(torch.cat(parts), expected, dtype, key)
        elif key.startswith(("grad_weight", "grad_bias")):  # local sums, which DDP would add up
            assert_close(parts[0] + parts[1], expected, dtype, key)
        else:  # buffers: the same on every rank
            for part in parts:
                if expected.is_floating_point():
                    assert_close(part, expected, dtype, key)
                else:
                    assert torch.equal(part, expected), key


def test_unsynced_ranks_are_ghost_batches(rank_results):
    """sync=False with 32 examples per rank: each rank normalizes its own half, which in one process
    is ghost batch norm with virtual batches of 32 (rank 0's buffers see the first half only)."""
    name = "BatchNorm2d 32+32 float64 sync=False"
    ghost = reference(name, ghost_batch_size=32)
    for key in (k for k in ghost if k.startswith(("output", "grad_input"))):
        assert_close(torch.cat([results[name][key] for results in rank_results]), ghost[key], "float64", key)
    for key in (k for k in ghost if k.startswith(("grad_weight", "grad_bias"))):
        assert_close(rank_results[0][name][key] + rank_results[1][name][key], ghost[key], "float64", key)
    for rank, rows in enumerate((slice(0, 32), slice(32, 64))):
        alone = reference(name, rows)
        for key, expected in alone.items():
            assert_close(rank_results[rank][name][key].double(), expected.double(), "float64", key)


def test_own_process_group_is_local_batch_norm(rank_results):
    """A process group of one rank (as for passes only one rank makes): plain local statistics."""
    name = "BatchNorm1d 40+24 float64 own process group"
    for rank, rows in enumerate((slice(0, 40), slice(40, 64))):
        alone = reference(name, rows)
        for key, expected in alone.items():
            assert_close(rank_results[rank][name][key].double(), expected.double(), "float64", key)


def test_without_a_process_group_sync_is_plain_batch_norm():
    """Not initialized (or one process): sync=True runs the plain code path, equal to the bit."""
    assert not dist.is_initialized()
    gen = torch.Generator().manual_seed(0)
    x, grad = torch.randn(8, 3, 2, 2, generator=gen), torch.randn(8, 3, 2, 2, generator=gen)
    results = []
    for layer in (bn.BatchNorm2d(3, sync=True), bn.BatchNorm2d(3)):
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(grad)
        results.append([y, xi.grad, layer.weight.grad, *layer.buffers()])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert "sync=True" in repr(bn.BatchNorm2d(3, sync=True))


def test_convert_sync_batchnorm_swaps_torch_layers_and_keeps_their_tensors():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 5),
                          nn.BatchNorm1d(5, affine=False), bn.BatchNorm1d(5))
    model[1].running_mean.fill_(0.5)
    model.eval()
    tensors = {name: t for name, t in [*model.named_parameters(), *model.named_buffers()]}
    keys = list(model.state_dict())
    converted = bn.convert_sync_batchnorm(model)
    assert converted is model
    assert [type(m) for m in model] == [nn.Conv2d, bn.BatchNorm2d, nn.Flatten, nn.Linear, bn.BatchNorm1d,
                                        bn.BatchNorm1d]
    assert all(m.sync for m in model if isinstance(m, bn._BatchNorm)) and not model[1].training
    assert model[4].weight is None and model[4].running_mean is not None
    assert list(model.state_dict()) == keys
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert t is tensors[name], name  # shared: an optimizer built before still updates them
    layer = bn.convert_sync_batchnorm(nn.BatchNorm3d(2, momentum=None, eps=1e-3))
    assert type(layer) is bn.BatchNorm3d and (layer.momentum, layer.eps, layer.sync) == (None, 1e-3, True)
