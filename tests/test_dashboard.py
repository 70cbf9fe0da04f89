"""`bnexp tensorboard`: a real TensorBoard over a real (tiny) sweep, read over HTTP, stopped with
SIGINT; the HParams table; port handling."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import TINY as SHARED_TINY

from bnexp.core.errors import BnexpError
from bnexp.tracking.hparams import FINAL_TAGS, write_sweep_experiment
from bnexp.views.dashboard import DEFAULT_PORT, choose_port

TINY = [*SHARED_TINY, "hist_every_steps=0"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, payload: dict | None = None):
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def poll(fetch, ready, timeout: float = 120.0):
    """``fetch()`` until ``ready(result)``; the last result (or error) on timeout."""
    deadline, result = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            result = fetch()
            if ready(result):
                return result
        except OSError as exc:
            result = exc
        time.sleep(0.5)
    raise AssertionError(f"not ready after {timeout} s: {result}")


def test_tensorboard_serves_a_sweep_and_stops_on_ctrl_c(cli):
    cli("sweep", "norm=none,custom", *TINY)
    (sweep_dir,) = (cli.out / "sweeps").iterdir()
    cli("train", *TINY, "model=lenet", "-q")  # not selected: must not appear
    port = free_port()
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(cli.out)}
    server = subprocess.Popen([sys.executable, "-m", "bnexp", "tensorboard", sweep_dir.name[:22], "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    base = f"http://127.0.0.1:{port}"
    try:
        plugins = poll(lambda: get(f"{base}/data/plugins_listing"), lambda p: p["scalars"]["enabled"])
        assert plugins["hparams"]["enabled"]
        tags = poll(lambda: get(f"{base}/data/plugin/scalars/tags"), lambda t: len(t) == 2)
        assert sorted(tags) == ["0-mlp-none", "1-mlp-custom"]  # one sweep shown: named by its jobs
        runs = get(f"{base}/data/runs")
        assert "." not in runs and "sweep" in runs  # the HParams experiment is no stray run named "."
        for run_tags in tags.values():
            assert {"train/loss", "val/acc", "final/best_val_acc"} <= set(run_tags)
        # HParams: one table, one row per job, the swept key first, final metrics as metrics
        experiment = get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        assert experiment["hparamInfos"][0]["name"] == "norm.kind" and experiment["hparamInfos"][0]["differs"]
        assert [m["name"]["tag"] for m in experiment["metricInfos"]] == list(FINAL_TAGS)
        groups = get(f"{base}/data/plugin/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 100,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [{"hparam": "norm.kind", "includeInResult": True},
                          {"metric": {"tag": "final/val_acc", "group": ""}, "includeInResult": True}]})
        assert sorted(g["hparams"]["norm.kind"] for g in groups["sessionGroups"]) == ["custom", "none"]
        for group in groups["sessionGroups"]:
            assert {m["name"]["tag"] for m in group["metricValues"]} == set(FINAL_TAGS)
        # a job that starts while the dashboard is up appears too
        shutil.copytree(sweep_dir / f"{sweep_dir.name}-0-mlp-none", sweep_dir / f"{sweep_dir.name}-2-mlp-none")
        poll(lambda: get(f"{base}/data/plugin/scalars/tags"), lambda t: "2-mlp-none" in t)
    finally:
        server.send_signal(signal.SIGINT)
        stdout, stderr = server.communicate(timeout=60)
    assert server.returncode == 0, stderr
    assert f"http://127.0.0.1:{port}/" in stdout and "2 runs" in stdout and "TensorBoard stopped" in stdout
    with socket.socket() as sock:  # TensorBoard itself is gone too
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_port_in_use_is_a_clear_error(bnexp):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = bnexp("tensorboard", "--port", str(port), check=False)
    assert result.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_default_port_moves_on_and_says_so():
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            busy.bind(("127.0.0.1", DEFAULT_PORT))
            busy.listen()
        except OSError:
            pass  # already taken by someone else: just as good
        port, note = choose_port("127.0.0.1", None)
    assert port != DEFAULT_PORT and note == f"port {DEFAULT_PORT} is in use; using {port}"
    with pytest.raises(BnexpError, match="not a known host"):
        choose_port("no-such-host.invalid", None)


def test_unknown_selection_is_an_error(bnexp):
    result = bnexp("tensorboard", "nope", check=False)
    assert result.returncode == 2 and "no run or sweep matches 'nope'" in result.stderr


def test_sweep_experiment_leads_with_the_swept_keys(tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata

    params = {"model.name": "mlp", "norm.kind": "none", "norm.eps": 1e-5, "optimizer.lr": 0.1, "epochs": 3}
    write_sweep_experiment(tmp_path, params, ["optimizer.lr", "norm", "no.such.key"])
    assert not list(tmp_path.glob("events.out.tfevents.*"))  # not a stray run named "."
    (event_file,) = tmp_path.glob("sweep/events.out.tfevents.*")
    (content,) = [v.metadata.plugin_data.content for e in EventFileLoader(str(event_file)).Load()
                  for v in e.summary.value if v.tag == metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(content)
    assert [(h.name, h.differs) for h in experiment.hparam_infos] == [
        ("optimizer.lr", True), ("norm.kind", True), ("model.name", False), ("epochs", False), ("status", False)]
    assert [m.name.tag for m in experiment.metric_infos] == list(FINAL_TAGS)


def test_a_killed_dashboard_takes_tensorboard_with_it(bnexp, tmp_path):
    """kill -9 of `bnexp tensorboard` cannot run its clean-up: the TensorBoard child must still die
    (PR_SET_PDEATHSIG) and the next dashboard removes the orphaned temporary directory."""
    import tempfile

    from conftest import fake_run

    from bnexp.views.dashboard import TEMP_PREFIX, private_dir

    fake_run(bnexp.out, "20261120-100000-mlp-custom-aaaa")
    port = free_port()
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(bnexp.out)}
    server = subprocess.Popen([sys.executable, "-m", "bnexp", "tensorboard", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        poll(lambda: get(f"http://127.0.0.1:{port}/data/plugins_listing"), lambda p: "scalars" in p)
        children = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
        assert children, "TensorBoard runs as a child process"
        (leftover,) = Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}{server.pid}-*")
    finally:
        server.kill()
        server.wait(timeout=30)
    deadline = time.monotonic() + 20
    while any(os.path.exists(f"/proc/{pid}") for pid in children):
        assert time.monotonic() < deadline, "TensorBoard outlived its parent"
        time.sleep(0.1)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    assert leftover.is_dir()
    with private_dir():
        assert not leftover.exists()
