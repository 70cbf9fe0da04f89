"""`bnexp sweep`: real Hydra multirun grids (basic, joblib and submitit_local launchers), Optuna
searches with a resumable study, and bad input that fails fast leaving nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY as SHARED_TINY
from conftest import one_line_error

from bnexp.tracking.hparams import FINAL_TAGS

TINY = [*SHARED_TINY, "hist_every_steps=0"]


def only_sweep(out: Path) -> tuple[Path, dict]:
    (sweep_dir,) = (out / "sweeps").iterdir()
    return sweep_dir, json.loads((sweep_dir / "sweep.json").read_text())


def job_summaries(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/run.json"))}


def hparams_summaries(directory: Path, pattern: str = "events.out.tfevents.*") -> dict[str, bytes]:
    """HParams plugin content by tag in the event files of ``directory`` (not its sub-directories)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    found = {}
    for event_file in directory.glob(pattern):
        for event in EventFileLoader(str(event_file)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    found[value.tag] = value.metadata.plugin_data.content
    return found


def experiment_columns(directory: Path) -> tuple[list[tuple[str, bool]], list[str]]:
    """The HParams experiment written in ``directory``: (hparam, differs) columns and metric tags."""
    from tensorboard.plugins.hparams import metadata

    summaries = hparams_summaries(directory, "sweep/events.out.tfevents.*")  # TensorBoard's run "sweep"
    experiment = metadata.parse_experiment_plugin_data(summaries[metadata.EXPERIMENT_TAG])
    return [(h.name, h.differs) for h in experiment.hparam_infos], [m.name.tag for m in experiment.metric_infos]


def test_grid_sweep_runs_every_job_despite_divergence(cli):
    result = cli("sweep", "norm=none,custom", "optimizer.lr=0.1,1e30", *TINY, check=False)
    assert result.returncode == 1, result.stdout + result.stderr  # some jobs diverged: the exit code says so
    assert "did not complete" in result.stdout and "diverged" in result.stdout
    sweep_dir, sweep = only_sweep(cli.out)
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
    assert not any(differs for _, differs in columns[2:]) and metrics == list(FINAL_TAGS)
    completed = next(sweep_dir / name for name, j in jobs.items() if j["status"] == "completed")
    assert set(hparams_summaries(completed)) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    listed = json.loads(cli("runs", "--sweep", sweep_dir.name[:20], "--json").stdout)
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


def test_dry_run_expands_hydra_sweep_syntax(cli):
    out = cli("sweep", "norm=glob(*)", "batch_size=range(32,97,32)", "seed=choice(1,2)", "--dry-run").stdout
    assert "42 jobs" in out  # glob(*) is every norm option: 7 norms x 3 batch sizes x 2 seeds
    assert "norm=builtin batch_size=32 seed=1" in out and "norm=none batch_size=96 seed=2" in out
    out = cli("sweep", "--trials", "4", "--dry-run", "optimizer.lr=tag(log,interval(0.001,1))",
              "epochs=interval(1,4)", "norm=none,custom").stdout
    assert "optimizer.lr: float in [0.001, 1.0], log" in out and "epochs: int in [1, 4]" in out
    assert "norm: one of none, custom" in out
    assert not cli.out.exists()


@pytest.mark.parametrize("args, message", [
    (["model=foo"], "model=foo: no such option"),
    (["norm=none,bogus"], "norm=bogus: no such option"),
    (["optimizer.lr=0.1,-1"], "optimizer.lr=-1.0: must be > 0"),
    (["optimizer.lr=interval(0.01,1)"], "add --trials N"),
    (["hydra/launcher=nope"], "no such launcher"),
    (["norm=none,custom", "-j", "2", "--launcher", "basic"], "one job at a time"),
    (["norm=none", "hydra.launcher.no_such_setting=1"], "Hydra rejected the sweep settings"),
])
def test_bad_input_fails_fast_and_leaves_nothing(cli, args, message):
    result = cli("sweep", *args, check=False)
    assert result.returncode == 2
    one_line_error(result, message)
    assert not (cli.out / "sweeps").exists() or not any((cli.out / "sweeps").iterdir())


def test_optuna_search_persists_and_resumes(cli):
    import optuna

    space = ["optimizer.lr=tag(log,interval(0.01,1))", "norm=none,custom"]
    first = cli("sweep", "--trials", "3", *space, *TINY)
    assert "best trial" in first.stdout
    sweep_dir, sweep = only_sweep(cli.out)
    assert sweep["kind"] == "optuna" and sweep["optuna"]["trials"] == 3 and (sweep_dir / "study.journal").is_file()
    assert sweep["optuna"]["storage"] == "study.journal"  # Optuna's journal: safe on network file systems
    cli("sweep", "--study", sweep_dir.name, "--trials", "5")
    _, sweep = only_sweep(cli.out)
    assert sweep["optuna"]["trials"] == 5 and sweep["status"] == "completed"
    jobs = job_summaries(sweep_dir)
    assert len(jobs) == 5 and len(sweep["jobs"]) == 5
    from optuna.storages.journal import JournalFileBackend

    journal = optuna.storages.JournalStorage(JournalFileBackend(str(sweep_dir / "study.journal")))
    study = optuna.load_study(study_name=sweep_dir.name, storage=journal)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4] and study.direction == optuna.study.StudyDirection.MAXIMIZE
    for trial in trials:  # trial n ran as job n, with the sampled values as its overrides
        run = jobs[trial.user_attrs["run"]]
        assert f"optimizer.lr={trial.params['optimizer.lr']!r}" in run["overrides"]
        assert f"norm={trial.params['norm']}" in run["overrides"]
        assert 0.01 <= trial.params["optimizer.lr"] <= 1 and trial.value == run["metrics"]["best_val_acc"]
    # a continued search proposes new points, not the first ones again (the sampler sees a new stream)
    learning_rates = [t.params["optimizer.lr"] for t in trials]
    assert len(set(learning_rates)) == 5, learning_rates
    again = cli("sweep", "--study", sweep_dir.name, "norm=none", check=False)
    assert again.returncode == 2 and "saved overrides" in again.stderr


