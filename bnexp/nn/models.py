"""The model families, built as flat ``nn.Sequential`` stacks (or, for ``resnet``, a flat module list
with a residual forward) with named norm sites.

Every affine/conv layer that feeds an activation is followed by a *norm site* (``norm1``,
``norm2``, ...): the layer ``norm.kind`` builds (:mod:`bnexp.nn.norms`), or ``nn.Identity`` for
``norm=none`` so the trainer can log the same pre-activations either way.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from bnexp.config.groups import ACTIVATIONS, MODELS, import_object
from bnexp.core.errors import BnexpError
from bnexp.nn.norms import build_norm


class NormNet(nn.Sequential):
    """A sequential model that knows the names of its norm sites."""

    def __init__(self, layers: "OrderedDict[str, nn.Module]"):
        super().__init__(layers)
        self.norm_sites = [name for name in layers if name.startswith("norm")]


def make_norm(norm_cfg, spatial: bool, num_features: int) -> nn.Module:
    """The norm site after a convolution (``spatial``) or a linear layer, as the norm's entry in
    :data:`bnexp.config.groups.NORMS` builds it; an identity for ``norm=none``. With ``norm.noise``
    > 0 the norm is followed by injected noise (:class:`bnexp.nn.variants.NoisyNorm`)."""
    layer = build_norm(norm_cfg, spatial, num_features)
    if layer is None:
        return nn.Identity()
    if norm_cfg.noise:
        from bnexp.nn.variants import NoisyNorm

        return NoisyNorm(layer, norm_cfg.noise)
    return layer


class _Builder:
    """Appends ``layer -> norm -> activation`` blocks with numbered names."""

    def __init__(self, model_cfg, norm_cfg):
        self.layers: OrderedDict[str, nn.Module] = OrderedDict()
        self.model_cfg, self.norm_cfg = model_cfg, norm_cfg
        self.count: dict[str, int] = {}

    def add(self, kind: str, module: nn.Module) -> None:
        self.count[kind] = self.count.get(kind, 0) + 1
        self.layers[f"{kind}{self.count[kind]}"] = module

    def block(self, kind: str, layer: nn.Module, features: int) -> None:
        self.add(kind, layer)
        self.add("norm", make_norm(self.norm_cfg, kind == "conv", features))
        self.add("act", import_object(ACTIVATIONS[self.model_cfg.activation])())


def _conv_stack(b: _Builder, in_channels: int, size: tuple[int, int]) -> int:
    """Add the model's conv stages (``bnexp.config.groups.MODELS``), each followed by 2x2 pooling; returns
    the number of features after flattening."""
    spec = MODELS[b.model_cfg.name]
    h, w = size
    channels = in_channels
    for out_channels, (kernel, padding) in zip(b.model_cfg.channels, spec.convs):
        b.block("conv", nn.Conv2d(channels, out_channels, kernel, padding=padding), out_channels)
        b.add("pool", getattr(nn, spec.pool)(kernel_size=2, stride=2))
        h, w = (h + 2 * padding - kernel + 1) // 2, (w + 2 * padding - kernel + 1) // 2
        channels = out_channels
        if h < 1 or w < 1:
            raise BnexpError(
                f"model={b.model_cfg.name}: images of {size[0]}x{size[1]} are too small for its conv stack; "
                "use a larger dataset.image_size or model=mlp"
            )
    for _ in range(len(spec.convs), (b.model_cfg.depth or 0) if spec.convs else 0):  # deeper: 3x3 convs at the last stage's width
        b.block("conv", nn.Conv2d(channels, channels, 3, padding=1), channels)
    b.add("flatten", nn.Flatten())
    return channels * h * w


def build_model(model_cfg, norm_cfg, in_channels: int, image_size: tuple[int, int], num_classes: int) -> NormNet:
    """Build ``model_cfg.name`` for inputs of shape ``(N, in_channels, *image_size)``: its conv
    stages, then a ``linear -> norm -> activation`` block per hidden size, then the classifier."""
    b = _Builder(model_cfg, norm_cfg)
    if MODELS[model_cfg.name].residual:
        model = _resnet(b, in_channels, num_classes)
        _initialize(model, model_cfg.init, model_cfg.init_std)
        return model
    features = _conv_stack(b, in_channels, image_size)
    hidden_sizes = list(model_cfg.hidden_sizes)
    if model_cfg.depth and not MODELS[model_cfg.name].convs:
        hidden_sizes = [hidden_sizes[0]] * model_cfg.depth
    for hidden in hidden_sizes:
        b.block("fc", nn.Linear(features, hidden), hidden)
        features = hidden
    b.add("fc", nn.Linear(features, num_classes))
    model = NormNet(b.layers)
    _initialize(model, model_cfg.init, model_cfg.init_std)
    return model


class ResNet(nn.Module):
    """A residual network whose modules are registered flat and in order (``conv1, norm1, act1,
    conv2, norm2, ...``), so its norm sites are named and found like those of a :class:`NormNet`.

    ``stem`` and ``head`` name modules applied in turn; each block is ``(branch, act, stride,
    out_channels)``: ``x = act(branch(x) + shortcut(x))`` with the parameter-free shortcut of He et
    al.'s CIFAR ResNets (option A: subsample by ``stride``, zero-pad the new channels)."""

    def __init__(self, layers: "OrderedDict[str, nn.Module]", stem: list[str], blocks: list, head: list[str]):
        super().__init__()
        for name, module in layers.items():
            self.add_module(name, module)
        self.norm_sites = [name for name in layers if name.startswith("norm")]
        self.stem, self.blocks, self.head = stem, blocks, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stem:
            x = self._modules[name](x)
        for branch, act, stride, out_channels in self.blocks:
            h = x
            for name in branch:
                h = self._modules[name](h)
            shortcut = x[:, :, ::stride, ::stride] if stride > 1 else x
            if out_channels > shortcut.shape[1]:
                shortcut = torch.nn.functional.pad(shortcut, (0, 0, 0, 0, 0, out_channels - shortcut.shape[1]))
            x = self._modules[act](h + shortcut)
        for name in self.head:
            x = self._modules[name](x)
        return x


