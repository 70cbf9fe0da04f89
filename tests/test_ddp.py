"""Data-parallel training on CPU (2 processes, gloo on 127.0.0.1): synchronized BN over 2 ranks
equals one process with the global batch (gradients, losses, running statistics), per-replica BN
equals ghost batches, a stopped multi-process run resumes exactly, a killed rank fails the run and
leaves no process behind; how the launcher settles the record; the Slurm dry run.

Every 2-process start costs several seconds (torch imported per process): the slow tests are few
and each subprocess has a timeout, so a hang fails instead of blocking.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, one_line_error

# Long enough (many short epochs) that a signal sent after the first checkpoint lands mid-run.
SYNC_RUN = ["model=mlp", "norm=custom", "norm.sync=true", "dataset.limit_train=384",
            "dataset.limit_val=128", "batch_size=64", "log_every_steps=3", "hist_every_steps=0", "device=cpu",
            "optimizer.momentum=0.9"]
WALL_CLOCK = "examples_per_s"  # throughput keys: the only values allowed to differ between equal runs
TIMEOUT_S = 240


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in r.items() if WALL_CLOCK not in k} for r in map(json.loads, lines)
            if r["kind"] in ("train", "epoch")]


def run_dir_named(out: Path, name: str) -> Path:
    (found,) = out.glob(f"runs/*-{name}-*")
    return found


def start(out: Path, *args: str) -> subprocess.Popen:
    """``bnexp train ARGS`` as a launcher process of its own (SIGINT at its default, as in a terminal)."""
    return subprocess.Popen([sys.executable, "-m", "bnexp", "train", *args, "-q"],
                            env={**os.environ, "BNEXP_OUTPUT_DIR": str(out)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_checkpoint(process: subprocess.Popen, out: Path, name: str) -> Path:
    deadline = time.monotonic() + TIMEOUT_S
    while not list(out.glob(f"runs/*-{name}-*/checkpoint.pt")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate(timeout=60)
        time.sleep(0.01)
    return run_dir_named(out, name)


def workers(launcher: subprocess.Popen) -> dict[int, int]:
    """``{rank: pid}`` of the launcher's worker processes (its children, told apart by RANK)."""
    found = {}
    for children in Path(f"/proc/{launcher.pid}/task").glob("*/children"):
        for pid in map(int, children.read_text().split()):
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            rank = next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)
            if rank is not None:
                found[rank] = pid
    return found


def finished(process: subprocess.Popen) -> tuple[str, str]:
    """The launcher's output once it exits; it must within the timeout (then it is killed: a hang fails)."""
    try:
        return process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError("the launcher did not exit") from None


# ---------------------------------------------------------------------------------------------
# Gradients and running statistics, one step, without the trainer

CASES = [("custom", True), ("builtin", True), ("custom", False), ("builtin", False)]  # (norm, norm.sync)
GRADIENT_WORKER = """
import pickle, sys, torch, torch.distributed as dist, torch.nn.functional as F
from bnexp.engine.ranks import Ranks
from bnexp.nn.models import build_model
from bnexp.nn.norms import synchronize_norms

dist.init_process_group("gloo")
ranks = Ranks(rank=dist.get_rank(), size=2)
x, y, configs = pickle.loads(open(sys.argv[1], "rb").read())
out = {}
for (norm, sync), cfg in configs.items():
    torch.manual_seed(1)
    module = build_model(cfg.model, cfg.norm, 1, (28, 28), 10)
    synchronize_norms(module, cfg.norm, torch.device("cpu"))
    model = ranks.wrap(module)
    loss = F.cross_entropy(model(ranks.shard(x)), ranks.shard(y), reduction="sum") / (len(x) / ranks.size)
    loss.backward()
    out[norm, sync] = ({n: p.grad for n, p in module.named_parameters()}, dict(module.named_buffers()))
if ranks.rank == 0:
    torch.save(out, sys.argv[2])
dist.destroy_process_group()
"""


def one_process(norm: str, overrides: list[str], x, y) -> tuple[dict, dict]:
    """The reference: the same step in this process on the whole batch (mean loss)."""
    import torch.nn.functional as F

    from bnexp.config.compose import load
    from bnexp.nn.models import build_model

    cfg = load(["model=lenet", f"norm={norm}", *overrides])
    torch.manual_seed(1)
    module = build_model(cfg.model, cfg.norm, 1, (28, 28), 10)
    F.cross_entropy(module(x), y).backward()
    return {n: p.grad for n, p in module.named_parameters()}, dict(module.named_buffers())


