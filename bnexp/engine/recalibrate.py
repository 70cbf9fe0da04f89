"""Recalibration ("precise BN"): recompute BN running statistics as the plain average over
training batches (fvcore's ``update_bn_stats``, torch's ``swa_utils.update_bn``), without gradients."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterable, Iterator

import torch
from torch import nn


def running_stat_layers(model: nn.Module) -> list[nn.Module]:
    """Every layer that keeps running statistics (torch's and bnexp's BatchNorm, also inside a
    GhostBatchNorm wrapper)."""
    return [m for m in model.modules()
            if isinstance(getattr(m, "running_mean", None), torch.Tensor) and hasattr(m, "momentum")]


def recalibration_indices(n: int, batch_size: int, seed: int, epoch: int, batches: int) -> list[torch.Tensor]:
    """``batches`` index batches of ``batch_size`` (fewer if an epoch holds fewer) drawn for the
    recalibration after ``epoch``: a generator of their own, so the training shuffle, the global
    RNG and a continued run are untouched."""
    # a hash, not an offset from the shuffle's seed (seed * 1_000_003 + epoch): torch's CPU generator
    # keeps only the low 32 bits of a seed, so seed + 2**62 would replay the training shuffle
    digest = hashlib.sha256(f"bnexp recalibration {seed} {epoch}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:4], "little"))
    order = torch.randperm(n, generator=generator)
    return [idx for idx in order.split(batch_size) if len(idx) >= 2][:batches]


@torch.no_grad()
def recalibrate(model: nn.Module, inputs: Iterable[torch.Tensor]) -> int:
    """Replace the running statistics of every BN layer by their plain average over the batches of
    ``inputs`` (normalized model inputs), forwarded in training mode without gradients; returns how
    many batches were used. ``num_batches_tracked`` keeps counting training steps, and the layers'
    momentum and the model's mode are put back."""
    layers = running_stat_layers(model)
    counters = [getattr(m, "num_batches_tracked", None) for m in layers]
    kept = [(m, m.momentum, None if c is None else c.clone()) for m, c in zip(layers, counters)]
    was_training = model.training
    used = 0
    try:
        for x in inputs:
            if used == 0:  # reset only once there is something to average
                for m in layers:
                    m.reset_running_stats()
                    m.momentum = None  # cumulative average: factor 1 / num_batches_tracked
                model.train()
            model(x)
            used += 1
    finally:
        for m, momentum, tracked in kept:
            m.momentum = momentum
            if tracked is not None and used:
                m.num_batches_tracked.copy_(tracked)
        model.train(was_training)
    return used


def recalibration_batches(data, batch_size: int, seed: int, epoch: int, batches: int) -> Iterator[torch.Tensor]:
    """The normalized training batches :func:`recalibrate` averages over (see :func:`recalibration_indices`)."""
    for idx in recalibration_indices(len(data.train_x), batch_size, seed, epoch, batches):
        yield data.normalize(data.train_x[idx.to(data.train_x.device)])


@contextlib.contextmanager
def buffers_restored(model: nn.Module) -> Iterator[None]:
    """Whatever happens to the BN layers' buffers inside, they are as before afterwards."""
    saved = [(b, b.clone()) for m in running_stat_layers(model) for b in m.buffers(recurse=False)]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
