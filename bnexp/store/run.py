"""Writing a run: creating its directory and record, holding its lock, appending its metrics;
reading back the config a run was trained with."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from bnexp.config.compose import check_schema, one_line, validate
from bnexp.config.groups import DATASETS
from bnexp.core.errors import BnexpError
from bnexp.core.keys import override_value
from bnexp.core.text import escape
from bnexp.store.files import (
    CONFIG_FILE,
    METRICS_FILE,
    OVERRIDES_FILE,
    RUN_FILE,
    UnreadableFile,
    now_iso,
    read_metrics,
    read_text,
    read_yaml_mapping,
    write_atomic,
)
from bnexp.store.lock import HEARTBEAT_S, DirLock, busy_message, owner_info
from bnexp.store.record import RunRecord, read_record
from bnexp.store.safeio import naming, open_append, write_record


class RunMoved(BnexpError):
    """The directory of a run being trained was moved or deleted (``bnexp rm --force``, by hand)."""

    @classmethod
    def at(cls, run_name: str, step: int) -> "RunMoved":
        return cls(f"the directory of run {run_name} was moved or deleted while it trained (stopped at step "
                   f"{step}; its record went with it)")


class Run:
    """A run directory open for writing: holds its lock, its record, and appends its metrics.

    Use :meth:`create` for a new run and :meth:`open` to continue one; both take the lock first
    and give it back in :meth:`close` (or at process death).
    """

    def __init__(self, path: Path, record: RunRecord, lock: DirLock):
        self.path, self.record, self.lock = Path(path), record, lock
        self._saved_at = 0.0
        # files are written relative to the directory itself, not its path: a run moved away while
        # it trains (to the trash, by hand) keeps its record with it, and :meth:`moved` notices
        self.dir_fd: Optional[int] = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        info = os.fstat(self.dir_fd)
        self._identity = (info.st_dev, info.st_ino)

    def moved(self) -> bool:
        """Whether the run's path no longer names the directory this process writes."""
        try:
            info = os.stat(self.path)
        except OSError:
            return True
        return (info.st_dev, info.st_ino) != self._identity

    @classmethod
    def create(cls, run_dir: Path, record: RunRecord, files: dict[str, str], made_dir: bool) -> "Run":
        """Lock ``run_dir`` (already created) and write ``files`` and the record. If anything cannot be
        written (a full disk), a directory this call's caller created is removed again: no empty or
        half-made run is left behind."""
        lock = DirLock(run_dir)
        try:
            lock.acquire(lambda: busy_message(run_dir))
            for name, text in files.items():
                write_atomic(run_dir / name, text)
            run = cls(run_dir, record, lock)
            run.record.owner, run.record.heartbeat = owner_info(), now_iso()
            run.save()
            return run
        except BaseException as exc:
            lock.release()
            if made_dir:
                shutil.rmtree(run_dir, ignore_errors=True)
            if isinstance(exc, OSError):
                raise BnexpError(f"cannot write the run directory {run_dir}: {exc.strerror or exc}") from exc
            raise

    @classmethod
    def open(cls, run_dir: Path) -> "Run":
        """Lock an existing run to continue it; its record is read but not changed until :meth:`begin`."""
        lock = DirLock(run_dir).acquire(lambda: busy_message(run_dir))
        try:
            return cls(run_dir, read_record(run_dir), lock)
        except BaseException:
            lock.release()
            raise

    def begin(self) -> None:
        """Mark the run as running, owned by this process."""
        self.record.status, self.record.ended, self.record.message = "running", None, None
        self.record.owner, self.record.heartbeat = owner_info(), now_iso()
        self.save()

    def save(self) -> None:
        """Replace run.json (in place on a full disk: see :func:`write_record`)."""
        write_record(self.path / RUN_FILE, self.record.to_json(), dir_fd=self.dir_fd)
        self._saved_at = time.monotonic()

    def heartbeat(self) -> None:
        """Refresh the heartbeat in run.json, at most every HEARTBEAT_S seconds."""
        if time.monotonic() - self._saved_at >= HEARTBEAT_S:
            self.record.heartbeat = now_iso()
            self.save()

    def log(self, entry: dict) -> None:
        """Append one record to metrics.jsonl (never through a planted link: see bnexp.store.safeio)."""
        try:
            with os.fdopen(open_append(METRICS_FILE, dir_fd=self.dir_fd), "w") as handle:
                handle.write(json.dumps(entry) + "\n")
        except OSError as exc:
            raise naming(exc, self.path / METRICS_FILE) from exc

    def truncate_metrics(self, last_step: int) -> None:
        """Drop records written after the checkpoint a continued run restarts from (and a torn last
        line: see :func:`read_metrics`)."""
        if (self.path / METRICS_FILE).exists():
            kept = [line for line, entry in read_metrics(self.path)
                    if isinstance(entry.get("step"), int) and entry["step"] <= last_step]
            write_atomic(self.path / METRICS_FILE, "".join(line + "\n" for line in kept), dir_fd=self.dir_fd)

    def finish(self, status: str, message: Optional[str]) -> Optional[str]:
        """Record how the run ended. Returns None, or why the status could not be written (a full
        disk): the caller reports that beside the original error instead of hiding it."""
        self.record.status, self.record.message, self.record.ended = status, message, now_iso()
        self.record.owner = None
        try:
            self.save()
        except OSError as exc:
            return f"its status ({status}) could not be written to {self.path / RUN_FILE}: {exc.strerror or exc}"
        return None

    def close(self) -> None:
        self.lock.release()
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None


