"""Dotted config keys, in the two forms the command line and the records use them: ``key=value``
overrides, and nested mappings flattened to ``{"optimizer.lr": 0.1}``. The one parser of each."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable, Optional


def override_key(override: str) -> str:
    """``optimizer.lr=0.1`` -> ``optimizer.lr``; ``+threads=1`` / ``~name`` -> ``threads`` / ``name``."""
    return override.split("=", 1)[0].lstrip("+~")


def override_value(overrides: Iterable[str], key: str) -> Optional[str]:
    """The value the last ``key=...`` override gives (``experiment=mlp_mnist`` -> ``mlp_mnist``)."""
    values = [o.split("=", 1)[1] for o in overrides if "=" in o and override_key(o) == key]
    return values[-1] if values else None


def flatten(mapping: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{'optimizer': {'lr': 0.1}}`` -> ``{'optimizer.lr': 0.1}``: the scalar leaves, lists as text
    (for HParams, tables and CSV columns). A DictConfig is flattened as its resolved container."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "."))
        elif isinstance(value, (list, tuple)):
            flat[path] = str(list(value))
        else:
            flat[path] = value
    return flat
