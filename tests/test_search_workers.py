"""Several workers driving one Optuna search (``bnexp sweep --study ID --worker``), on the default
journal storage and on a real PostgreSQL server (started by the fixture in a temporary directory
on a free port; skipped, with the reason, where PostgreSQL or psycopg is not installed): one
worker is killed with -9 while it trains, its trial is failed and re-proposed, and the study ends
with exactly the asked number of completed trials, each with its own completed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clusters import postgres_cluster, postgres_missing

pytestmark = pytest.mark.slow

SPACE = ["optimizer.lr=tag(log,interval(0.01,1))", "norm=none,custom"]
JOB = ["epochs=120", "dataset.limit_train=256", "dataset.limit_val=128", "batch_size=64", "hist_every_steps=0",
       "threads=1", "log_every_steps=4"]
TRIALS = 5


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    why = postgres_missing()
    if why:
        pytest.skip(why)
    with postgres_cluster(tmp_path_factory.mktemp("postgres")) as cluster:
        yield cluster


@pytest.fixture(params=["journal", "postgres"])
def storage(request) -> list[str]:
    if request.param == "journal":
        return []
    return ["--storage", request.getfixturevalue("postgres").url]


def start(env, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bnexp", "sweep", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=Path(env["BNEXP_OUTPUT_DIR"]).parent)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return found


def test_workers_share_one_search_and_a_killed_workers_trial_is_retried(tmp_path, storage):
    import optuna

    out = tmp_path / "outputs"
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(out), "COLUMNS": "200"}
    first = start(env, "--trials", str(TRIALS), "--worker", *storage, *SPACE, *JOB)
    sweep_dir = wait_for(lambda: next((d for d in (out / "sweeps").glob("*") if (d / "sweep.json").exists()), None)
                         if (out / "sweeps").exists() else None, 60, "the sweep directory")
    wait_for(lambda: any(sweep_dir.glob("*/run.json")), 60, "the first trial")
    others = [start(env, "--study", sweep_dir.name, "--worker", *storage) for _ in range(2)]
    victim = others[1]

    def victim_training():
        for path in sweep_dir.glob("*/run.json"):
            record = json.loads(path.read_text())
            if (record.get("owner") or {}).get("pid") == victim.pid and (path.parent / "checkpoint.pt").exists():
                return path.parent
        return None

    killed_run = wait_for(victim_training, 120, "the third worker training a trial")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    outputs = [p.communicate(timeout=200)[0] for p in (first, others[0])]
    if [p.returncode for p in (first, others[0])] != [0, 0]:
        print(*outputs, sep="\n----\n")  # whole, in the report's captured output (an assertion message is cut)
    assert [p.returncode for p in (first, others[0])] == [0, 0]

    if storage:
        study = optuna.load_study(study_name=sweep_dir.name, storage=storage[1])
    else:
        from optuna.storages.journal import JournalFileBackend

        journal = optuna.storages.JournalStorage(JournalFileBackend(str(sweep_dir / "study.journal")))
        study = optuna.load_study(study_name=sweep_dir.name, storage=journal)
    trials = study.get_trials()
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(completed) == TRIALS, [(t.number, t.state) for t in trials]
    runs = [t.user_attrs["run"] for t in completed]
    assert len(set(runs)) == TRIALS  # each completed trial has its own run, none trained twice
    for trial in completed:
        record = json.loads((sweep_dir / trial.user_attrs["run"] / "run.json").read_text())
        assert record["status"] == "completed" and trial.value == record["metrics"]["best_val_acc"]
        assert f"norm={trial.params['norm']}" in record["overrides"]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["worker"]["pid"] == victim.pid
    retry = [t for t in completed if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].params == failed[0].params
    assert retry[0].user_attrs["run"] == killed_run.name  # the retry continued the killed trial's run
    assert len(list(sweep_dir.glob("*/run.json"))) == TRIALS  # no run left behind by the killed worker


def journal_study(sweep_dir: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    journal = optuna.storages.JournalStorage(JournalFileBackend(str(sweep_dir / "study.journal")))
    return optuna.load_study(study_name=sweep_dir.name, storage=journal)


def test_workers_on_a_launcher_drive_one_search_without_batches(tmp_path):
    """``--workers 2``: the sweep starts two worker processes, each asking for its next trial as
    soon as its last one ends; together they bring the study to the asked number of trials."""
    import optuna

    out = tmp_path / "outputs"
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(out), "COLUMNS": "200"}
    long_trials = [a for a in JOB if not a.startswith("epochs=")] + ["epochs=60"]  # a few s each
    done = subprocess.run([sys.executable, "-m", "bnexp", "sweep", "--trials", "3", "--workers", "2", *SPACE,
                           *long_trials], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 asynchronous workers" in done.stdout and "completed" in done.stdout
    (sweep_dir,) = (out / "sweeps").iterdir()
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    assert sweep["status"] == "completed" and sweep["workers"] == 2 and sweep["optuna"]["completed"] == 3
    trials = journal_study(sweep_dir).get_trials()
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(completed) == 3 and len({t.user_attrs["run"] for t in completed}) == 3
    logs = sorted(p.name for p in (sweep_dir / "workers").iterdir())
    assert logs == ["worker-0.log", "worker-1.log"]
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(pids) == 2 and os.getpid() not in pids  # both workers trained, the sweep itself none
    for k in (0, 1):
        assert f"worker {k}: job " in done.stdout


def test_workers_are_checked_before_anything_starts(cli):
    from conftest import one_line_error

    one_line_error(cli("sweep", "--workers", "2", "seed=0,1", check=False), "--workers N", "--trials N")
    one_line_error(cli("sweep", "--workers", "0", "--trials", "2", *SPACE, check=False), "--workers 0")
    one_line_error(cli("sweep", "--workers", "2", "-j", "2", "--trials", "2", *SPACE, check=False), "--jobs 2")
    assert not cli.out.exists()
    shown = cli("sweep", "--workers", "3", "--trials", "6", *SPACE, "--dry-run").stdout
    assert "3 asynchronous workers" in shown


def test_a_search_whose_every_trial_fails_ends_failed(tmp_path):
    """Workers count a trial failed by its own job as one of the asked trials: a search where every
    job fails (here, labels that do not match the images) ends, failed, instead of asking for ever."""
    import numpy as np
    import optuna
    from conftest import write_idx

    bad, rng = tmp_path / "bad", np.random.default_rng(0)
    bad.mkdir()
    write_idx(bad / "images-idx3-ubyte", rng.integers(0, 256, (80, 28, 28)), compress=False)
    write_idx(bad / "labels-idx1-ubyte", rng.integers(0, 10, 70), compress=False)
    out = tmp_path / "outputs"
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(out), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "bnexp", "sweep", "--trials", "2", "--workers", "1", SPACE[0],
                           "dataset=idx", f"dataset.path={bad}", "epochs=1", "threads=1"], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "sweep failed: 2 of 2 jobs did not complete" in done.stdout, done.stdout
    (sweep_dir,) = (out / "sweeps").iterdir()
    trials = journal_study(sweep_dir).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2
    assert all(t.user_attrs["job_failed"] == "failed" for t in trials)