@pytest.mark.slow
def test_two_ranks_give_the_gradients_and_statistics_of_one_process(tmp_path):
    """One DDP step, 2 ranks x 32 examples: with norm.sync=true (bnexp's layer, and torch's layer on
    CPU through the fallback) gradients and running statistics are those of one process with all 64;
    with norm.sync=false the gradients are those of ghost batches of 32 in one process."""
    import pickle

    from bnexp.config.compose import load

    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28) * 3 + 1, torch.randint(0, 10, (64,))
    configs = {(norm, sync): load(["model=lenet", f"norm={norm}", f"norm.sync={str(sync).lower()}"])
               for norm, sync in CASES}
    (tmp_path / "batch.pickle").write_bytes(pickle.dumps((x, y, configs)))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    ranks = [subprocess.Popen([sys.executable, "-c", GRADIENT_WORKER, str(tmp_path / "batch.pickle"),
                               str(tmp_path / "out.pt")], env={**env, "RANK": str(r)}, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        for process in ranks:
            _, stderr = process.communicate(timeout=TIMEOUT_S)
            assert process.returncode == 0, stderr
    finally:
        for process in ranks:
            process.kill()
    results = torch.load(tmp_path / "out.pt", weights_only=True)
    assert sorted(results) == sorted(CASES)
    for (norm, sync), (grads, buffers) in results.items():
        expected_grads, expected_buffers = one_process(norm, [] if sync else ["norm.ghost_batch_size=32"], x, y)
        expected_grads = {name.replace(".layer.", "."): g for name, g in expected_grads.items()}  # GhostBatchNorm
        for name, grad in expected_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=f"{norm} sync={sync}: {name}")
        if sync:  # per-replica statistics are rank 0's half, not a ghost chain over both halves
            for name, buffer in expected_buffers.items():
                torch.testing.assert_close(buffers[name], buffer, rtol=1e-5, atol=1e-6, msg=f"{norm}: {name}")


# ---------------------------------------------------------------------------------------------
# End to end through the trainer and the launcher


@pytest.mark.slow
def test_synchronized_run_equals_one_process_and_resumes_exactly(bnexp, cli):
    """nproc=2 with norm.sync=true trains like one process on the global batch (losses, weights,
    running statistics); stopped by SIGINT to the launcher after its first checkpoint, it continues
    with `resume=` to exactly the uninterrupted run's log and metrics; one run directory per run."""
    bnexp("train", *SYNC_RUN, "epochs=12", "nproc=2", "name=straight", "-q", timeout=TIMEOUT_S)
    straight = run_dir_named(bnexp.out, "straight")
    cli("train", *SYNC_RUN, "epochs=12", "name=single", "-q")  # same output dir: both fixtures write under tmp_path
    single = run_dir_named(cli.out, "single")
    for a, b in zip(records(straight), records(single), strict=True):
        assert a.keys() == b.keys() and a["step"] == b["step"]
        for key in ("loss", "acc", "train_loss", "train_acc", "val_loss", "val_acc"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4), (key, a, b)
    states = [torch.load(d / "checkpoint.pt", weights_only=True)["model"] for d in (straight, single)]
    assert states[0].keys() == states[1].keys() and "norm1.running_var" in states[0]
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=1e-4, atol=1e-5, msg=key)
    record = json.loads((straight / "run.json").read_text())
    assert record["nproc"] == 2 and record["repro"]["processes"] == 2 and record["repro"]["backend"] == "gloo"
    assert not [p for p in straight.iterdir() if p.is_dir()]  # no directory per rank

    launcher = start(bnexp.out, *SYNC_RUN, "epochs=12", "nproc=2", "name=stopped")
    run_dir = wait_for_checkpoint(launcher, bnexp.out, "stopped")
    launcher.send_signal(signal.SIGINT)
    _, stderr = finished(launcher)
    assert launcher.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: stopped at step"), stderr
    stopped = json.loads((run_dir / "run.json").read_text())
    assert stopped["status"] == "interrupted" and f"resume={run_dir}" in stopped["message"]
    assert 1 <= stopped["metrics"]["epoch"] < 12

    bnexp("train", f"resume={run_dir.name}", "-q", timeout=TIMEOUT_S)
    final = json.loads((run_dir / "run.json").read_text())
    assert final["status"] == "completed"
    drop = lambda metrics: {k: v for k, v in metrics.items() if WALL_CLOCK not in k}  # noqa: E731
    assert drop(final["metrics"]) == drop(json.loads((straight / "run.json").read_text())["metrics"])
    assert records(run_dir) == records(straight)
    assert len(list(bnexp.out.glob("runs/*"))) == 3


