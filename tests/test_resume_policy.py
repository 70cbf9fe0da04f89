"""The resume policy (bnexp.store.resume): one function decides, for each caller, whether a run
directory is picked up again and with which config; the callers' own behaviour (exact continuation,
sweeps, Slurm requeues, recalibrate) is tested in test_resume, test_sweep*, test_slurm, test_diagnostics."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bnexp.config.compose import load
from bnexp.core.errors import BnexpError
from bnexp.store.files import CHECKPOINT_FILE, RUN_FILE
from bnexp.store.resume import AS_JOB, BY_USER, TO_REBUILD, resume, runs_again


def test_which_sweep_jobs_run_again():
    assert [runs_again(s) for s in ("completed", "diverged")] == [False, False]
    assert all(runs_again(s) for s in ("failed", "interrupted", "running", "dead", None))


def test_each_caller_gets_the_saved_config_and_the_users_changes_are_checked(cli, tiny):
    cli("train", *tiny, "epochs=1", "name=kept", "-q")
    (run_dir,) = (cli.out / "runs").iterdir()
    for caller in (AS_JOB, TO_REBUILD):
        continued = resume(run_dir, caller)
        assert continued.cfg.epochs == 1 and continued.checkpoint == run_dir / CHECKPOINT_FILE
        assert "name=kept" in continued.overrides
    with pytest.raises(BnexpError, match="already completed; nothing to resume"):
        resume(run_dir, BY_USER, [f"resume={run_dir.name}"], load([]))
    with pytest.raises(BnexpError, match="only epochs and max_steps may change.*drop: seed=3"):
        resume(run_dir, BY_USER, [f"resume={run_dir.name}", "seed=3"], load([]))
    longer = resume(run_dir, BY_USER, [f"resume={run_dir.name}", "epochs=3"], load(["epochs=3"]))
    assert longer.cfg.epochs == 3 and longer.overrides[-1] == "epochs=3"
    assert resume(run_dir, AS_JOB).cfg.epochs == 1  # asking changes nothing on disk


def test_a_job_directory_without_a_checkpoint_starts_over(tmp_path):
    assert resume(tmp_path, AS_JOB) is None
    (tmp_path / RUN_FILE).write_text("{}")
    assert resume(tmp_path, AS_JOB) is None  # a record but no checkpoint: started over


def test_no_caller_decides_on_its_own():
    """The callers ask the policy: none reads a saved config or tests for a checkpoint to decide
    whether to continue (load_saved is called by the policy alone)."""
    package = Path(__file__).resolve().parent.parent / "bnexp"
    callers = [package / "launch" / "job.py", package / "launch" / "trainer.py",
               package / "commands" / "train.py", package / "commands" / "recalibrate.py"]
    for path in callers:
        names = {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, (ast.Name, ast.Attribute))}
        assert "load_saved" not in names and "EXTENDABLE_KEYS" not in names, path
        assert "resume" in names or path.name == "trainer.py", path
