"""One run over several nodes (``nnodes=M nproc=N``), tried as two launchers on 127.0.0.1 with
different node ranks: the same numbers as one launcher of ``nproc=2``, node 0 owns the run, and a
node that cannot reach the others stops with a clear error after ``rdzv_timeout`` instead of
hanging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clusters import free_ports

pytestmark = pytest.mark.slow

RUN = ["epochs=2", "dataset.limit_train=256", "dataset.limit_val=128", "batch_size=32", "norm.sync=true",
       "hist_every_steps=0", "threads=1", "log_every_steps=2", "-q"]
TIMING = ("examples_per_s", "duration_s", "time")


def start(env, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bnexp", "train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def numbers(run_dir: Path) -> tuple[list[dict], dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if not any(t in k for t in TIMING)}  # noqa: E731
    metrics = json.loads((run_dir / "run.json").read_text())["metrics"]
    return [strip(r) for r in records], strip(metrics)


def test_two_nodes_of_one_process_equal_one_node_of_two(tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    (port,) = free_ports(1)
    node = ["nnodes=2", "nproc=1", f"rdzv_endpoint=127.0.0.1:{port}", "rdzv_timeout=60"]
    two = {**env, "BNEXP_OUTPUT_DIR": str(tmp_path / "two")}
    follower = start(two, *node, "node_rank=1", *RUN)
    leader = start(two, *node, "node_rank=0", *RUN)
    (lead_out, lead_err), (follow_out, follow_err) = leader.communicate(timeout=180), follower.communicate(timeout=60)
    assert leader.returncode == follower.returncode == 0, lead_err + follow_err
    assert "node 1 of 2 done" in follow_out and "run dir" in lead_out
    (run_dir,) = (tmp_path / "two" / "runs").iterdir()  # one run, node 0's
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["repro"]["processes"] == 2

    one = {**env, "BNEXP_OUTPUT_DIR": str(tmp_path / "one")}
    single = subprocess.run([sys.executable, "-m", "bnexp", "train", "nproc=2", *RUN], env=one, capture_output=True,
                            text=True, timeout=180)
    assert single.returncode == 0, single.stderr
    (reference,) = (tmp_path / "one" / "runs").iterdir()
    assert numbers(run_dir) == numbers(reference)  # exactly: same world size, shards and reductions


def test_a_node_that_cannot_reach_node_0_fails_clearly_after_the_timeout(tmp_path):
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(tmp_path / "out")}
    (port,) = free_ports(1)  # nobody listens there
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "bnexp", "train", "nnodes=2", "nproc=1", "node_rank=1",
                           f"rdzv_endpoint=127.0.0.1:{port}", "rdzv_timeout=5", *RUN], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and time.monotonic() - started < 60
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"rdzv_endpoint=127.0.0.1:{port}" in error[0] and "rdzv_timeout=5" in error[0], done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_several_nodes_need_an_endpoint_and_a_valid_rank(cli):
    from conftest import one_line_error

    one_line_error(cli("train", "nnodes=2", check=False), "rdzv_endpoint=HOST:PORT")
    one_line_error(cli("train", "nnodes=2", "rdzv_endpoint=127.0.0.1:1", "node_rank=2", check=False), "node_rank=2")
    one_line_error(cli("train", "nnodes=2", "nproc=2", "batch_size=30", "rdzv_endpoint=h:1", check=False),
                   "multiple of 4")


def test_inside_slurm_the_node_rank_and_endpoint_come_from_the_allocation(monkeypatch):
    from omegaconf import OmegaConf

    from bnexp.launch.multiproc import first_host, node_rank, rendezvous_endpoint

    assert [first_host(s) for s in ("gpu[07-09,12],cpu01", "vm", "a1,a2", "node[3]", "x[003,005]")] == \
        ["gpu07", "vm", "a1", "node3", "x003"]
    cfg = OmegaConf.create({"nnodes": 2, "node_rank": None, "rdzv_endpoint": None})
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_NODEID", "0")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")  # one task per node: the task's rank (also on a shared machine)
    assert node_rank(cfg) == 1 and rendezvous_endpoint(cfg) == "gpu07:20123"
    monkeypatch.setenv("SLURM_NTASKS", "4")  # more tasks than nodes: the machine's index
    assert node_rank(cfg) == 0
    cfg.node_rank, cfg.rdzv_endpoint = 1, "10.0.0.1:29400"  # given settings win
    assert node_rank(cfg) == 1 and rendezvous_endpoint(cfg) == "10.0.0.1:29400"


def test_a_slurm_sweep_of_several_node_jobs_asks_for_a_task_per_node(cli):
    shown = cli("sweep", "--launcher", "submitit_slurm", "nnodes=2", "nproc=2", "seed=0,1", "--dry-run").stdout
    assert "#SBATCH --nodes=2" in shown and "#SBATCH --ntasks-per-node=1" in shown and "#SBATCH --cpus-per-task=2" in shown
    assert "note: hydra.launcher.tasks_per_node" not in shown  # no rdzv_endpoint needed: Slurm names node 0
    noted = cli("sweep", "--launcher", "submitit_slurm", "nnodes=2", "hydra.launcher.tasks_per_node=3",
                "--dry-run").stdout
    assert "3 Slurm tasks for jobs of nnodes=2" in noted
