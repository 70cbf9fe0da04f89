"""Listing the runs of an output directory through its index (:mod:`bnexp.store.index`): every
run as a :class:`Summary` that sorts and counts from the index alone, and becomes a full
:class:`RunRecord` only when shown. Unchanged runs cost a ``stat`` of their directory and of
their ``run.json``; a page of results reads and checks only the records on it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Optional

from bnexp.core.text import finite
from bnexp.store.catalog import Entry, scan
from bnexp.store.files import RUN_FILE, UnreadableFile
from bnexp.store.index import Index, RunRow, json_text, no_gc, stamp_of
from bnexp.store.labels import LABELS_FILE, read_labels
from bnexp.store.lock import liveness
from bnexp.store.record import RunRecord, read_record

NOT_RENDERED = ""  # a row whose --json text is made when printed (see Summary.json_text)
AS_DICT_TAIL = ("dir", "sweep", "recorded_status")  # the keys RunRecord.as_dict adds after the record


def with_liveness(record: RunRecord, directory: Path | str) -> RunRecord:
    """A ``running`` record whose writer is gone becomes ``dead``, with how to continue it."""
    if record.status == "running":
        alive, why = liveness(directory, record.owner, record.heartbeat)
        if not alive:
            record.recorded_status, record.status = "running", "dead"
            record.message = f"{why}; continue with: bnexp train resume={record.id}"
    return record


def load_record(path: Path | str) -> RunRecord:
    """One run's record for display: live status, or ``unreadable`` naming the file and why."""
    try:
        record = with_liveness(read_record(path), path)
    except UnreadableFile as exc:
        record = RunRecord(id=os.path.basename(path), status="unreadable", message=str(exc))
    record.dir = str(path)
    return record


def read_labels_of(path: Path | str, present: Optional[bool] = None) -> dict:
    """``{"tags", "note"}`` of a run (``labels.json``, read only where it exists: ``present`` when
    the caller's directory walk already knows), with ``labels_error`` first when it is unreadable."""
    if not (present if present is not None else os.path.exists(os.path.join(path, LABELS_FILE))):
        return {"tags": [], "note": None}
    try:
        labels = read_labels(Path(path))
    except UnreadableFile as exc:
        return {"labels_error": str(exc), "tags": [], "note": None}
    return {"tags": labels.tags, "note": labels.note}


def with_labels(record: RunRecord, path: Path | str, present: Optional[bool] = None) -> RunRecord:
    """Add the run's tags and note to the record, as ``tags`` and ``note`` in what ``--json``
    prints. An unreadable labels file hides no run: its tags are left out, the reason kept as
    ``labels_error``."""
    record.extra.update(read_labels_of(path, present))
    return record


def _record_or_row(name: str, row_name: Optional[str] = None) -> property:
    """A :class:`Summary` attribute: ``name`` of the full record once built, else ``row_name`` of
    the index row (the same value, as the index stored it)."""
    row_name = row_name or name
    return property(lambda self: getattr(self._record, name) if self._record else getattr(self.row, row_name))


class Summary:
    """One run of a listing: what sorting and counting need, from the index row while the run is
    unchanged; :meth:`record` builds (and checks) the full record only for runs that are shown."""

    __slots__ = ("entry", "row", "_record", "_metrics")

    def __init__(self, entry: Entry, row: Optional[RunRow], record: Optional[RunRecord] = None):
        self.entry, self.row, self._record, self._metrics = entry, row, record, None

    # the attributes registry.SORTS reads: the record's once it is built, else the index row's
    id = _record_or_row("id")
    status = _record_or_row("status")
    started = _record_or_row("started")
    duration_s = _record_or_row("duration_s", "duration")
    model = _record_or_row("model")
    norm = _record_or_row("norm")

    def metric(self, key: str) -> Optional[float]:
        if self._record:
            return self._record.metric(key)
        if self._metrics is None:
            self._metrics = json.loads(self.row.metrics)
        value = self._metrics.get(key)
        return float(value) if type(value) in (int, float) else None

    def record(self) -> RunRecord:
        """The run's full record, with labels, live status, ``dir`` and ``sweep``. A row that fails
        the record's checks (a tampered index) is not used: the run is read again."""
        if self._record is None:
            try:
                record = RunRecord.from_json(json.loads(self.row.record), self.entry.path)
                record.extra.update(json.loads(self.row.labels))
                record.dir, record.sweep = self.entry.path, self.entry.sweep
                self._record = with_liveness(record, self.entry.path)
            except (UnreadableFile, ValueError, TypeError, AttributeError):
                self.row, self._record = None, fresh_record(self.entry)
        return self._record

    def json_text(self) -> str:
        """The run's ``--json`` object, compact, as ``json.dumps(record.as_dict())`` prints it."""
        if self._record is None and self.row.status != "running" and self.row.rendered:
            return (f"{self.row.rendered}, \"dir\": {json.dumps(self.entry.path)}, "
                    f"\"sweep\": {json.dumps(self.entry.sweep)}}}")
        return json.dumps(finite(self.record().as_dict()), default=str, allow_nan=False)


