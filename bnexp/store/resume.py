"""The resume policy: the one place deciding whether and how a run directory is picked up again.

Four callers, one rule set:

* ``bnexp train resume=RUN`` (:data:`BY_USER`): the run goes on from its checkpoint with its saved
  config; only ``epochs``/``max_steps`` may grow (a finished run then trains on), since any other
  change would alter what the checkpoint was trained as. A completed run with nothing to add, a
  sweep given as RUN, and a cosine schedule asked to run longer are refused with one line.
* a sweep job run again (:data:`AS_JOB`): ``bnexp sweep --resume``, an Optuna trial retried in the
  same job directory, a Slurm job requeued (the same pickled call runs again). A job directory
  with a record and a checkpoint continues from it with its saved config; one without a
  checkpoint starts over (:func:`resume` returns None).
* ``bnexp recalibrate`` (:data:`TO_REBUILD`): the trained run rebuilt from its checkpoint and saved
  config, trained no further.
* which jobs of a sweep run again at all: :func:`runs_again` (all but those that ended with a result).

What is resumed is always the same: the saved config (config.yaml, overrides.yaml: never the
caller's), the checkpoint's model, optimizer, scheduler, step and epoch
(:func:`bnexp.engine.rebuild.rebuild`), and the record, continued by the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from bnexp.config.schema import EXTENDABLE_KEYS
from bnexp.core.errors import BnexpError
from bnexp.core.keys import override_key
from bnexp.store.files import CHECKPOINT_FILE, RUN_FILE

BY_USER, AS_JOB, TO_REBUILD = "user", "job", "rebuild"
WITH_RESULT = ("completed", "diverged")  # statuses a sweep keeps: the job has its result


@dataclass
class Resume:
    """A run to pick up again: the config and overrides it continues with, and its checkpoint."""

    run_dir: Path
    cfg: DictConfig
    overrides: list[str]

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE


def runs_again(status: Optional[str]) -> bool:
    """Whether a sweep job with this status (None: never started) is run again by ``--resume``:
    every job but those that ended with a result (completed, or diverged: a result of the study too)."""
    return status not in WITH_RESULT


def resume(run_dir: Path, caller: str, given: list[str] = (), asked: Optional[DictConfig] = None) -> Optional[Resume]:
    """How ``run_dir`` is picked up again by ``caller`` (:data:`BY_USER`, :data:`AS_JOB`,
    :data:`TO_REBUILD`). A user's ``given`` overrides (besides ``resume=``) may only be
    ``epochs``/``max_steps``, whose values are taken from ``asked`` (the config composed from them).
    None: start over (a job directory without a checkpoint)."""
    from bnexp.core.keys import override_value
    from bnexp.store.record import read_record
    from bnexp.store.run import load_saved

    if caller == AS_JOB and not ((run_dir / RUN_FILE).exists() and (run_dir / CHECKPOINT_FILE).exists()):
        return None
    if caller != BY_USER:
        return Resume(run_dir, *load_saved(run_dir))
    given = [o for o in given if not o.startswith("resume=")]
    others = [o for o in given if override_key(o) not in EXTENDABLE_KEYS]
    if others:
        raise BnexpError(f"resume= continues a run with its saved config; only {' and '.join(EXTENDABLE_KEYS)} "
                         f"may change (to train longer); drop: {' '.join(others)}")
    record = read_record(run_dir)
    saved, saved_overrides = load_saved(run_dir)
    longer = {key: override_value(given, key) for key in EXTENDABLE_KEYS if override_value(given, key) is not None}
    if record.status == "completed" and not longer:
        raise BnexpError(f"run {run_dir.name} already completed; nothing to resume (to train longer: "
                         f"bnexp train resume={run_dir.name} epochs=N)")
    if longer:
        if saved.optimizer.schedule == "cosine":
            raise BnexpError(f"run {run_dir.name} uses optimizer.schedule=cosine, whose learning rate already "
                             "decayed to zero over its planned steps; training it longer would not continue "
                             "that schedule")
        for key in longer:
            saved[key] = asked[key]
        saved_overrides = [o for o in saved_overrides if override_key(o) not in longer]
        saved_overrides += [f"{k}={v}" for k, v in longer.items()]
    return Resume(run_dir, saved, saved_overrides)


def already_trained(run_dir: Path, step: int, epoch: int, total_steps: int, epochs: int) -> None:
    """A continued run whose checkpoint is at or past the steps its config asks for is refused."""
    if step >= total_steps:
        raise BnexpError(f"run {run_dir.name} already trained {step} steps ({epoch} epochs); to train "
                         f"longer: resume={run_dir.name} epochs=N with N > {epochs}")
