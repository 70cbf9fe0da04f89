"""The tables of swappable parts: name -> what builds it, as a dotted path (no torch imported here).

One table both validates a name (:mod:`bnexp.config.compose`) and, in the layer that builds it,
constructs it. Adding an optimizer is one entry here plus one YAML file under ``conf/optimizer``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.resources
from pathlib import Path
from typing import Any, NamedTuple, Optional


class ModelSpec(NamedTuple):
    """A model family: its conv stages as ``(kernel, padding)`` (each followed by 2x2 pooling)."""

    convs: tuple = ()
    pool: Optional[str] = None  # torch.nn class of the pooling after each conv stage
    residual: bool = False  # a ResNet (bnexp.nn.models.ResNet): channels are its stage widths, depth 6n+2


MODELS = {
    "mlp": ModelSpec(),
    "lenet": ModelSpec(convs=((5, 2), (5, 0)), pool="AvgPool2d"),  # d2l LeNet-5
    "convnet": ModelSpec(convs=((3, 1), (5, 0)), pool="MaxPool2d"),  # the course's conv_bn_net
    "resnet": ModelSpec(residual=True),  # He et al. 2016's CIFAR ResNet (ResNet-20 at depth 20)
}


ACTIVATIONS = {"relu": "torch.nn.ReLU", "sigmoid": "torch.nn.Sigmoid", "tanh": "torch.nn.Tanh",
               "gelu": "torch.nn.GELU", "leaky_relu": "torch.nn.LeakyReLU"}


INITS = ("default", "xavier_uniform", "normal")


class Layer(NamedTuple):
    """A torch layer at a norm site, built as ``cls(*args, eps=norm.eps, **kwargs)``: in ``args``,
    ``"C"`` is the site's channel count and ``"norm.<key>"`` that key of the run's norm config."""

    cls: str  # dotted path of the torch.nn class
    args: tuple = ("C",)
    kwargs: tuple = ()  # (name, value) pairs


class NormSpec(NamedTuple):
    """What a normalization is: the one place every layer asks (``NORMS[cfg.norm.kind]``) instead
    of testing the name. A norm torch provides is one entry here (``layer=``, and ``linear=`` when
    the layer after linear layers differs) plus one YAML file under ``conf/norm``; a norm written
    here is its module under ``bnexp/nn`` (the layer and a builder ``build(norm_cfg, spatial,
    num_features) -> nn.Module``), its entry naming the builder, and the YAML (docs/architecture.md)."""

    build: Optional[str] = None  # dotted path of a builder; None with no layer: identity sites (nothing normalizes)
    layer: Optional[Layer] = None  # or: the torch layer at every site (after convolutions: input N, C, H, W) ...
    linear: Optional[Layer] = None  # ... and, when different, the one after linear layers (input N, C)
    running_stats: bool = False  # keeps running statistics: eval differs from train (train/eval gap, recalibration)
    min_batch: int = 1  # fewest examples a (per-process) training batch needs: 2 when statistics span the batch
    ghost: bool = False  # takes norm.ghost_batch_size (statistics over virtual batches)
    sync: bool = False  # takes norm.sync (statistics over every process's batch)
    compile: bool = False  # takes norm.compile (a torch.compile'd kernel)
    title: str = ""  # how figures and tables name it
    color: str = "#7f7f7f"  # its colour in figures


NORMS = {
    "none": NormSpec(title="without BN (norm=none)"),
    "custom": NormSpec("bnexp.nn.norms.custom_batch_norm", running_stats=True, min_batch=2, ghost=True, sync=True,
                       compile=True, title="with BN (norm=custom)", color="#ff7f0e"),
    "builtin": NormSpec("bnexp.nn.norms.torch_batch_norm", running_stats=True, min_batch=2, ghost=True, sync=True,
                        title="with BN (norm=builtin)", color="#1f77b4"),
    # Ba et al. 2016: each example over its own features; after a convolution over (C, H, W) with
    # per-channel gamma/beta (Wu & He 2018's LayerNorm for images)
    "layer": NormSpec(layer=Layer("torch.nn.GroupNorm", (1, "C")), linear=Layer("torch.nn.LayerNorm"),
                      title="LayerNorm (norm=layer)", color="#2ca02c"),
    # Wu & He 2018: each example over norm.groups groups of channels (and their positions)
    "group": NormSpec(layer=Layer("torch.nn.GroupNorm", ("norm.groups", "C")), title="GroupNorm (norm=group)",
                      color="#9467bd"),
    "batch_renorm": NormSpec("bnexp.nn.variants.batch_renorm", running_stats=True, min_batch=2, ghost=True,
                             title="batch renorm (norm=batch_renorm)", color="#d62728"),
    "frozen": NormSpec("bnexp.nn.variants.frozen_batch_norm", title="frozen BN (norm=frozen)", color="#8c564b"),
}


SINKS_DIR = Path(__file__).resolve().parent.parent / "tracking" / "sinks"


def sink_names() -> list[str]:
    """The sinks ``logger.sinks`` may name: one module each in ``bnexp/tracking/sinks/``, found by
    file name as commands are (nothing imported). metrics.jsonl is always written besides them."""
    return sorted(p.stem for p in SINKS_DIR.glob("*.py") if not p.stem.startswith("_"))


@functools.lru_cache(maxsize=None)
def sink_requires(name: str) -> Optional[tuple[str, str]]:
    """A sink's optional package as its module declares it, ``REQUIRES = (import name, pip
    argument)``, e.g. ``("mlflow", "bnexp[mlflow]")``; None when it needs none. The constant is read
    from the module's source (the module itself is the tracking layer's to import)."""
    import ast

    tree = ast.parse((SINKS_DIR / f"{name}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "REQUIRES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    return None


# optimizer -> (class, the optimizer keys it takes)
OPTIMIZERS = {
    "sgd": ("torch.optim.SGD", ("lr", "momentum", "nesterov", "weight_decay")),
    "adam": ("torch.optim.Adam", ("lr", "betas", "weight_decay")),
    "adamw": ("torch.optim.AdamW", ("lr", "betas", "weight_decay")),
}


SCHEDULES = ("constant", "cosine")


DEVICES = ("auto", "cpu", "cuda", "mps")


# dataset -> how it is loaded: "digits", "idx", or "torchvision:<class in torchvision.datasets>"
DATASETS = {"digits": "digits", "mnist": "torchvision:MNIST", "fashion_mnist": "torchvision:FashionMNIST",
            "cifar10": "torchvision:CIFAR10", "idx": "idx"}


def import_object(dotted: str) -> Any:
    """``torch.optim.SGD`` -> the class (for the builders; config itself never calls it)."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def config_dir() -> Path:
    """The installed config tree (``conf/`` in a checkout), usable from any working directory."""
    return Path(str(importlib.resources.files("bnexp.conf")))


def group_options(group: str) -> list[str]:
    """Names of the options of a config group, e.g. ``model`` -> ``['convnet', 'lenet', 'mlp']``."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