def fresh_record(entry: Entry) -> RunRecord:
    """A run's record read from its files (not the index)."""
    record = with_labels(load_record(entry.path), entry.path, LABELS_FILE in entry.files)
    record.sweep = entry.sweep
    return record


class Listing:
    """Every run under ``root`` as a :class:`Summary`, in walk order, through the index (which this
    updates), and the sweep directories the same walk found (:attr:`sweeps`, for the live view);
    then the full records or ``--json`` texts of the runs chosen to be shown."""

    def __init__(self, root: Path | str):
        self.index = Index(root)
        self.runs: list[Summary] = []
        self.sweeps: list[Entry] = []
        try:
            with no_gc():
                for entry in scan(root, self.index):
                    if entry.kind == "run":
                        self.runs.append(_summary(entry, self.index))
                    else:
                        self.sweeps.append(entry)
            self.index.save()
        except BaseException:
            self.index.close()
            raise

    def records(self, chosen: list[Summary]) -> list[RunRecord]:
        self.index.bodies([s.row for s in chosen if s.row is not None])
        return [s.record() for s in chosen]

    def json_texts(self, chosen: list[Summary]) -> list[str]:
        self.index.bodies([s.row for s in chosen if s.row is not None])
        return [s.json_text() for s in chosen]

    def __enter__(self) -> "Listing":
        return self

    def __exit__(self, *_) -> None:
        self.index.close()


def load_runs(root: Path | str) -> list[RunRecord]:
    """Every run under ``root`` with ``dir``, ``sweep`` (the id of the sweep it belongs to), tags and
    note, through the index: unchanged runs are not read from their files again."""
    with Listing(root) as listing:
        return listing.records(listing.runs)


def _summary(entry: Entry, index: Index) -> Summary:
    path = entry.path
    try:
        info = os.stat(f"{path}{os.sep}{RUN_FILE}")
    except OSError:
        info = None
    if info is None or not stat.S_ISREG(info.st_mode):
        return Summary(entry, None, fresh_record(entry))  # its own one-line error, never cached
    labels_stamp, labels_mtime = "", 0
    if LABELS_FILE in entry.files:
        try:
            labels_info = os.stat(os.path.join(path, LABELS_FILE))
            labels_stamp, labels_mtime = stamp_of(labels_info), labels_info.st_mtime_ns
        except OSError:
            labels_stamp = "?"
    row = index.row(path, stamp_of(info), labels_stamp)
    if row is not None and row.status == "running":  # its live status may differ: always read afresh
        return Summary(entry, None, fresh_record(entry))
    if row is not None:
        return Summary(entry, row)
    try:
        stored = read_record(path)
    except UnreadableFile:
        return Summary(entry, None, fresh_record(entry))
    labels = read_labels_of(path, LABELS_FILE in entry.files)
    row = RunRow(path=path, stamp=stamp_of(info), labels_stamp=labels_stamp, id=stored.id, status=stored.status,
                 started=stored.started, duration=None if stored.duration_s is None else float(stored.duration_s), model=stored.model, norm=stored.norm,
                 metrics=json_text(stored.metrics), record=json_text(stored.to_json()), labels=json_text(labels),
                 rendered=_rendered(stored, labels))
    index.put_row(row, (info.st_mtime_ns, labels_mtime))
    if stored.status == "running":
        return Summary(entry, None, fresh_record(entry))
    return Summary(entry, row)


def _rendered(stored: RunRecord, labels: dict) -> str:
    """The run's ``--json`` text up to where ``dir`` and ``sweep`` follow (its live parts). Not made
    (NOT_RENDERED) for a record that ``finite`` would change or whose extra keys collide with those."""
    if any(key in stored.extra for key in AS_DICT_TAIL):
        return NOT_RENDERED
    try:
        text = json.dumps(dataclasses.replace(stored, extra={**stored.extra, **labels}).to_json(), allow_nan=False)
    except (ValueError, TypeError):
        return NOT_RENDERED
    return text[:-1]


def run_configs(run_dirs: list[str], root: Path | str) -> list:
    """The flattened saved config of each run (as :func:`bnexp.store.registry.run_config`), or the
    :class:`UnreadableFile` saying why not; each ``config.yaml`` is parsed once per version and
    kept in ``root``'s index."""
    from bnexp.core.keys import flatten
    from bnexp.store.files import CONFIG_FILE, read_yaml_mapping

    results: list = [None] * len(run_dirs)
    stamps, mtimes = {}, {}
    for run_dir in run_dirs:
        try:
            info = os.stat(os.path.join(run_dir, CONFIG_FILE))
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            stamps[str(run_dir)], mtimes[str(run_dir)] = stamp_of(info), info.st_mtime_ns
    with Index(root) as index:
        cached = index.configs(stamps)
        for i, run_dir in enumerate(run_dirs):
            key = str(run_dir)
            if key in cached:
                try:
                    results[i] = json.loads(cached[key])
                    continue
                except ValueError:
                    pass
            try:
                results[i] = flatten(read_yaml_mapping(Path(run_dir) / CONFIG_FILE))
            except UnreadableFile as exc:
                results[i] = exc
                continue
            if key in stamps:
                index.put_config(key, stamps[key], json_text(results[i]), mtimes[key])
    return results
