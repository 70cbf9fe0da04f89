"""The run registry: find, filter and sort runs and sweeps from their small JSON records.

Only ``run.json`` / ``sweep.json`` are read (never TensorBoard events) and nothing here imports
torch or Hydra, so ``bnexp runs`` stays fast with thousands of runs. One unreadable record never
hides the others: it is listed as ``unreadable`` with the reason. A record that says ``running``
whose writer is gone is shown as ``dead``, with how to continue it.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from bnexp.errors import BnexpError
from bnexp.runs import (CONFIG_FILE, RUN_FILE, SWEEP_FILE, RunRecord, UnreadableFile, iter_run_dirs, liveness,
                        parse_time, read_json_object, read_record, read_yaml_mapping)
from bnexp.vocab import METRICS, STATUSES, DERIVED_STATUSES, higher_is_better, is_plumbing

# Group choices already shown in their own columns of `bnexp runs`.
SHOWN_GROUPS = ("model", "norm", "dataset")
AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def default_root() -> Path:
    """Where runs live when no --output-dir is given: the config's default output_dir
    (``${oc.env:BNEXP_OUTPUT_DIR,outputs}``), read without composing the config."""
    return Path(os.environ.get("BNEXP_OUTPUT_DIR") or "outputs")


def override_key(override: str) -> str:
    """``+optimizer.lr=0.1`` -> ``optimizer.lr``."""
    return override.split("=", 1)[0].lstrip("+~")


def key_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides worth showing next to a run: no plumbing, no choices shown in other columns."""
    return [o for o in overrides if not is_plumbing(o) and override_key(o) not in SHOWN_GROUPS]


def with_liveness(record: RunRecord, directory: Path) -> RunRecord:
    """A ``running`` record whose writer is gone becomes ``dead``, with how to continue it."""
    if record.status == "running":
        alive, why = liveness(directory, record.owner, record.heartbeat)
        if not alive:
            record.recorded_status, record.status = "running", "dead"
            record.message = f"{why}; continue with: bnexp train resume={record.id}"
    return record


def load_record(path: Path) -> RunRecord:
    """One run's record for display: live status, or ``unreadable`` naming the file and why."""
    try:
        record = with_liveness(read_record(path), path)
    except UnreadableFile as exc:
        record = RunRecord(id=path.name, status="unreadable", message=str(exc))
    record.dir = str(path)
    return record


def load_runs(root: Path) -> list[RunRecord]:
    """Every run under ``root`` with ``dir`` and ``sweep`` (the id of the sweep it belongs to)."""
    records = []
    sweep_of: dict[Path, Optional[str]] = {}
    for path in iter_run_dirs(root):
        record = load_record(path)
        parent = path.parent
        if parent not in sweep_of:
            sweep_of[parent] = parent.name if (parent / SWEEP_FILE).is_file() else None
        record.sweep = sweep_of[parent]
        records.append(record)
    return records


def parse_since(text: str, now: Optional[datetime] = None) -> datetime:
    """``2026-11-20``, ``2026-11-20T14:00`` (local time unless an offset is given) or an age such as
    ``30m``, ``12h``, ``3d``, ``2w``."""
    now = now or datetime.now().astimezone()
    age = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if age:
        return now - timedelta(**{AGE_UNITS[age.group(2)]: float(age.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BnexpError(f"--since {text!r}: use a date (2026-11-20), a date and time (2026-11-20T14:00) "
                         "or an age (30m, 12h, 3d, 2w)") from None
    return moment.astimezone()  # naive means local time


def check_statuses(statuses: Iterable[str]) -> None:
    valid = STATUSES + DERIVED_STATUSES
    for s in statuses:
        if s not in valid:
            raise BnexpError(f"--status {s}: valid statuses are {', '.join(valid)}")


def filter_runs(records: list[RunRecord], *, status: Iterable[str] = (), model: Iterable[str] = (),
                norm: Iterable[str] = (), sweep: Optional[str] = None,
                since: Optional[datetime] = None) -> list[RunRecord]:
    """Keep records matching every given filter; several values of one filter mean "any of"."""
    status, model, norm = set(status), set(model), set(norm)

    def keep(r: RunRecord) -> bool:
        if status and r.status not in status:
            return False
        if model and r.model not in model:
            return False
        if norm and r.norm not in norm:
            return False
        if sweep is not None and not (r.sweep or "").startswith(sweep):
            return False
        if since is not None:
            started = parse_time(r.started)
            if started is None or started < since:
                return False
        return True

    return [r for r in records if keep(r)]


# sort key -> (value of a record, natural order is descending). Runs without the value go last.
SORTS: dict[str, tuple[Callable[[RunRecord], Any], bool]] = {
    "started": (lambda r: r.started, True),
    "duration": (lambda r: r.duration_s if r.status != "unreadable" else None, True),
    "id": (lambda r: r.id, False),
    "model": (lambda r: r.model, False),
    "norm": (lambda r: r.norm, False),
    "status": (lambda r: r.status, False),
    **{key: ((lambda r, k=key: r.metric(k)), higher_is_better(key)) for key in METRICS},
}


def sort_runs(records: list, by: str = "started", reverse: bool = False) -> list:
    """Sort by ``by`` in its natural order (newest, most accurate, longest, lowest loss, A-Z first);
    ``reverse`` flips it. Records lacking the value always come last."""
    if by not in SORTS:
        raise BnexpError(f"--sort {by}: valid keys are {', '.join(SORTS)}")
    value, descending = SORTS[by]
    present = [r for r in records if value(r) is not None]
    missing = [r for r in records if value(r) is None]
    return sorted(present, key=value, reverse=descending != reverse) + missing


def run_config(run_dir: Path) -> dict[str, Any]:
    """A run's saved config (``config.yaml``) flattened to ``{'optimizer.lr': 0.1, ...}``; raises
    :class:`UnreadableFile` naming the file when it cannot be read as a config."""
    from bnexp.config import flatten

    return flatten(read_yaml_mapping(Path(run_dir) / CONFIG_FILE))


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Flattened config keys whose value is not the same in every config (plumbing keys aside)."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if not is_plumbing(k) and len({repr(c.get(k)) for c in configs}) > 1]


def read_sweep(sweep_dir: Path) -> dict:
    """A sweep's ``sweep.json``, with a ``running`` sweep whose process is gone shown as ``dead``."""
    sweep = read_json_object(Path(sweep_dir) / SWEEP_FILE)
    if sweep.get("status") == "running":
        alive, why = liveness(sweep_dir, sweep.get("owner"), sweep.get("heartbeat"))
        if not alive:
            sweep["recorded_status"], sweep["status"] = "running", "dead"
            sweep["message"] = f"{why}; continue with: bnexp sweep --resume {Path(sweep_dir).name}"
    return sweep

