"""Sinks: where measurements are written. Probes and listeners measure once and hand the numbers
to every sink the run's ``logger`` config names (``conf/logger``, the way lightning-hydra-template
picks loggers); a sink only writes. ``metrics.jsonl`` is the run's own record and always written
(:class:`bnexp.tracking.listeners.RunLog`); these are the extra destinations.

A sink is built as ``Sink(run, cfg, resumed_at)`` and receives, in this order::

    scalars(values, step)           a dict of tag -> float at a global step
    histogram(tag, values, step)    a CPU sample of values (sinks without histograms ignore it)
    final(metrics, status)          once, when the run ended completed or diverged
    close(status)                   once, however the run ended (its status)

Adding a logger: one module with a Sink subclass, its entry in ``bnexp.config.groups.LOGGERS`` and
a YAML under ``conf/logger`` (docs/architecture.md).
"""

from __future__ import annotations

from typing import Optional

from omegaconf import DictConfig, OmegaConf

from bnexp.config.groups import LOGGERS, import_object
from bnexp.core.keys import flatten
from bnexp.core.vocab import is_plumbing
from bnexp.tracking.hparams import FINAL_METRICS, session_value


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


def open_sinks(run, cfg: DictConfig, resumed_at: Optional[int]) -> list[Sink]:
    """The sinks ``cfg.logger.sinks`` names, opened for ``run`` (``resumed_at``: a continued run's
    checkpoint step). One that fails to open closes those already opened."""
    opened: list[Sink] = []
    try:
        for name in cfg.logger.sinks:
            opened.append(import_object(LOGGERS[name])(run, cfg, resumed_at))
    except BaseException:
        for sink in opened:
            sink.close("failed")
        raise
    return opened


# Buckets per TensorBoard histogram. The writer's default ("tensorflow": ~1,500 exponential edges) makes
# ~5 KB events, and tensorboard (without TensorFlow) checksums every event byte by byte in pure Python
# (CRC-32C): at hist_every_steps=50 that alone cost ~4 % of CPU training time. TensorBoard redraws
# histograms with 30 buckets anyway.
HISTOGRAM_BINS = 64


class TensorBoardSink(Sink):
    """TensorBoard event files in the run directory; the HParams entry in the run's own event file."""

    def __init__(self, run, cfg: DictConfig, resumed_at: Optional[int]):
        """A continued run drops the events its first session wrote after its checkpoint."""
        from torch.utils.tensorboard import SummaryWriter

        self.cfg = cfg
        # a deep queue: the writer thread checksums events in pure Python; training should not wait on it
        self.writer = SummaryWriter(log_dir=str(run.path), purge_step=None if resumed_at is None else resumed_at + 1,
                                    max_queue=1000, flush_secs=10)
        if resumed_at is None:
            self.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg, resolve=True) + "\n```", 0)

    def scalars(self, values, step):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def histogram(self, tag, values, step):
        self.writer.add_histogram(tag, values, step, bins=HISTOGRAM_BINS)

    def final(self, metrics, status):
        """The HParams entry, written into this run's own event file (not a sub-run, unlike
        ``SummaryWriter.add_hparams``): flattened config as hparams, final metrics as metrics.
        The table's columns (the *experiment*) are not written per run: TensorBoard uses one
        experiment per logdir, picked arbitrarily among several, so a sweep writes one for its jobs
        and ``bnexp tensorboard`` one for its selection (see :mod:`bnexp.tracking.hparams`)."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        final = final_metrics(metrics)
        params = {k: session_value(v) for k, v in hparams(self.cfg).items()}
        _, session_start, session_end = hparams_summaries({**params, "status": status}, final)
        for summary in (session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        self.scalars(final, int(metrics.get("step", 0)))

    def close(self, status):
        self.writer.close()
