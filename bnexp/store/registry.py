"""The run registry: find, filter and sort runs and sweeps from their small JSON records.

Listing reads ``run.json`` / ``sweep.json`` (through the index, ``.index.sqlite``) and
``labels.json`` (tags and note) where a run has one; a run's ``config.yaml`` only when config keys
are asked for (:func:`run_config`: comparisons, queries on config keys); never TensorBoard events
or checkpoints. Nothing here imports torch or Hydra, so ``bnexp runs`` stays fast with thousands
of runs. One unreadable record never
hides the others: it is listed as ``unreadable`` with the reason. A record that says ``running``
whose writer is gone is shown as ``dead``, with how to continue it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from bnexp.config.groups import group_options
from bnexp.config.schema import DEFAULT_OUTPUT_DIR, OUTPUT_DIR_ENV
from bnexp.core.errors import BnexpError
from bnexp.core.keys import override_key
from bnexp.core.vocab import DERIVED_STATUSES, METRICS, STATUSES, higher_is_better, is_plumbing
from bnexp.store.files import CONFIG_FILE, SWEEP_FILE, UnreadableFile, parse_time, read_json_object, read_yaml_mapping
from bnexp.store.listing import load_record, load_runs, with_labels, with_liveness  # noqa: F401 - the registry's API
from bnexp.store.lock import liveness
from bnexp.store.record import RunRecord

# Group choices already shown in their own columns of `bnexp runs`.
SHOWN_GROUPS = ("model", "norm", "dataset")
AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def default_root() -> Path:
    """Where runs live when no --output-dir is given: the config's default output_dir
    (``${oc.env:BNEXP_OUTPUT_DIR,outputs}``), read without composing the config."""
    return Path(os.environ.get(OUTPUT_DIR_ENV) or DEFAULT_OUTPUT_DIR)


def key_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides worth showing next to a run: no plumbing, no choices shown in other columns."""
    return [o for o in overrides if not is_plumbing(o) and override_key(o) not in SHOWN_GROUPS]


def tags_of(record: RunRecord) -> list[str]:
    return record.extra.get("tags") or []


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


# filter option -> (config group whose options are valid values, the record field it matches)
CHOICE_FILTERS = {"model": ("model", "model"), "norm": ("norm", "norm"), "dataset": ("dataset", "dataset"),
                  "experiment": ("experiment", "experiment")}


def check_choices(option: str, values: Iterable[str], records: list[RunRecord]) -> None:
    """A filter value must name something: an option of its config group, or a value some run has
    (runs made with an older config tree). ``--norm batch`` is an error, not an empty table."""
    values = list(values)
    if not values:
        return
    group, attribute = CHOICE_FILTERS[option]
    valid = set(group_options(group)) | {getattr(r, attribute) for r in records if getattr(r, attribute)}
    if option == "dataset":
        valid |= {r.dataset_path for r in records if r.dataset_path}
    for value in values:
        if value not in valid:
            raise BnexpError(f"--{option} {value}: no {option} of that name; valid values are "
                             f"{', '.join(sorted(valid)) or '(none)'}")


def filter_runs(records: list[RunRecord], *, status: Iterable[str] = (), model: Iterable[str] = (),
                norm: Iterable[str] = (), sweep: Optional[str] = None, since: Optional[datetime] = None,
                experiment: Iterable[str] = (), dataset: Iterable[str] = (), name: Optional[str] = None,
                tags: Iterable[str] = ()) -> list[RunRecord]:
    """Keep records matching every given filter; several values of one filter mean "any of", except
    tags: a run must carry every tag given. ``dataset`` matches the dataset's name or its path;
    ``name`` is the ``name=`` label, with shell wildcards (``lr-*``)."""
    status, model, norm, experiment, dataset = set(status), set(model), set(norm), set(experiment), set(dataset)
    tags = set(tags)

    def keep(r: RunRecord) -> bool:
        if status and r.status not in status:
            return False
        if model and r.model not in model:
            return False
        if norm and r.norm not in norm:
            return False
        if experiment and r.experiment not in experiment:
            return False
        if dataset and r.dataset not in dataset and r.dataset_path not in dataset:
            return False
        if name is not None and not fnmatch.fnmatchcase(r.name or "", name):
            return False
        if tags and not tags <= set(tags_of(r)):
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
    from bnexp.core.keys import flatten

    return flatten(read_yaml_mapping(Path(run_dir) / CONFIG_FILE))


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Flattened config keys whose value is not the same in every config (plumbing keys aside)."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if not is_plumbing(k) and len({repr(c.get(k)) for c in configs}) > 1]


_STR, _NUM = (str,), (int, float)
# sweep.json field -> (accepted types, what is expected in words, the type of each item for lists)
SWEEP_FIELDS: dict[str, tuple[tuple, str, Optional[tuple]]] = {
    "id": (_STR, "a string", None), "status": (_STR, "a string", None), "kind": (_STR, "a string", None),
    "started": (_STR + (type(None),), "a string or null", None), "ended": (_STR + (type(None),), "a string or null", None),
    "heartbeat": (_STR + (type(None),), "a string or null", None), "message": (_STR + (type(None),), "a string or null", None),
    "owner": ((dict, type(None)), "an object or null", None), "launcher": (_STR, "a string", None),
    "metric": (_STR, "a string", None), "sampler": (_STR, "a string", None), "output_dir": (_STR, "a string", None),
    "jobs_at_once": ((int,), "an integer", None), "trials": ((int,), "an integer", None),
    "sampler_seed": ((int,), "an integer", None), "workers": ((int,), "an integer", None),
    "overrides": ((list,), "a list of strings", _STR), "hydra_overrides": ((list,), "a list of strings", _STR),
    "swept": ((list,), "a list of strings", _STR), "fixed": ((list,), "a list of strings", _STR),
    "grid": ((list,), "a list of lists of strings", (list,)), "jobs": ((list,), "a list of job records", (dict,)),
    "space": ((dict,), "an object", None), "optuna": ((dict,), "an object", None),
}


