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
        self.cfg, self.log_dir, self.resumed_at = cfg, str(run.path), resumed_at
        self._writer = None
        _quiet_writer_threads()

    @property
    def writer(self):
        """The event-file writer, created with the first event (importing TensorBoard and opening the
        file is start-up time otherwise, and a run that ends before its first event leaves no empty
        event file). A continued run drops the events its first session wrote after its checkpoint."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # a deep queue: the writer thread checksums events in pure Python; training should not wait on it
            purge_step = None if self.resumed_at is None else self.resumed_at + 1
            self._writer = SummaryWriter(log_dir=self.log_dir, purge_step=purge_step, max_queue=1000, flush_secs=10)
            if self.resumed_at is None:
                self._writer.add_text("config", "```\n" + OmegaConf.to_yaml(self.cfg, resolve=True) + "\n```", 0)
        return self._writer

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
        if self._writer is not None:
            self._writer.close()
