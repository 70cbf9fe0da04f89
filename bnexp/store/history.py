"""A run's history from ``metrics.jsonl``: per-step training logs, per-epoch records, diagnostics.

One reader for the curves, the export and the train summary. The file is a run's own log, read
with the store's careful reader (a FIFO or a device is refused, never blocked on); a torn last line
(the run is being written, or was killed mid-line) is left out, a damaged line before it is an
error naming the file and line. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from bnexp.store.files import read_metrics

KINDS = ("train", "epoch", "activation", "grad")  # what metrics.jsonl records, as its "kind" field


def read_history(run_dir: Path, kinds: Iterable[str] = ("train", "epoch")) -> dict[str, list[dict]]:
    """``{kind: [record, ...]}`` for each wanted kind, in file order; empty lists when the run has
    logged nothing yet (no metrics.jsonl)."""
    wanted: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for _, entry in read_metrics(run_dir):
        if entry["kind"] in wanted:
            wanted[entry["kind"]].append(entry)
    return wanted


