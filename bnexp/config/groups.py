"""The tables of swappable parts: name -> what builds it, as a dotted path (no torch imported here).

One table both validates a name (:mod:`bnexp.config.compose`) and, in the layer that builds it,
constructs it. Adding an optimizer is one entry here plus one YAML file under ``conf/optimizer``.
"""

from __future__ import annotations

import importlib
import importlib.resources
from pathlib import Path
from typing import Any, NamedTuple, Optional


class ModelSpec(NamedTuple):
    """A model family: its conv stages as ``(kernel, padding)`` (each followed by 2x2 pooling)."""

    convs: tuple = ()
    pool: Optional[str] = None  # torch.nn class of the pooling after each conv stage


MODELS = {
    "mlp": ModelSpec(),
    "lenet": ModelSpec(convs=((5, 2), (5, 0)), pool="AvgPool2d"),  # d2l LeNet-5
    "convnet": ModelSpec(convs=((3, 1), (5, 0)), pool="MaxPool2d"),  # the course's conv_bn_net
}


ACTIVATIONS = {"relu": "torch.nn.ReLU", "sigmoid": "torch.nn.Sigmoid", "tanh": "torch.nn.Tanh",
               "gelu": "torch.nn.GELU", "leaky_relu": "torch.nn.LeakyReLU"}


INITS = ("default", "xavier_uniform", "normal")


# norm kind -> the module holding BatchNorm1d/BatchNorm2d (None: identity sites)
NORMS = {"none": None, "custom": "bnexp.nn.batchnorm", "builtin": "torch.nn"}


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