@pytest.mark.slow
def test_killing_a_rank_fails_the_run_and_leaves_no_process(bnexp):
    """SIGKILL to rank 1 mid-run: the launcher exits promptly with one error line naming the rank,
    the record says failed (not running), and no worker is left."""
    launcher = start(bnexp.out, *SYNC_RUN, "epochs=200", "nproc=2", "name=killed")
    pids = {}
    try:
        run_dir = wait_for_checkpoint(launcher, bnexp.out, "killed")
        pids = workers(launcher)
        assert sorted(pids) == [0, 1], pids
        os.kill(pids[1], signal.SIGKILL)
        stopped_at = time.monotonic()
        _, stderr = finished(launcher)
        assert time.monotonic() - stopped_at < 60
        one_line_error(SimpleNamespace(returncode=launcher.returncode, stderr=stderr),
                       f"rank 1 (pid {pids[1]}) was killed by SIGKILL")
        record = json.loads((run_dir / "run.json").read_text())
        assert record["status"] == "failed" and "rank 1" in record["message"] and record["owner"] is None
        assert not [pid for pid in pids.values() if Path(f"/proc/{pid}").exists()]
    finally:
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------------------------------------
# The launcher's verdict, and the refusals (fast)


def failure(kind: str = None, exitcode: int = 1, message: str = "", pid: int = 100):
    """A stand-in for torch's ProcessFailure: what a worker reported (bnexp_kind), or a signal exit."""
    data = {"message": message, "bnexp_kind": kind} if kind else {"message": "<NONE>"}
    name = signal.Signals(-exitcode).name if exitcode < 0 else "<N/A>"
    return SimpleNamespace(pid=pid, exitcode=exitcode, message=message, error_file_data=data, signal_name=lambda: name)


def test_the_launcher_names_the_rank_that_started_it():
    from bnexp.launch.multiproc import _verdict, describe_failures
    from bnexp.store.record import RunRecord

    lost = failure("lost", message="RuntimeError: gloo ... Connection reset by peer", pid=10)
    killed = failure(exitcode=-9, pid=11)
    assert describe_failures({0: lost, 1: killed}) == "rank 1 (pid 11) was killed by SIGKILL; the other ranks stopped"
    crashed = failure("failed", message="ValueError: bad", pid=12)
    assert describe_failures({0: failure("interrupted", exitcode=130), 1: crashed}).startswith("rank 1: ValueError")
    same = {r: failure("failed", message="dataset.path=/x: not a directory") for r in (0, 1)}
    assert describe_failures(same) == "dataset.path=/x: not a directory"  # met alike by every rank: as is

    run_dir = Path("/runs/r1")
    running = RunRecord(id="r1", status="running", metrics={"step": 7})
    assert _verdict(running, run_dir, False, {0: killed})[0] == "failed"  # rank 0 died without a word
    status, message = _verdict(RunRecord(id="r1", status="failed", message="lost"), run_dir, True, {0: lost})
    assert status == "interrupted" and "resume=/runs/r1" in message  # the launcher was stopped: that is why
    interrupted = RunRecord(id="r1", status="interrupted", message="stopped at step 5")
    assert _verdict(interrupted, run_dir, False, {0: lost, 1: crashed})[0] == "failed"  # a crash stopped it
    assert _verdict(interrupted, run_dir, True, {}) == ("interrupted", "stopped at step 5")
    done = RunRecord(id="r1", status="completed")
    assert _verdict(done, run_dir, True, {})[0] == "completed"


def test_ranks_take_contiguous_shares_of_each_batch():
    from bnexp.engine.ranks import Ranks

    batch = torch.arange(11)
    shards = [Ranks(rank=r, size=3).shard(batch) for r in range(3)]
    assert [s.tolist() for s in shards] == [t.tolist() for t in batch.tensor_split(3)]
    assert torch.equal(Ranks().shard(batch), batch) and Ranks().part(11) == slice(0, 11)


def test_slurm_dry_run_prints_the_sbatch_script(cli):
    result = cli("sweep", "norm.sync=true,false", "nproc=2", "--launcher", "submitit_slurm",
                 "hydra.launcher.gpus_per_node=2", "hydra.launcher.partition=gpu", "hydra.launcher.mem_gb=16",
                 "--dry-run")
    out = result.stdout
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --partition=gpu", "#SBATCH --mem=16GB", "-m submitit.core._submit"):
        assert line in out, (line, out)
    assert out.index("2 jobs") < out.index("#!/bin/bash") and "note:" not in out
    assert not (cli.out / "sweeps").exists()  # a dry run writes nothing

    noted = cli("sweep", "norm.sync=true,false", "nproc=4", "--launcher", "submitit_slurm",
                "hydra.launcher.gpus_per_node=2", "hydra.launcher.tasks_per_node=4", "--dry-run").stdout
    assert "note: hydra.launcher.tasks_per_node=4" in noted and "set hydra.launcher.gpus_per_node=4" in noted
