"""Sinks: where measurements are written. Probes and listeners measure once and hand the numbers
to every sink the run's ``logger`` config names (``conf/logger``, the way lightning-hydra-template
picks loggers); a sink only writes. ``metrics.jsonl`` is the run's own log and always written
(:class:`bnexp.tracking.listeners.RunLog`); these are the extra destinations.

A sink is built as ``Sink(run, cfg, resumed_at)`` and receives, in this order::

    scalars(values, step)           a dict of tag -> float at a global step
    histogram(tag, values, step)    a CPU sample of values (sinks without histograms ignore it)
    final(metrics, status)          once, when the run ended completed or diverged
    close(status)                   once, however the run ended (its status)

Each sink is one module of this package, named as ``logger.sinks`` names it (``tensorboard.py``,
``mlflow.py``), holding one Sink subclass; an optional package it needs is bnexp's extra of the same
name (``bnexp[mlflow]``). Adding a logger: that module and a YAML under ``conf/logger``
(docs/architecture.md).
"""

from __future__ import annotations

import importlib
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from bnexp.core.keys import flatten
from bnexp.core.vocab import is_plumbing
from bnexp.engine.callbacks import Callback
from bnexp.tracking.hparams import FINAL_METRICS


class Sink:
    """Where measurements go; override what the destination can store."""

    def scalars(self, values: dict[str, float], step: int) -> None: ...

    def histogram(self, tag: str, values, step: int) -> None: ...

    def final(self, metrics: dict, status: str) -> None: ...

    def close(self, status: str) -> None: ...  # status: how the run ended (completed, failed, ...)


def hparams(cfg: DictConfig) -> dict:
    """The config keys that describe a run (not where or how it ran), flattened; ``None`` as ``null``."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    return {k: ("null" if v is None else v) for k, v in flatten(plain).items() if not is_plumbing(k)}


def final_metrics(metrics: dict) -> dict[str, float]:
    """``final/<metric>`` for the metrics every logger reports at the end of a run."""
    return {f"final/{k}": float(metrics[k]) for k in FINAL_METRICS if k in metrics}


def sink_class(name: str) -> type[Sink]:
    """The Sink subclass of the module ``bnexp.tracking.sinks.<name>`` (a name validation checked
    against :func:`bnexp.config.groups.sink_names`)."""
    module = importlib.import_module(f"{__name__}.{name}")
    (cls,) = [v for v in vars(module).values()
              if isinstance(v, type) and issubclass(v, Sink) and v.__module__ == module.__name__]
    return cls


def open_sinks(run, cfg: DictConfig, resumed_at: Optional[int]) -> list[Sink]:
    """The sinks ``cfg.logger.sinks`` names, opened for ``run`` (``resumed_at``: a continued run's
    checkpoint step). One that fails to open closes those already opened."""
    opened: list[Sink] = []
    try:
        for name in cfg.logger.sinks:
            opened.append(sink_class(name)(run, cfg, resumed_at))
    except BaseException:
        for sink in opened:
            sink.close("failed")
        raise
    return opened


class Measurements:
    """Where probes hand what they measured, once: scalars and histograms go to every sink, entries
    to the run's log (metrics.jsonl), files to the run directory. Probes take this and nothing else
    of the run: none holds a sink, a writer or the run, so none knows where its numbers end up."""

    def __init__(self, run, sinks: list[Sink]):
        self.run, self.sinks = run, sinks

    def scalars(self, values: dict[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.scalars(values, step)

    def histogram(self, tag: str, values, step: int) -> None:
        for sink in self.sinks:
            sink.histogram(tag, values, step)

    def entry(self, entry: dict) -> None:
        """One line of the run's log (metrics.jsonl), e.g. ``{"kind": "grad", "step": ..., ...}``."""
        self.run.log(entry)

    def file(self, name: str, data) -> None:
        """A JSON file of the run directory (``norm_params.json``), written atomically."""
        from bnexp.store.files import write_json

        write_json(self.run.path / name, data)


class Publishing(Callback):
    """Ends the sinks with the run: the final metrics when it ended with a result, then ``close``
    with its status however it ended (registered before the probes: listeners end in reverse, so
    it ends after them)."""

    def __init__(self, measurements: Measurements):
        self.sinks = measurements.sinks

    def on_end(self, loop, outcome):
        try:
            if outcome.status in ("completed", "diverged"):
                for sink in self.sinks:
                    sink.final(loop.progress.metrics, outcome.status)
        finally:
            for sink in self.sinks:
                sink.close(outcome.status)
