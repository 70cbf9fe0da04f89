"""`bnexp sweep`: real Hydra multirun grids (basic, joblib and submitit_local launchers), Optuna
searches with a resumable study, and bad input that fails fast leaving nothing behind."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from bnexp.dashboard import FINAL_METRICS

TINY = ["epochs=1", "dataset.limit_train=128", "dataset.limit_val=64", "batch_size=32", "hist_every_steps=0",
        "log_every_steps=2"]


def in_process(monkeypatch, capsys, out: Path, *args: str) -> tuple[int, str, str]:
    """`bnexp ARGS` run by the CLI's own entry point in this process (no interpreter start-up):
    (exit code, stdout, stderr). For commands that fail or plan without training."""
    from bnexp import cli

    monkeypatch.setenv("BNEXP_OUTPUT_DIR", str(out))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("BNEXP_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["bnexp", *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def only_sweep(out: Path) -> tuple[Path, dict]:
    (sweep_dir,) = (out / "sweeps").iterdir()
    return sweep_dir, json.loads((sweep_dir / "sweep.json").read_text())


def job_summaries(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/run.json"))}


def hparams_summaries(directory: Path) -> dict[str, bytes]:
    """HParams plugin content by tag in the event files of ``directory`` (not its sub-directories)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    found = {}
    for event_file in directory.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(event_file)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    found[value.tag] = value.metadata.plugin_data.content
    return found


def experiment_columns(directory: Path) -> tuple[list[tuple[str, bool]], list[str]]:
    """The HParams experiment written in ``directory``: (hparam, differs) columns and metric tags."""
    from tensorboard.plugins.hparams import metadata

    experiment = metadata.parse_experiment_plugin_data(hparams_summaries(directory)[metadata.EXPERIMENT_TAG])
    return [(h.name, h.differs) for h in experiment.hparam_infos], [m.name.tag for m in experiment.metric_infos]


def test_grid_sweep_runs_every_job_despite_divergence(bnexp):
    result = bnexp("sweep", "norm=none,custom", "optimizer.lr=0.1,1e30", *TINY, check=False)
    assert result.returncode == 1, result.stdout + result.stderr  # some jobs diverged: the exit code says so
    assert "did not complete" in result.stdout and "diverged" in result.stdout
    sweep_dir, sweep = only_sweep(bnexp.out)
    assert sweep["status"] == "completed" and sweep["launcher"] == "basic" and len(sweep["jobs"]) == 4
    jobs = job_summaries(sweep_dir)
    assert len(jobs) == 4  # every job directory is an ordinary run directory
    status = {tuple(j["overrides"][:2]): j["status"] for j in jobs.values()}
    assert status[("norm=none", "optimizer.lr=0.1")] == status[("norm=custom", "optimizer.lr=0.1")] == "completed"
    assert status[("norm=none", "optimizer.lr=1e+30")] == status[("norm=custom", "optimizer.lr=1e+30")] == "diverged"
    # the table: every job, sorted by best val acc (completed first), swept values shown
    table = result.stdout[result.stdout.index("sorted by best_val_acc"):]
    assert table.index("completed") < table.index("diverged") and "optimizer.lr=1e+30" in table
    # HParams: one experiment (the table's columns) for the sweep, leading with the swept keys;
    # each job logs a session (its row) and no experiment of its own
    columns, metrics = experiment_columns(sweep_dir)
    assert columns[:2] == [("norm.kind", True), ("optimizer.lr", True)]
    assert not any(differs for _, differs in columns[2:]) and metrics == list(FINAL_METRICS)
    completed = next(sweep_dir / name for name, j in jobs.items() if j["status"] == "completed")
    assert set(hparams_summaries(completed)) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    listed = json.loads(bnexp("runs", "--sweep", sweep_dir.name[:20], "--json").stdout)
    assert sorted(r["id"] for r in listed) == sorted(jobs)