def unique_dir(parent: Path, stem: str) -> Path:
    """Create ``<parent>/<stem>-<4 hex>``, retrying on the rare clash (two runs in the same second
    with the same random suffix): the one helper behind run and sweep directories."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BnexpError(f"cannot create {parent}: {exc.strerror or exc}") from None
    for _ in range(100):
        path = parent / f"{stem}-{secrets.token_hex(2)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise BnexpError(f"the run name is too long for a directory name: {path.name}") from None
            raise BnexpError(f"cannot create {path}: {exc.strerror or exc}") from None
    raise BnexpError(f"could not create a unique directory under {parent}")


def run_stem(model: str, norm: str, name: Optional[str] = None) -> str:
    """``20261122-181503-lenet-custom[-name]``: sortable by time; :func:`unique_dir` adds a suffix."""
    return "-".join([time.strftime("%Y%m%d-%H%M%S"), model, norm] + ([name] if name else []))


def check_saved_values(data: Any, source: Any, prefix: str = "") -> None:
    """A saved config is stored resolved: an interpolation in it (``${oc.env:SECRET}``) was planted,
    and is refused rather than resolved."""
    if isinstance(data, dict):
        for key, value in data.items():
            check_saved_values(value, source, f"{prefix}{key}.")
    elif isinstance(data, list):
        for value in data:
            check_saved_values(value, source, prefix)
    elif isinstance(data, str) and "${" in data:
        raise UnreadableFile(f"{source}: {prefix.rstrip('.')} holds an interpolation ({escape(data[:60])}), which "
                             "bnexp never saves; refused")


def load_saved(run_dir: Path) -> tuple[DictConfig, list[str]]:
    """A run's own config and overrides, as saved in its directory, checked like a new one: what a
    continued run or a re-run sweep job trains with."""
    run_dir = Path(run_dir)
    data = read_yaml_mapping(run_dir / CONFIG_FILE)
    check_saved_values(data, run_dir / CONFIG_FILE)
    cfg = check_schema(data)
    validate(cfg)
    overrides: Any = []
    if (run_dir / OVERRIDES_FILE).exists():
        import yaml

        try:
            overrides = yaml.safe_load(read_text(run_dir / OVERRIDES_FILE)) or []
        except yaml.YAMLError as exc:
            raise UnreadableFile(f"{run_dir / OVERRIDES_FILE}: not valid YAML ({one_line(exc)})") from None
    if not isinstance(overrides, list):
        raise UnreadableFile(f"{run_dir / OVERRIDES_FILE}: expected a YAML list of overrides")
    return cfg, [str(o) for o in overrides]


def new_run_dir(cfg: DictConfig) -> Path:
    """A fresh, empty directory for a new run: ``output_dir/runs/<date>-<time>-<model>-<norm>[-name]-<hex>``."""
    return unique_dir(Path(cfg.output_dir) / "runs", run_stem(cfg.model.name, cfg.norm.kind, cfg.name))


def create_run(cfg: DictConfig, overrides: list[str], run_dir: Optional[Path], device: str, repro: dict) -> Run:
    """A new run: its directory (``run_dir``, or a fresh one under ``output_dir/runs``), config files
    and record, locked by this process. ``repro``: how to run it again (command, versions, machine)."""
    made = run_dir is None
    if made:
        run_dir = new_run_dir(cfg)
    record = new_record(cfg, overrides, run_dir.name, device, repro)
    files = {CONFIG_FILE: OmegaConf.to_yaml(cfg, resolve=True),
             OVERRIDES_FILE: OmegaConf.to_yaml(OmegaConf.create(list(overrides)))}
    return Run.create(run_dir, record, files, made_dir=made)


def new_record(cfg: DictConfig, overrides: list[str], run_id: str, device: str, repro: dict) -> RunRecord:
    d = cfg.dataset
    torchvision = DATASETS.get(d.name, "").startswith("torchvision:")
    return RunRecord(
        id=run_id, status="running", started=now_iso(), model=cfg.model.name, norm=cfg.norm.kind,
        dataset=d.name, dataset_path=d.path or d.images or (d.root if torchvision else None),
        experiment=override_value(overrides, "experiment"), name=cfg.name, optimizer=cfg.optimizer.name,
        lr=cfg.optimizer.lr, batch_size=cfg.batch_size, epochs=cfg.epochs, max_steps=cfg.max_steps, seed=cfg.seed,
        nproc=cfg.nproc, device=str(device), overrides=list(overrides),
        repro=repro,
    )
