"""Reading a sweep back: its jobs' records, fresh from each job's run.json."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from bnexp.core.keys import override_key
from bnexp.store.catalog import iter_run_dirs
from bnexp.store.files import UnreadableFile
from bnexp.store.record import RunRecord
from bnexp.store.registry import load_record, read_sweep


def job_number(record) -> Optional[int]:
    """A job's number, from its directory name ``<sweep id>-<number>-<model>-<norm>``."""
    if not record.dir:
        return None
    run_dir = Path(record.dir)
    number = run_dir.name[len(run_dir.parent.name) + 1:].split("-")[0]
    return int(number) if number.isdigit() else None


def job_rows(sweep_dir: Path, new_rows: list = ()) -> list[RunRecord]:
    """Every job of a sweep, fresh from each job's run.json, plus jobs recorded without one (they
    failed before training started). Jobs deleted since (``bnexp rm``) are dropped."""
    try:
        known = [RunRecord(**{k: v for k, v in j.items() if k in RunRecord.__dataclass_fields__})
                 for j in read_sweep(sweep_dir).get("jobs", [])]  # type-checked by read_sweep
    except (UnreadableFile, TypeError):
        known = []
    rows = {(os.path.realpath(r.dir) if r.dir else f"#{i}"): r for i, r in enumerate([*known, *new_rows])}
    for run_dir in iter_run_dirs(sweep_dir):  # the same job, however its path is spelled, is one row
        record = load_record(run_dir)
        record.sweep = sweep_dir.name
        rows[os.path.realpath(run_dir)] = record
    return [row for key, row in rows.items() if not row.dir or Path(row.dir).exists()]


def swept_part(row, swept: list[str]) -> list[str]:
    return [o for o in row.overrides if override_key(o) in swept]
