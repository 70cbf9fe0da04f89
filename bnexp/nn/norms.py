"""Building the norm sites from :data:`bnexp.config.groups.NORMS`: a torch layer its entry names
(:func:`torch_layer`), or its builder function, which takes the ``norm`` config node, whether the
site follows a convolution (``spatial``) and its channel count; bnexp's own BatchNorm's builders
are here, other norms written for bnexp keep theirs in their own module (:mod:`bnexp.nn.variants`).

Adding a normalization: docs/architecture.md ("Add a normalization").
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bnexp.config.groups import NORMS, Layer, import_object
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


def torch_layer(layer: Layer, norm_cfg, num_features: int) -> nn.Module:
    """A registry entry's torch layer (:class:`~bnexp.config.groups.Layer`) at one site; a layer that
    refuses the site (``norm.groups`` not dividing its channels) is a one-line error naming the key."""
    args = [num_features if a == "C" else norm_cfg[a[len("norm."):]] if str(a).startswith("norm.") else a
            for a in layer.args]
    try:
        return import_object(layer.cls)(*args, eps=norm_cfg.eps, **dict(layer.kwargs))
    except (ValueError, TypeError) as exc:
        keys = ", ".join(f"{a}={norm_cfg[a[len('norm.'):]]}" for a in layer.args if str(a).startswith("norm."))
        raise BnexpError(f"{keys or f'norm={norm_cfg.kind}'}: a norm site has {num_features} channels, which "
                         f"{layer.cls}({', '.join(map(str, args))}) refuses: {exc}") from None


def build_norm(norm_cfg, spatial: bool, num_features: int) -> Optional[nn.Module]:
    """The layer ``norm.kind``'s registry entry builds at a site after a convolution (``spatial``)
    or a linear layer; None when the norm has no layer (``norm=none``)."""
    spec = NORMS[norm_cfg.kind]
    if spec.build:
        return import_object(spec.build)(norm_cfg, spatial, num_features)
    layer = spec.linear if spec.linear and not spatial else spec.layer
    return torch_layer(layer, norm_cfg, num_features) if layer else None


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
