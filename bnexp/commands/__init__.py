"""CLI sub-commands: each module defines its commands as plain functions (importable and testable
on their own) and a ``register(app)`` that adds them; ``bnexp.cli`` finds the modules.

Modules here must not import torch at import time, so that ``bnexp --help`` stays instant.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable


def add(app: Any, name: str, function: Callable, **settings: Any) -> None:
    """Register ``function`` as ``bnexp NAME``; its docstring is the help (paragraphs re-flowed, so
    the terminal, not the source, decides where lines break)."""
    doc = inspect.cleandoc(function.__doc__ or "")
    text = "\n\n".join(" ".join(p.split()) for p in doc.split("\n\n"))
    app.command(name, help=text, **settings)(function)
