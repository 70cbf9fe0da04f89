"""Sweeps on a real one-node Slurm cluster (started by the fixture in a temporary directory, on its
own ports): a grid and an Optuna search through ``--launcher submitit_slurm``, a failing job, a
cancelled and a requeued array task that end with exactly the metrics of an uninterrupted run,
and a killed sweep that leaves nothing on the cluster. Skipped, with the reason, where Slurm's
binaries are not installed (``bash scripts/test.sh`` installs them when run as root)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from clusters import slurm_cluster, slurm_missing
from conftest import write_idx

pytestmark = pytest.mark.slow

TINY = ["epochs=1", "dataset.limit_train=256", "dataset.limit_val=128", "batch_size=32", "hist_every_steps=0",
        "threads=1"]
# Jobs long enough to be caught while they run (~10 s each here), short steps so a stop is quick.
LONG = ["epochs=500", "dataset.limit_train=256", "dataset.limit_val=128", "batch_size=64", "hist_every_steps=0",
        "threads=1", "log_every_steps=4"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = slurm_missing()
    if why:
        pytest.skip(why)
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture
def sweep_env(slurm, tmp_path):
    return {**slurm.env, "BNEXP_OUTPUT_DIR": str(tmp_path / "outputs"), "COLUMNS": "200"}


def bnexp(env, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnexp", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=Path(env["BNEXP_OUTPUT_DIR"]).parent)


def jobs_of(env) -> tuple[Path, dict, dict[str, dict]]:
    (sweep_dir,) = (Path(env["BNEXP_OUTPUT_DIR"]) / "sweeps").iterdir()
    runs = {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/run.json"))}
    return sweep_dir, json.loads((sweep_dir / "sweep.json").read_text()), runs


def epochs(run_dir: Path) -> list[dict]:
    """The per-epoch records of a run's metrics log, timing fields dropped."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    drop = ("time", "wall", "examples_per_s", "duration_s", "elapsed_s", "epoch_s")
    return [{k: v for k, v in r.items() if not any(d in k for d in drop)} for r in records if r.get("kind") == "epoch"]


