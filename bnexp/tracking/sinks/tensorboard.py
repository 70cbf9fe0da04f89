"""``logger=tensorboard`` (the default): TensorBoard event files in the run directory."""

from __future__ import annotations

from typing import Optional

from omegaconf import DictConfig, OmegaConf

from bnexp.tracking.hparams import session_value
from bnexp.tracking.sinks import Sink, final_metrics, hparams

# Buckets per TensorBoard histogram. The writer's default ("tensorflow": ~1,500 exponential edges) makes
# ~5 KB events, and tensorboard (without TensorFlow) checksums every event byte by byte in pure Python
# (CRC-32C): at hist_every_steps=50 that alone cost ~4 % of CPU training time. TensorBoard redraws
# histograms with 30 buckets anyway.
HISTOGRAM_BINS = 64


def _quiet_writer_threads() -> None:
    """TensorBoard's writer thread keeps its error (a full disk) and raises it again in the thread
    that writes next, where the run reports it in one line; Python would also print the thread's
    traceback: not for those threads."""
    import threading

    previous = threading.excepthook
    if getattr(previous, "bnexp", False):
        return

    def hook(args) -> None:
        if type(args.thread).__name__ != "_AsyncWriterThread":
            previous(args)

    hook.bnexp = True
    threading.excepthook = hook


class TensorBoardSink(Sink):
    """TensorBoard event files in the run directory; the HParams entry in the run's own event file."""

    def __init__(self, run, cfg: DictConfig, resumed_at: Optional[int]):
        """A continued run drops the events its first session wrote after its checkpoint."""
        from torch.utils.tensorboard import SummaryWriter

        self.cfg = cfg
        _quiet_writer_threads()
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
