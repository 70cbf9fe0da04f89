"""A run's history from ``metrics.jsonl``: per-step training logs, per-epoch records, diagnostics.

One reader for the curves, the export and the train summary. The file is a run's own log, read
with the store's careful reader (a FIFO or a device is refused, never blocked on); a torn last line
(the run is being written, or was killed mid-line) is left out, a damaged line before it is an
error naming the file and line. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from bnexp.runs import METRICS_FILE, UnreadableFile, read_text

KINDS = ("train", "epoch", "activation", "grad")  # what metrics.jsonl records, as its "kind" field
MAX_HISTORY_BYTES = 1 << 34  # a log this large is not a run's


def read_history(run_dir: Path, kinds: Iterable[str] = ("train", "epoch")) -> dict[str, list[dict]]:
    """``{kind: [record, ...]}`` for each wanted kind, in file order; empty lists when the run has
    logged nothing yet (no metrics.jsonl)."""
    wanted = {kind: [] for kind in kinds}
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return wanted
    lines = read_text(path, limit=MAX_HISTORY_BYTES).splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
            kind = entry["kind"]
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                break
            raise UnreadableFile(f"{path}: line {number} is not a metrics record") from None
        if kind in wanted:
            wanted[kind].append(entry)
    return wanted


def flat(record: dict, prefix: str = "") -> dict:
    """``{"input": {"p15": 1}}`` -> ``{"input.p15": 1}`` (for CSV columns)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
