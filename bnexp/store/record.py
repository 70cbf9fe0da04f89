"""A run's record, ``run.json``: its typed fields, checked on every read."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from bnexp.store.files import RUN_FILE, UnreadableFile, read_json_object
from bnexp.store.safeio import check_depth

# ---------------------------------------------------------------------------------------------
# The record


@dataclass
class RunRecord:
    """What ``run.json`` holds: every command reads and writes runs through this one type.

    ``dir`` and ``sweep`` say where the run was found and are not stored; ``recorded_status`` is
    set by the registry when the status shown differs from the one stored (``running`` -> ``dead``).
    """

    id: str
    status: str = "running"
    started: Optional[str] = None
    ended: Optional[str] = None
    duration_s: float = 0.0
    heartbeat: Optional[str] = None
    owner: Optional[dict] = None  # {"pid", "host", "since"} while a process writes the run
    model: Optional[str] = None
    norm: Optional[str] = None
    dataset: Optional[str] = None
    dataset_path: Optional[str] = None
    experiment: Optional[str] = None
    name: Optional[str] = None
    optimizer: Optional[str] = None
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    epochs: Optional[int] = None
    max_steps: Optional[int] = None
    total_steps: Optional[int] = None  # the steps the run trains for, once training starts (progress, ETA)
    seed: Optional[int] = None
    nproc: int = 1
    device: Optional[str] = None
    overrides: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    message: Optional[str] = None
    compile_s: float = 0.0
    repro: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as they were
    dir: Optional[str] = field(default=None, metadata={"stored": False})
    sweep: Optional[str] = field(default=None, metadata={"stored": False})
    recorded_status: Optional[str] = field(default=None, metadata={"stored": False})

    @classmethod
    def from_json(cls, data: Any, source: str = RUN_FILE) -> "RunRecord":
        """Type-checked: a wrong type anywhere is an :class:`UnreadableFile` naming the field."""
        if not isinstance(data, dict):
            raise UnreadableFile(f"{source}: expected a JSON object")
        types = _field_types()
        known, extra = {}, {}
        for key, value in data.items():
            if key in types:
                if type(value) not in types[key][0]:  # exact types: a bool is no number here
                    raise UnreadableFile(f"{source}: field {key!r} is {_describe(value)}, expected {types[key][1]}")
                known[key] = value
            else:
                extra[key] = value
        if type(known.get("id")) is not str:
            raise UnreadableFile(f"{source}: no run id")
        for value in (known.get("owner"), known.get("repro"), extra):
            check_depth(value, source, limit=8)
        for name, values, accepted in (("overrides", known.get("overrides") or (), {str}),
                                       ("metrics", (known.get("metrics") or {}).values(), NUMBERS | {type(None)})):
            for value in values:
                if type(value) not in accepted:
                    raise UnreadableFile(f"{source}: a value in {name!r} is {_describe(value)}, expected "
                                         f"{'a string' if name == 'overrides' else 'a number'}")
        return cls(**known, extra=extra)

    def to_json(self) -> dict:
        return {**self.extra, **{name: getattr(self, name) for name in _STORED}}

    def as_dict(self) -> dict:
        """The record with where it was found (for ``--json`` output)."""
        return {**self.to_json(), "dir": self.dir, "sweep": self.sweep,
                **({"recorded_status": self.recorded_status} if self.recorded_status else {})}

    def metric(self, key: str) -> Optional[float]:
        value = self.metrics.get(key)
        return float(value) if _is_number(value) else None


_NOT_STORED = {f.name for f in dataclasses.fields(RunRecord) if not f.metadata.get("stored", True)}
_STORED = [f.name for f in dataclasses.fields(RunRecord) if f.name not in _NOT_STORED and f.name != "extra"]


NUMBERS = {int, float}


@functools.lru_cache(maxsize=None)
def _field_types() -> dict[str, tuple[frozenset, str]]:
    """Per stored field: the JSON types its value may have, and what it expects in words. Built once
    from the dataclass's annotations (evaluating them per record costs milliseconds)."""
    accepted = {str: {str}, float: NUMBERS, int: {int}, list: {list}, dict: {dict}}
    fields = {}
    for name, hint in typing.get_type_hints(RunRecord).items():
        if name in _NOT_STORED or name == "extra":
            continue
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint)
        fields[name] = (frozenset(accepted[base] | ({type(None)} if type(None) in args else set())), _expected(hint))
    return fields


def _is_number(value: Any) -> bool:
    return type(value) in NUMBERS


def _expected(hint: Any) -> str:
    names = {str: "a string", float: "a number", int: "an integer", list: "a list of strings", dict: "an object"}
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return f"{names.get(args[0], 'a value')} or null" if args else names.get(hint, str(hint))


def _describe(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__} ({json.dumps(value, default=str)[:40]})"


def read_record(run_dir: Path | str) -> RunRecord:
    """A run's record, type-checked (an :class:`UnreadableFile` naming the file and field)."""
    path = os.path.join(run_dir, RUN_FILE)
    return RunRecord.from_json(read_json_object(Path(path)), path)
