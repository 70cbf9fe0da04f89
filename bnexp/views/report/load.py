"""Reading a run's files for the report: record, config, overrides, metrics log (or TensorBoard events), norm parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from bnexp.core.errors import BnexpError
from bnexp.store.catalog import expand
from bnexp.store.files import (
    CONFIG_FILE,
    METRICS_FILE,
    NORM_PARAMS_FILE,
    OVERRIDES_FILE,
    read_metrics,
    read_yaml_mapping,
)
from bnexp.store.record import read_record
from bnexp.store.registry import default_root
from bnexp.store.safeio import UnreadableFile, read_json_object, read_text

# metrics.jsonl kinds written by bnexp.tracking.probes and the running-statistics error (docs/bn-science.md)
SCIENCE_KINDS = ("shift", "ics", "smooth", "running_stats", "signal", "renorm")


@dataclass
class RunData:
    """Everything the report needs from one run directory."""

    path: Path
    summary: dict
    config: dict  # flattened: {"optimizer.lr": 0.1, ...}
    overrides: list[str]
    train: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    activations: list[dict] = field(default_factory=list)
    grads: list[dict] = field(default_factory=list)
    science: list[dict] = field(default_factory=list)  # records of the BN-science probes (SCIENCE_KINDS)
    norm_params: dict = field(default_factory=dict)
    label: str = ""  # its cell's

    @property
    def id(self) -> str:
        return str(self.summary.get("id") or self.path.name)

    @property
    def norm(self) -> str:
        return str(self.config.get("norm.kind", self.summary.get("norm", "?")))

    @property
    def metrics(self) -> dict:
        return self.summary.get("metrics") or {}

    def last_site(self) -> Optional[str]:
        sites = _sites(self.activations)
        return sites[-1] if sites else None


def collect_run_dirs(targets: Iterable[str], root: Optional[Path] = None) -> list[Path]:
    """Run directories from run dirs, sweep (or any) dirs holding runs, and run or sweep ids,
    prefixes or names (looked up under ``root``, by default ``$BNEXP_OUTPUT_DIR`` or ``outputs``)."""
    targets = list(targets)
    if not targets:
        raise BnexpError("no runs given: name run directories, sweep directories or run id prefixes")
    return expand(targets, Path(root) if root is not None else default_root())


def load_run(path: Path) -> RunData:
    """Read one run; missing optional files leave the corresponding parts empty. A run whose
    run.json cannot be read raises :class:`UnreadableFile` (the report skips it and says why)."""
    from bnexp.core.keys import flatten

    record = read_record(path)
    summary = record.to_json()
    config: dict = {}
    overrides = list(record.overrides)
    try:  # both optional: run.json names the model, norm and dataset too
        if (path / CONFIG_FILE).exists():
            config = flatten(read_yaml_mapping(path / CONFIG_FILE))
        if not overrides and (path / OVERRIDES_FILE).exists():
            import yaml

            overrides = list(yaml.safe_load(read_text(path / OVERRIDES_FILE)) or [])
    except (UnreadableFile, ValueError, TypeError):
        pass
    run = RunData(path=path, summary=summary, config=config, overrides=[str(o) for o in overrides])
    if (path / METRICS_FILE).exists():
        buckets = {"train": run.train, "epoch": run.epochs, "activation": run.activations, "grad": run.grads,
                   **{kind: run.science for kind in SCIENCE_KINDS}}
        for _, record in read_metrics(path):  # a damaged log: UnreadableFile, the run is skipped with why
            buckets.get(record["kind"], []).append(record)
    else:
        run.train, run.epochs = scalars_from_events(path)
    if (path / NORM_PARAMS_FILE).exists():  # wrong or damaged: UnreadableFile, the run is skipped with why
        run.norm_params = read_norm_params(path / NORM_PARAMS_FILE)
    return run


def read_norm_params(path: Path) -> dict:
    """``norm_params.json``: per norm site, lists of numbers (gamma, beta, running mean/var)."""
    data = read_json_object(path)
    for site, params in data.items():
        if type(params) is not dict or not all(
                type(values) is list and all(type(v) in (int, float) for v in values) for values in params.values()):
            raise UnreadableFile(f"{path}: site {site[:40]!r} is not an object of lists of numbers")
    return data


def scalars_from_events(path: Path) -> tuple[list[dict], list[dict]]:
    """Train and epoch records rebuilt from TensorBoard scalars (tensorboard's reader, not ours)."""
    if not any(path.glob("events.out.tfevents.*")):
        return [], []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))

    def series(tag: str) -> dict[int, float]:
        return {e.step: e.value for e in acc.Scalars(tag)} if tag in tags else {}

    loss, lr = series("train/loss"), series("train/lr")
    train = [{"kind": "train", "step": s, "loss": v, "lr": lr.get(s)} for s, v in sorted(loss.items())]
    val = {tag[4:]: series(tag) for tag in tags if tag.startswith("val/")}  # acc, loss, acc_batch_stats, ...
    train_loss, train_acc = series("epoch/train_loss"), series("epoch/train_acc")
    epochs, best = [], -1.0
    for i, step in enumerate(sorted(val.get("acc", {})), start=1):
        best = max(best, val["acc"][step])
        record = {"kind": "epoch", "epoch": i, "step": step, "train_loss": train_loss.get(step),
                  "train_acc": train_acc.get(step), "best_val_acc": best}
        record.update({f"val_{name}": values.get(step) for name, values in val.items()})
        epochs.append(record)
    return train, epochs


def _final(run: RunData, key: str) -> Any:
    if key in run.metrics:
        return run.metrics[key]
    return run.epochs[-1].get(key) if run.epochs else None


def _sites(records: list[dict]) -> list[str]:
    names = {r["site"] for r in records if "site" in r}
    return sorted(names, key=lambda s: (len(s), s))  # norm2 before norm10