def test_parallel_joblib_jobs_share_the_cores(bnexp):
    bnexp("sweep", "norm=none,builtin", *TINY, "-j", "2")
    sweep_dir, sweep = only_sweep(bnexp.out)
    assert sweep["launcher"] == "joblib" and sweep["jobs_at_once"] == 2
    jobs = job_summaries(sweep_dir)
    assert [j["status"] for j in jobs.values()] == ["completed", "completed"]
    expected_threads = max(1, (os.cpu_count() or 1) // 2)
    for name in jobs:
        assert f"threads: {expected_threads}\n" in (sweep_dir / name / "config.yaml").read_text()


def test_submitit_local_launcher(bnexp):
    bnexp("sweep", "norm=none,custom", *TINY, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5")
    sweep_dir, sweep = only_sweep(bnexp.out)
    assert sweep["launcher"] == "submitit_local" and (sweep_dir / ".submitit").is_dir()
    assert [j["status"] for j in job_summaries(sweep_dir).values()] == ["completed", "completed"]


def test_dry_run_expands_hydra_sweep_syntax(monkeypatch, capsys, tmp_path):
    code, out, _ = in_process(monkeypatch, capsys, tmp_path / "out", "sweep", "norm=glob(*)",
                              "batch_size=range(32,97,32)", "seed=choice(1,2)", "--dry-run")
    assert code == 0 and "18 jobs" in out
    assert "norm=builtin batch_size=32 seed=1" in out and "norm=none batch_size=96 seed=2" in out
    code, out, _ = in_process(monkeypatch, capsys, tmp_path / "out", "sweep", "--trials", "4", "--dry-run",
                              "optimizer.lr=tag(log,interval(0.001,1))", "epochs=interval(1,4)", "norm=none,custom")
    assert code == 0 and "optimizer.lr: float in [0.001, 1.0], log" in out and "epochs: int in [1, 4]" in out
    assert "norm: one of none, custom" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["model=foo"], "model=foo: no such option"),
    (["norm=none,bogus"], "norm=bogus: no such option"),
    (["optimizer.lr=0.1,-1"], "optimizer.lr=-1.0: must be > 0"),
    (["optimizer.lr=interval(0.01,1)"], "add --trials N"),
    (["hydra/launcher=nope"], "no such launcher"),
    (["norm=none,custom", "-j", "2", "--launcher", "basic"], "one job at a time"),
    (["norm=none", "hydra.launcher.no_such_setting=1"], "Hydra rejected the sweep settings"),
])
def test_bad_input_fails_fast_and_leaves_nothing(monkeypatch, capsys, tmp_path, args, message):
    code, _, err = in_process(monkeypatch, capsys, tmp_path / "out", "sweep", *args)
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out" / "sweeps").exists() or not any((tmp_path / "out" / "sweeps").iterdir())


def test_optuna_search_persists_and_resumes(bnexp):
    import optuna

    space = ["optimizer.lr=tag(log,interval(0.01,1))", "norm=none,custom"]
    first = bnexp("sweep", "--trials", "3", *space, *TINY)
    assert "best trial" in first.stdout
    sweep_dir, sweep = only_sweep(bnexp.out)
    assert sweep["kind"] == "optuna" and sweep["optuna"]["trials"] == 3 and (sweep_dir / "study.db").is_file()
    bnexp("sweep", "--study", sweep_dir.name, "--trials", "5")
    _, sweep = only_sweep(bnexp.out)
    assert sweep["optuna"]["trials"] == 5 and sweep["status"] == "completed"
    jobs = job_summaries(sweep_dir)
    assert len(jobs) == 5 and len(sweep["jobs"]) == 5
    study = optuna.load_study(study_name=sweep_dir.name, storage=f"sqlite:///{sweep_dir / 'study.db'}")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4] and study.direction == optuna.study.StudyDirection.MAXIMIZE
    for trial in trials:  # trial n ran as job n, with the sampled values as its overrides
        run = jobs[trial.user_attrs["run"]]
        assert f"optimizer.lr={trial.params['optimizer.lr']!r}" in run["overrides"]
        assert f"norm={trial.params['norm']}" in run["overrides"]
        assert 0.01 <= trial.params["optimizer.lr"] <= 1 and trial.value == run["metrics"]["best_val_acc"]
    again = bnexp("sweep", "--study", sweep_dir.name, "norm=none", check=False)
    assert again.returncode == 2 and "saved overrides" in again.stderr