def _resnet(b: _Builder, in_channels: int, num_classes: int) -> ResNet:
    """He et al.'s CIFAR ResNet of depth 6n+2 (``model.depth``, default 20) with ``model.channels``
    as its three stage widths: 6n+1 norm sites."""
    widths, cfg = list(b.model_cfg.channels), b.model_cfg
    per_stage = ((cfg.depth or 20) - 2) // 6
    act = ACTIVATIONS[cfg.activation]

    def names(start: int) -> list[str]:
        return list(b.layers)[start:]

    b.block("conv", nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), widths[0])
    stem, blocks, channels = names(0), [], widths[0]
    for stage, width in enumerate(widths):
        for i in range(per_stage):
            stride = 2 if stage > 0 and i == 0 else 1
            start = len(b.layers)
            b.block("conv", nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False), width)
            b.add("conv", nn.Conv2d(width, width, 3, padding=1, bias=False))
            b.add("norm", make_norm(b.norm_cfg, True, width))
            branch = names(start)
            b.add("act", import_object(act)())
            blocks.append((branch, list(b.layers)[-1], stride, width))
            channels = width
    start = len(b.layers)
    b.add("pool", nn.AdaptiveAvgPool2d(1))
    b.add("flatten", nn.Flatten())
    b.add("fc", nn.Linear(channels, num_classes))
    return ResNet(b.layers, stem, blocks, names(start))


def _initialize(model: nn.Module, scheme: str, std: float) -> None:
    """Re-initialize linear/conv weights (``default`` keeps torch's own initialization)."""
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if scheme == "xavier_uniform":
                nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def norm_layers(model: "NormNet | ResNet") -> list[tuple[str, nn.Module]]:
    """``(site name, module)`` for every norm site, identities included."""
    return [(name, getattr(model, name)) for name in model.norm_sites]