def check_sweep(sweep: dict, source: Any) -> dict:
    """Type-check a ``sweep.json`` field by field (an :class:`UnreadableFile` naming the field):
    a record from elsewhere with a number for a job directory or a string for its owner is one
    line, never a TypeError in whatever reads it next."""
    from bnexp.store.safeio import check_depth

    check_depth(sweep, source, limit=8)
    for key, (types, words, item_types) in SWEEP_FIELDS.items():
        if key not in sweep:
            continue
        value = sweep[key]
        if type(value) not in types:
            raise UnreadableFile(f"{source}: field {key!r} is {type(value).__name__}, expected {words}")
        if item_types and not all(type(item) in item_types for item in value):
            raise UnreadableFile(f"{source}: field {key!r} is not {words}")
    for job in sweep.get("grid", []):
        if not all(type(o) is str for o in job):
            raise UnreadableFile(f"{source}: field 'grid' is not a list of lists of strings")
    for job in sweep.get("jobs", []):
        if type(job.get("id")) is not str or type(job.get("dir")) not in (str, type(None)):
            raise UnreadableFile(f"{source}: a job in 'jobs' has no string id or dir")
        RunRecord.from_json({k: v for k, v in job.items() if k not in ("dir", "sweep", "recorded_status")},
                            f"{source} (job {job['id'][:80]})")
    if not all(type(v) is str for v in sweep.get("space", {}).values()):
        raise UnreadableFile(f"{source}: field 'space' is not an object of strings")
    return sweep


def read_sweep(sweep_dir: Path) -> dict:
    """A sweep's ``sweep.json``, type-checked, with a ``running`` sweep whose process is gone shown
    as ``dead``."""
    sweep = check_sweep(read_json_object(Path(sweep_dir) / SWEEP_FILE), Path(sweep_dir) / SWEEP_FILE)
    if sweep.get("status") == "running":
        alive, why = liveness(sweep_dir, sweep.get("owner"), sweep.get("heartbeat"))
        if not alive:
            sweep["recorded_status"], sweep["status"] = "running", "dead"
            sweep["message"] = f"{why}; continue with: bnexp sweep --resume {Path(sweep_dir).name}"
    return sweep


def record_values(record: RunRecord) -> dict[str, Any]:
    """A run's record as the flat keys a ``--where`` query reads: the record's fields (``status``,
    ``model``, ``seed``, ``tags``...), each final metric both as ``val_acc`` and ``metrics.val_acc``,
    and ``repro.*``. The composed config (``optimizer.lr``, ``norm.kind``...) is added by
    :func:`where_filter` only when a query asks for a key the record does not have."""
    data = record.as_dict()
    values = {k: v for k, v in data.items() if k not in ("metrics", "repro", "owner")}
    for key, value in (record.metrics or {}).items():
        values.setdefault(key, value)
        values[f"metrics.{key}"] = value
    for key, value in (record.repro or {}).items():
        values[f"repro.{key}"] = value
    return values


def run_values(record: RunRecord, keys: Iterable[str]) -> dict[str, Any]:
    """:func:`record_values`, plus the run's flattened config when one of ``keys`` is not in the
    record (read only then: most queries need no config file). A run whose config cannot be read
    simply has no config keys."""
    values = record_values(record)
    if any(key not in values for key in keys) and record.dir and record.status != "unreadable":
        try:
            values = {**run_config(Path(record.dir)), **values}
        except UnreadableFile:
            pass
    return values


def known_keys() -> set[str]:
    """Keys every run may have even where none of those at hand does: record fields and metrics."""
    return set(METRICS) | {f"metrics.{m}" for m in METRICS} | {f.name for f in dataclasses.fields(RunRecord)} | \
        {"tags", "note"}


def where_filter(records: list[RunRecord], where: Optional[str]) -> list[RunRecord]:
    """The records a ``--where`` query selects (all when there is none). A key that no run has and
    bnexp does not know is an error (a typo), not an empty selection."""
    if not where:
        return records
    from bnexp.core.query import MISSING, compile_query

    query = compile_query(where)
    known = known_keys()
    selected = []
    for record in records:
        values = run_values(record, query.keys)
        known.update(values)
        if query.matches(lambda key: values.get(key, MISSING)):
            selected.append(record)
    if records:
        query.check_keys(known)
    return selected


def check_root(root: Path, given: Optional[str]) -> None:
    """An ``--output-dir`` that exists must be a directory: ``/etc/passwd`` is an error, not an
    empty registry (one that does not exist yet simply has no runs so far)."""
    if given is not None and root.exists() and not root.is_dir():
        raise BnexpError(f"--output-dir {given}: not a directory")