def test_grid_with_a_failing_job_on_slurm(sweep_env, tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    rng = np.random.default_rng(0)
    for directory, labels in ((good, 80), (bad, 70)):  # bad: 80 images, 70 labels (found while loading)
        directory.mkdir()
        write_idx(directory / "images-idx3-ubyte", rng.integers(0, 256, (80, 28, 28)), compress=False)
        write_idx(directory / "labels-idx1-ubyte", rng.integers(0, 10, labels), compress=False)
    done = bnexp(sweep_env, "sweep", "--launcher", "submitit_slurm", "dataset=idx", f"dataset.path={good},{bad}",
                 *TINY)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "sacct" not in output and "accounting" not in output and "WARNING" not in output  # no Slurm noise
    assert "job 0 completed" in done.stdout and "job 1 failed" in done.stdout  # a line per job as it ends
    sweep_dir, sweep, runs = jobs_of(sweep_env)
    assert (sweep_dir / ".submitit").is_dir() and sweep["launcher"] == "submitit_slurm"
    status = {r["overrides"][1]: (r["status"], r["message"]) for r in runs.values()}
    assert status[f"dataset.path={good}"] == ("completed", None)
    assert status[f"dataset.path={bad}"][0] == "failed" and "70 labels" in status[f"dataset.path={bad}"][1]


def test_optuna_search_on_slurm(sweep_env):
    done = bnexp(sweep_env, "sweep", "--launcher", "submitit_slurm", "--trials", "3", "-j", "2",
                 "optimizer.lr=tag(log,interval(0.01,1))", *TINY)
    assert done.returncode == 0, done.stdout + done.stderr
    _, sweep, runs = jobs_of(sweep_env)
    assert sweep["optuna"]["trials"] == sweep["optuna"]["completed"] == 3
    assert sorted(r["status"] for r in runs.values()) == ["completed"] * 3


def test_workers_of_a_search_run_as_slurm_tasks(slurm, sweep_env):
    """``--workers 2`` on Slurm: one job array of two tasks, each an ask-train-tell worker of the
    same study; the search ends with the asked number of completed trials."""
    done = bnexp(sweep_env, "sweep", "--launcher", "submitit_slurm", "--trials", "3", "--workers", "2",
                 "optimizer.lr=tag(log,interval(0.01,1))", *TINY)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert output.count("Slurm job") == 2 and output.count("ended: its work is done") == 2, output
    assert "sacct" not in output and "WARNING" not in output
    sweep_dir, sweep, runs = jobs_of(sweep_env)
    assert sweep["status"] == "completed" and sweep["optuna"]["completed"] == 3, sweep
    assert sorted(r["status"] for r in runs.values()) == ["completed"] * 3
    assert len(list(sweep_dir.glob(".submitit/*_[01]/*_log.out"))) == 2  # the two array tasks' logs
    assert not slurm.active_jobs()


def _wait_for(predicate, timeout, what, process=None):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert process is None or process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return found


@pytest.mark.parametrize("state, done", [("RUNNING", False), ("PENDING", False), ("REQUEUED", False),
                                         ("SIGNALING", False), ("CONFIGURING", False), ("REQUEUE_HOLD", False),
                                         ("PREEMPTED", False), ("COMPLETED", True), ("FAILED", True),
                                         ("CANCELLED by 0", True), ("TIMEOUT", True), ("NODE_FAIL", True)])
def test_a_job_counts_as_ended_only_in_a_final_slurm_state(state, done):
    """A requeued job passes through states submitit does not list (it counted them as done, and
    the sweep gave the job up while Slurm was about to run it again): only a final state ends it."""
    from bnexp.launch.cluster import quiet_slurm_watcher

    watcher = quiet_slurm_watcher()
    watcher._info_dict["7_0"] = {"JobID": "7_0", "State": state}
    assert watcher.is_done("7_0", mode="cache") is done


def test_cancelled_and_requeued_jobs_end_with_the_metrics_of_an_uninterrupted_run(slurm, sweep_env):
    """Three identical jobs: job 0 is requeued while it runs (preemption), job 1 cancelled; job 2
    runs undisturbed. The requeued job continues from its checkpoint within the same sweep; the
    cancelled one is recorded interrupted and ``--resume`` continues it. All three end equal."""
    sweep = subprocess.Popen([sys.executable, "-m", "bnexp", "sweep", "--launcher", "submitit_slurm", "seed=3,3,3",
                              *LONG], env=sweep_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=Path(sweep_env["BNEXP_OUTPUT_DIR"]).parent)
    out = Path(sweep_env["BNEXP_OUTPUT_DIR"])

    def running_with_checkpoints():
        found = {}
        for path in out.glob("sweeps/*/*/run.json"):
            record = json.loads(path.read_text())
            if record["status"] == "running" and (path.parent / "checkpoint.pt").exists():
                found[int(path.parent.name.split("-")[4])] = path.parent
        return found if {0, 1} <= set(found) else None

    _wait_for(running_with_checkpoints, 120, "jobs 0 and 1 running with checkpoints", sweep)
    array = slurm.run("squeue", "-h", "-r", "-o", "%i").stdout.split()[0].split("_")[0]
    slurm.run("scontrol", "requeue", f"{array}_0")
    slurm.run("scancel", f"{array}_1")
    # Slurm holds a requeued job back for a while (BeginTime); let it start again in 3 s, not at once:
    # slurmd refuses a launch whose credential dates from the second the old one was revoked in
    # ("Killing non-startable batch JobId=7: Job credential revoked", and the job ends FAILED)
    _wait_for(lambda: "PENDING" in slurm.run("squeue", "-h", "-r", "-t", "all", "-j", f"{array}_0", "-o",
                                             "%T").stdout, 60, "job 0 requeued")
    slurm.run("scontrol", "update", f"jobid={array}_0", "StartTime=now+3")
    output, _ = sweep.communicate(timeout=240)
    assert sweep.returncode == 1, output  # job 1 did not complete
    sweep_dir, record, runs = jobs_of(sweep_env)
    by_number = {int(name.split("-")[4]): run for name, run in runs.items()}
    assert by_number[0]["status"] == by_number[2]["status"] == "completed", output
    assert by_number[1]["status"] == "interrupted" and "CANCELLED" in by_number[1]["message"], by_number[1]
    assert "job 1 interrupted" in output and "sacct" not in output
    resumed = bnexp(sweep_env, "sweep", "--resume", sweep_dir.name)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _, record, runs = jobs_of(sweep_env)
    assert sorted(r["status"] for r in runs.values()) == ["completed"] * 3
    dirs = {int(p.name.split("-")[4]): p for p in sweep_dir.iterdir() if p.name[-1] != "p" and (p / "run.json").exists()}
    reference = epochs(dirs[2])
    assert len(reference) == 500
    assert epochs(dirs[0]) == reference and epochs(dirs[1]) == reference
    finals = [json.loads((dirs[i] / "run.json").read_text())["metrics"] for i in range(3)]
    keys = ("val_loss", "val_acc", "train_loss", "best_val_acc", "step")
    assert [{k: m[k] for k in keys} for m in finals] == [{k: finals[2][k] for k in keys}] * 3


def test_killed_sweep_leaves_no_job_on_the_cluster(slurm, sweep_env):
    sweep = subprocess.Popen([sys.executable, "-m", "bnexp", "sweep", "--launcher", "submitit_slurm", "seed=0,1,2",
                              *LONG], env=sweep_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=Path(sweep_env["BNEXP_OUTPUT_DIR"]).parent)
    _wait_for(lambda: len(list(Path(sweep_env["BNEXP_OUTPUT_DIR"]).glob("sweeps/*/*/checkpoint.pt"))) >= 2, 120,
              "two jobs running", sweep)
    assert slurm.active_jobs()
    sweep.send_signal(signal.SIGKILL)
    sweep.wait(timeout=30)
    _wait_for(lambda: not slurm.active_jobs(), 60, f"jobs still on the cluster: {slurm.active_jobs()}")
    # Slurm's SIGTERM stops each job after its step, so the job (not the reader's liveness rule)
    # records how it ended; a record left "running" here meant the job was killed mid-ending
    sweep_dir, _, runs = jobs_of(sweep_env)
    assert sorted(r["status"] for r in runs.values()) == ["interrupted", "interrupted"]  # the third never started
    shown = json.loads(bnexp(sweep_env, "show", sweep_dir.name, "--json").stdout)
    assert shown["status"] == "dead" and sorted(j["status"] for j in shown["jobs"]) == ["interrupted"] * 2


def test_a_job_of_two_nodes_takes_its_ranks_and_rendezvous_from_slurm(slurm, sweep_env, tmp_path):
    """``nnodes=2`` in a Slurm sweep: one Slurm task per node, node rank and node 0's address from
    the allocation (no rdzv_endpoint given). The fixture has one machine, so both tasks share it
    (``tasks_per_node=2``); the run must equal ``nproc=2`` on one node exactly."""
    run = ["epochs=2", "dataset.limit_train=256", "dataset.limit_val=128", "batch_size=32", "norm=custom",
           "norm.sync=true", "hist_every_steps=0", "threads=1", "log_every_steps=2"]
    done = bnexp(sweep_env, "sweep", "--launcher", "submitit_slurm", "nnodes=2", "nproc=1", "seed=0",
                 "hydra.launcher.tasks_per_node=2", *run)
    assert done.returncode == 0, done.stdout + done.stderr
    sweep_dir, _, runs = jobs_of(sweep_env)
    ((name, record),) = runs.items()  # one run: node 0's
    assert record["status"] == "completed" and record["repro"]["processes"] == 2, record
    logs = "".join(p.read_text() for p in sweep_dir.glob(".submitit/*/*_log.out"))
    assert "node 1 of 2 done; the run is recorded by node 0" in logs, logs
    single = subprocess.run([sys.executable, "-m", "bnexp", "train", "nproc=2", "seed=0", *run, "-q"],
                            env={**sweep_env, "BNEXP_OUTPUT_DIR": str(tmp_path / "one")}, capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    (reference,) = (tmp_path / "one" / "runs").iterdir()
    assert epochs(sweep_dir / name) == epochs(reference)


def test_a_job_of_several_processes_asks_slurm_for_their_cores_and_uses_its_allocation(slurm, sweep_env):
    run = [a for a in TINY if not a.startswith("threads=")]
    done = bnexp(sweep_env, "sweep", "--launcher", "submitit_slurm", "nproc=2", "norm=custom", *run)
    assert done.returncode == 0, done.stdout + done.stderr
    sweep_dir, _, runs = jobs_of(sweep_env)
    (record,) = runs.values()
    assert record["status"] == "completed" and record["nproc"] == 2
    (config,) = sweep_dir.glob("*/config.yaml")
    assert "threads: 1\n" in config.read_text()  # the 2 cores Slurm gave the job, shared by its 2 processes
    cpus = slurm.run("squeue", "-h", "-r", "-t", "all", "-o", "%i %C").stdout.split("\n")
    assert any(line.split()[1] == "2" for line in cpus if line.strip()), cpus