def test_resume_reruns_only_the_jobs_that_did_not_complete(cli, tmp_path):
    import numpy as np
    from conftest import write_idx

    good, missing = tmp_path / "good", tmp_path / "later"
    good.mkdir()
    rng = np.random.default_rng(0)
    write_idx(good / "images-idx3-ubyte", rng.integers(0, 256, (80, 28, 28)), compress=False)
    write_idx(good / "labels-idx1-ubyte", rng.integers(0, 10, 80), compress=False)
    missing.mkdir()  # its files are there but broken: 80 images, 40 labels (found while the job loads them)
    write_idx(missing / "images-idx3-ubyte", rng.integers(0, 256, (80, 28, 28)), compress=False)
    write_idx(missing / "labels-idx1-ubyte", rng.integers(0, 10, 40), compress=False)
    first = cli("sweep", "dataset=idx", f"dataset.path={good},{missing}", *TINY, check=False)
    assert first.returncode == 1  # the second job's data is broken
    sweep_dir, sweep = only_sweep(cli.out)
    done = {j["dir"]: j["status"] for j in sweep["jobs"]}
    assert sorted(done.values()) == ["completed", "failed"]
    completed_dir = Path(next(d for d, s in done.items() if s == "completed"))
    before = (completed_dir / "run.json").read_text()
    shutil.copytree(good, missing, dirs_exist_ok=True)  # fix the cause, then continue the sweep
    again = cli("sweep", "--resume", sweep_dir.name[:20])
    assert "2 jobs" in again.stdout
    _, sweep = only_sweep(cli.out)
    assert sweep["status"] == "completed" and [j["status"] for j in sweep["jobs"]] == ["completed", "completed"]
    assert (completed_dir / "run.json").read_text() == before  # not run again
    assert len(list(sweep_dir.glob("*/run.json"))) == 2  # re-run in its own directory, not a new one
    refused = cli("sweep", "--resume", sweep_dir.name, "--trials", "3", check=False)
    assert refused.returncode == 2 and "is a grid" in refused.stderr


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_stopping_a_parallel_sweep_stops_its_workers(tmp_path, how):
    """kill -9 of the sweep: its workers notice within a second or two and end their jobs as
    interrupted (the sweep shows as dead); Ctrl-C: the sweep itself records them as interrupted."""
    out = tmp_path / "outputs"
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(out), "COLUMNS": "200"}
    sweep = subprocess.Popen([sys.executable, "-m", "bnexp", "sweep", "norm=none,custom,builtin", "epochs=300",
                              "dataset.limit_train=256", "hist_every_steps=0", "-j", "2"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def running_jobs():
        found = [json.loads(p.read_text()) for p in out.glob("sweeps/*/*/run.json")]
        owners = [(j.get("owner") or {}).get("pid") for j in found if j.get("status") == "running"]
        return owners if len(owners) == 2 and all(owners) and any(out.glob("sweeps/*/*/checkpoint.pt")) else None

    deadline = time.monotonic() + 180
    while not (workers := running_jobs()):
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()
        time.sleep(0.1)
    sweep.send_signal(how)
    sweep.wait(timeout=60)
    stopped = time.monotonic()
    for pid in workers:
        while os.path.exists(f"/proc/{pid}"):
            assert time.monotonic() - stopped < 15, f"worker {pid} still running"
            time.sleep(0.1)
    sweep_dir = next((out / "sweeps").iterdir())
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep_dir.glob("*/run.json"))
    assert statuses == ["interrupted", "interrupted"]  # the third job never started
    shown = json.loads(subprocess.run([sys.executable, "-m", "bnexp", "show", sweep_dir.name, "--json"], env=env,
                                      capture_output=True, text=True, timeout=120).stdout)
    assert shown["status"] == ("dead" if how == signal.SIGKILL else "interrupted")
    assert f"--resume {sweep_dir.name}" in (shown.get("message") or sweep.stdout.read() or "")
