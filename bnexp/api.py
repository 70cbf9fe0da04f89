"""bnexp from Python (notebooks, scripts): the same registry, query and history code the CLI uses.

    import bnexp.api as bx
    table = bx.runs(where="norm.kind in ('custom', 'builtin') and val_acc > 0.9", root="outputs")
    curves = bx.history(table.iloc[0]["id"])["epoch"]

``runs`` returns a pandas DataFrame when pandas is installed (``frame=False``: plain dicts),
``history`` a DataFrame per record kind likewise. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from bnexp.core.errors import BnexpError


def _root(root: Optional[str | Path]) -> Path:
    from bnexp.store.registry import check_root, default_root

    if root is None:
        return default_root()
    check_root(Path(root), str(root))
    return Path(root)


def _frame(rows: list[dict], frame: Optional[bool]):
    if frame is False:
        return rows
    try:
        import pandas
    except ImportError:
        if frame:
            raise BnexpError("frame=True needs pandas (pip install pandas)") from None
        return rows
    return pandas.DataFrame(rows)


def runs(where: Optional[str] = None, root: Optional[str | Path] = None, *, config: Sequence[str] | bool = (),
         frame: Optional[bool] = None):
    """Every run under ``root`` (default: ``$BNEXP_OUTPUT_DIR`` or ``outputs``) that the ``--where``
    query selects, newest first, as flat rows: the record's fields, each final metric as its own
    column, ``tags``, ``note``, ``dir``, ``sweep``. ``config``: config keys to add as columns
    (``["optimizer.lr"]``; ``True``: the whole flattened config). A DataFrame when pandas is
    installed (``frame=False``: a list of dicts; ``frame=True``: a DataFrame or an error)."""
    from bnexp.store.files import UnreadableFile
    from bnexp.store.registry import load_runs, run_config, run_values, sort_runs, where_filter

    records = sort_runs(where_filter(load_runs(_root(root)), where))
    rows = []
    for record in records:
        row = {k: v for k, v in record_row(record).items()}
        if config is True and record.dir:
            try:
                row.update({k: v for k, v in run_config(Path(record.dir)).items() if k not in row})
            except UnreadableFile:
                pass
        elif config:
            values = run_values(record, config)
            row.update({key: values.get(key) for key in config})
        rows.append(row)
    return _frame(rows, frame)


def record_row(record) -> dict[str, Any]:
    """A record as one flat row: metrics as columns (``val_acc``), no nested owner/repro."""
    data = record.as_dict()
    metrics = data.pop("metrics", None) or {}
    data.pop("owner", None)
    data.pop("repro", None)
    return {**data, **{k: v for k, v in metrics.items() if k not in data}}


def history(run: str | Path, root: Optional[str | Path] = None, kinds: Iterable[str] = ("train", "epoch"),
            *, frame: Optional[bool] = None) -> dict[str, Any]:
    """A run's curves from ``metrics.jsonl``: ``{"train": per-step rows, "epoch": per-epoch rows}``
    (``kinds`` may add ``activation`` and ``grad``), nested values flattened to ``input.p50``
    columns. ``run`` is anything the CLI accepts: a directory, an id, a unique prefix, a name."""
    from bnexp.core.keys import flatten
    from bnexp.store.catalog import resolve
    from bnexp.store.history import KINDS, read_history

    kinds = list(kinds)
    for kind in kinds:
        if kind not in KINDS:
            raise BnexpError(f"kind {kind!r}: valid kinds are {', '.join(KINDS)}")
    what, path = resolve(str(run), _root(root))
    if what != "run":
        raise BnexpError(f"{run} is a sweep; history() takes one run (runs(where=\"sweep == '...'\") lists its jobs)")
    return {kind: _frame([flatten(r) for r in rows], frame) for kind, rows in read_history(path, kinds).items()}
