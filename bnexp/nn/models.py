"""The three model families, built as flat ``nn.Sequential`` stacks with named norm sites.

Every affine/conv layer that feeds an activation is followed by a *norm site* (``norm1``,
``norm2``, ...): the layer ``norm.kind`` builds (:mod:`bnexp.nn.norms`), or ``nn.Identity`` for
``norm=none`` so the trainer can log the same pre-activations either way.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from bnexp.config.groups import ACTIVATIONS, MODELS, NORMS, import_object
from bnexp.core.errors import BnexpError


class NormNet(nn.Sequential):
    """A sequential model that knows the names of its norm sites."""

    def __init__(self, layers: "OrderedDict[str, nn.Module]"):
        super().__init__(layers)
        self.norm_sites = [name for name in layers if name.startswith("norm")]


def make_norm(norm_cfg, spatial: bool, num_features: int) -> nn.Module:
    """The norm site after a convolution (``spatial``) or a linear layer, as the norm's entry in
    :data:`bnexp.config.groups.NORMS` builds it; an identity for ``norm=none``."""
    spec = NORMS[norm_cfg.kind]
    return import_object(spec.build)(norm_cfg, spatial, num_features) if spec.build else nn.Identity()


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
    b.add("flatten", nn.Flatten())
    return channels * h * w


def build_model(model_cfg, norm_cfg, in_channels: int, image_size: tuple[int, int], num_classes: int) -> NormNet:
    """Build ``model_cfg.name`` for inputs of shape ``(N, in_channels, *image_size)``: its conv
    stages, then a ``linear -> norm -> activation`` block per hidden size, then the classifier."""
    b = _Builder(model_cfg, norm_cfg)
    features = _conv_stack(b, in_channels, image_size)
    for hidden in model_cfg.hidden_sizes:
        b.block("fc", nn.Linear(features, hidden), hidden)
        features = hidden
    b.add("fc", nn.Linear(features, num_classes))
    model = NormNet(b.layers)
    _initialize(model, model_cfg.init, model_cfg.init_std)
    return model


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
            nn.init.zeros_(module.bias)


def norm_layers(model: NormNet) -> list[tuple[str, nn.Module]]:
    """``(site name, module)`` for every norm site, identities included."""
    return [(name, getattr(model, name)) for name in model.norm_sites]
