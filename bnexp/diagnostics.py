"""BN diagnostics: listeners of the training loop that measure what batch norm does beyond the
activations Telemetry logs. :func:`diagnostics` picks those a run's config asks for."""

from __future__ import annotations

from omegaconf import DictConfig

from bnexp.callbacks import Callback


def diagnostics(cfg: DictConfig, run, model) -> list[Callback]:
    """The diagnostic listeners for this run (none yet)."""
    return []
