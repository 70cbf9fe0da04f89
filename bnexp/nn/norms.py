"""Builders of the norm sites, one per entry of :data:`bnexp.config.groups.NORMS`: each takes the
``norm`` config node, whether the site follows a convolution (``spatial``) and its channel count.

Adding a normalization: a builder here (or in the norm's own module under ``bnexp/nn``), its
:class:`~bnexp.config.groups.NormSpec` entry and a YAML file under ``conf/norm``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bnexp.core.errors import BnexpError
from bnexp.nn import batchnorm


def custom_batch_norm(norm_cfg, spatial: bool, num_features: int) -> nn.Module:
    """bnexp's BatchNorm; ghost batches and synchronized statistics are its own arguments."""
    options = {"ghost_batch_size": norm_cfg.ghost_batch_size} if norm_cfg.ghost_batch_size else {}
    if norm_cfg.sync:
        options["sync"] = True
    cls = batchnorm.BatchNorm2d if spatial else batchnorm.BatchNorm1d
    return cls(num_features, eps=norm_cfg.eps, momentum=norm_cfg.momentum, **options)


def torch_batch_norm(norm_cfg, spatial: bool, num_features: int) -> nn.Module:
    """torch's BatchNorm, wrapped for ghost batches (:class:`~bnexp.nn.batchnorm.GhostBatchNorm`);
    synchronized statistics are set once the device is known (:func:`synchronize_norms`)."""
    layer = (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(num_features, eps=norm_cfg.eps, momentum=norm_cfg.momentum)
    return batchnorm.GhostBatchNorm(layer, norm_cfg.ghost_batch_size) if norm_cfg.ghost_batch_size else layer


def layer_norm(norm_cfg, spatial: bool, num_features: int) -> nn.Module:
    """Layer normalization (Ba et al. 2016): each example normalized over its own features.
    After a convolution that is ``nn.GroupNorm(1, C)``, i.e. over (C, H, W) with per-channel
    gamma/beta (Wu & He 2018's LayerNorm); after a linear layer ``nn.LayerNorm(C)``."""
    if spatial:
        return nn.GroupNorm(1, num_features, eps=norm_cfg.eps)
    return nn.LayerNorm(num_features, eps=norm_cfg.eps)


def group_norm(norm_cfg, spatial: bool, num_features: int) -> nn.Module:
    """Group normalization (Wu & He 2018): each example normalized over ``norm.groups`` groups of
    channels (and their positions); the same for linear sites, whose features are the channels."""
    groups = norm_cfg.groups
    if num_features % groups:
        raise BnexpError(f"norm.groups={groups}: a norm site has {num_features} channels, which {groups} groups "
                         f"do not split evenly; use a divisor of every layer width (e.g. norm.groups=2)")
    return nn.GroupNorm(groups, num_features, eps=norm_cfg.eps)


def synchronize_norms(model: nn.Module, norm_cfg, device: torch.device) -> Optional[str]:
    """With ``norm.sync=true``, make torch's BN layers take their statistics over every process's
    batch: ``nn.SyncBatchNorm`` on CUDA; elsewhere bnexp's synchronized layer (the same statistics
    and gradients), since torch's refuses CPU tensors. Returns a one-line note when it stands in.
    (bnexp's layers are built synchronized by their builder; without a process group of several
    ranks, synchronized layers are plain batch norm.)"""
    torch_bn = [m for m in model.modules() if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)]
    if not norm_cfg.sync or not torch_bn:
        return None
    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return None
    batchnorm.convert_sync_batchnorm(model)
    return (f"norm={norm_cfg.kind} norm.sync=true on {device.type}: torch's SyncBatchNorm runs on CUDA only, so "
            "bnexp's synchronized BatchNorm (bnexp.nn.batchnorm, same statistics and gradients) stands in for it")
