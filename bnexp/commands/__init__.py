"""CLI sub-commands: each module defines ``register(app)`` and is found by ``bnexp.cli``.

Modules here must not import torch at import time, so that ``bnexp --help`` stays instant.
"""
