"""The run store behaves like a database, tried as an attacker and as an unlucky user would:
nothing executes from a checkpoint, nothing outside the output directory is touched, a dead run
never looks alive, one writer per run, one bad file never hides the others, a full disk loses
nothing it had."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, fake_run, on_tiny_disk, one_line_error

LONG = ["epochs=400", "dataset.limit_train=256", "dataset.limit_val=64", "batch_size=32", "hist_every_steps=0",
        "log_every_steps=4", "threads=1", "-q"]


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def set_status(run_dir: Path, status: str) -> None:
    data = record(run_dir)
    data["status"] = status
    (run_dir / "run.json").write_text(json.dumps(data))


def only_run(out: Path) -> Path:
    (run_dir,) = (out / "runs").iterdir()
    return run_dir


def wait_for(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start(out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(out), "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "bnexp", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def status_of(cli, run_id: str) -> dict:
    (found,) = [r for r in json.loads(cli("runs", "--json").stdout) if r["id"] == run_id]
    return found


# --- security ---------------------------------------------------------------------------------


class _Planted:
    """Unpickling this would run a shell command that leaves a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_planted_pickle_in_a_checkpoint_is_refused_and_never_run(cli, tmp_path):
    import torch

    cli("train", *TINY, "epochs=2")
    run_dir = only_run(cli.out)
    set_status(run_dir, "interrupted")
    marker = tmp_path / "pwned"
    torch.save({"model": _Planted(marker)}, run_dir / "checkpoint.pt")
    result = cli("train", f"resume={run_dir.name}", "epochs=3", check=False)
    one_line_error(result, "checkpoint.pt: refused to load", "tampered")
    assert not marker.exists(), "the planted pickle ran"
    assert record(run_dir)["status"] == "interrupted"  # a failed resume changes nothing


@pytest.mark.parametrize("damage, message", [
    (lambda run: (run / "checkpoint.pt").write_bytes(os.urandom(4000)), "damaged checkpoint"),
    (lambda run: (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:5000]), "damaged checkpoint"),
    (lambda run: (run / "metrics.jsonl").write_text("{not json\n" + (run / "metrics.jsonl").read_text()),
     "metrics.jsonl: line 1 is not a metrics record"),
    (lambda run: (run / "config.yaml").write_text("model: [unclosed\n"), "config.yaml: not valid YAML"),
])
def test_a_failed_resume_leaves_the_record_as_it_was(cli, damage, message):
    cli("train", *TINY, "epochs=2")
    run_dir = only_run(cli.out)
    set_status(run_dir, "interrupted")
    before = (run_dir / "run.json").read_text()
    damage(run_dir)
    one_line_error(cli("train", f"resume={run_dir.name}", "epochs=3", check=False), message)
    assert (run_dir / "run.json").read_text() == before


def test_a_torn_last_metrics_line_is_dropped_on_resume(cli):
    cli("train", *TINY, "epochs=2")
    run_dir = only_run(cli.out)
    set_status(run_dir, "interrupted")
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "st')  # what a kill -9 in the middle of a write leaves
    cli("train", f"resume={run_dir.name}", "epochs=3", "-q")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines) and record(run_dir)["status"] == "completed"


def test_over_long_names_are_refused_up_front(cli):
    one_line_error(cli("train", "name=" + "x" * 300, check=False), "300 characters; at most 64")
    one_line_error(cli("sweep", "norm=none,custom", "--name", "y" * 300, check=False), "at most 64")
    one_line_error(cli("train", "name=-rf", check=False), "name=-rf")
    assert not cli.out.exists()


def test_rm_removes_a_symlink_never_its_target(cli, tmp_path):
    elsewhere = fake_run(tmp_path / "precious", "20261120-100000-mlp-custom-aaaa")
    link = cli.out / "runs" / "20261121-100000-mlp-custom-link"
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere, target_is_directory=True)
    result = cli("rm", str(link), "--yes")
    assert "only the link is removed" in result.stdout
    assert not link.is_symlink() and (elsewhere / "run.json").is_file()


def test_rm_of_a_directory_outside_the_output_dir_says_so(cli, tmp_path):
    outside = fake_run(tmp_path / "elsewhere", "20261120-100000-mlp-none-bbbb")
    result = subprocess.run([sys.executable, "-m", "bnexp", "rm", str(outside)], input="n\n", text=True,
                            capture_output=True, env={**os.environ, "BNEXP_OUTPUT_DIR": str(cli.out),
                                                      "COLUMNS": "200"}, timeout=120)
    assert result.returncode == 1 and "removed because you named it" in result.stdout and outside.is_dir()


def test_report_refuses_to_write_through_a_planted_symlink(cli, tmp_path):
    run_dir = fake_run(cli.out, "20261120-100000-mlp-custom-aaaa")
    victim = tmp_path / "victim"
    victim.mkdir()
    (run_dir / "report").symlink_to(victim, target_is_directory=True)
    one_line_error(cli("report", str(run_dir), check=False), "symlink", "refusing to write through it")
    assert list(victim.iterdir()) == []


def test_report_replaces_planted_file_links_instead_of_following_them(cli, tmp_path):
    run_dir = fake_run(cli.out, "20261120-100000-mlp-custom-aaaa")
    target = tmp_path / "passwd"
    target.write_text("keep me")
    (run_dir / "report").mkdir()
    (run_dir / "report" / "report.md").symlink_to(target)
    cli("report", str(run_dir))
    assert target.read_text() == "keep me" and not (run_dir / "report" / "report.md").is_symlink()


# --- one bad file never hides the others ------------------------------------------------------


HOSTILE = {
    "a-list": b"[]",
    "b-null": b"null",
    "c-types": json.dumps({"id": "x", "status": "completed", "duration_s": "long", "metrics": {}}).encode(),
    "d-metric": json.dumps({"id": "x", "status": "completed", "metrics": {"val_acc": "high"}}).encode(),
    "e-binary": b"\xff\xfe\x00garbage",
    "f-empty": b"",
}


def test_hostile_run_files_are_listed_as_unreadable_and_hide_nothing(bnexp):
    root = bnexp.out
    good = fake_run(root, "20261120-100000-mlp-custom-good")
    for name, content in HOSTILE.items():
        bad = root / "runs" / f"20261121-{name}"
        bad.mkdir(parents=True)
        (bad / "run.json").write_bytes(content)
    fifo = root / "runs" / "20261121-g-fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "run.json")  # reading it naively blocks forever
    listed = {r["id"]: r for r in json.loads(bnexp("runs", "--json", timeout=60).stdout)}
    assert listed[good.name]["status"] == "completed"
    assert len(listed) == len(HOSTILE) + 2
    for run_id, entry in listed.items():
        if run_id != good.name:
            assert entry["status"] == "unreadable" and "run.json" in entry["message"], entry
    assert "not a regular file" in listed["20261121-g-fifo"]["message"]
    assert "field 'duration_s'" in listed["20261121-c-types"]["message"]
    table = bnexp("runs", timeout=60).stdout
    assert good.name in table and "unreadable" in table
    for args in (["show", "20261121-a-list"], ["show", "20261121-g-fifo"]):
        result = bnexp(*args, timeout=60)  # shown as unreadable, with the reason, not a crash
        assert "unreadable" in result.stdout and "Traceback" not in result.stderr


def test_bad_config_files_are_one_line_or_skipped(cli, tmp_path):
    good = fake_run(cli.out, "20261120-100000-mlp-custom-aaaa")
    bad = fake_run(cli.out, "20261120-110000-mlp-none-bbbb", norm="none")
    (bad / "config.yaml").write_text("model: [unclosed\n")
    shown = cli("show", bad.name).stdout
    assert "config unreadable" in shown and "config.yaml: not valid YAML" in shown
    compared = cli("compare", good.name, bad.name)
    assert "unreadable" in compared.stdout and "config.yaml" in compared.stdout
    broken = fake_run(cli.out, "20261120-120000-mlp-none-cccc", norm="none")
    (broken / "run.json").write_text("{")
    reported = cli("report", str(cli.out), "--out", str(tmp_path / "r"))
    assert "skipped" in reported.stderr and "20261120-120000-mlp-none-cccc/run.json" in reported.stderr
    assert "report of 2 run(s)" in reported.stdout


# --- one writer, liveness, signals ------------------------------------------------------------


@pytest.mark.slow
def test_one_writer_per_run_and_dead_runs_never_look_alive(tmp_path, cli):
    """A second writer is refused, rm refuses a training run, SIGTERM interrupts cleanly with the
    resume command, a SIGKILLed writer shows as dead, and rm --force stops a writer first."""
    out = cli.out
    first = start(out, "train", *LONG, "name=victim")
    run_dir = wait_for(lambda: next(iter(out.glob("runs/*-victim-*/checkpoint.pt")), None), what="checkpoint").parent
    busy = cli("train", "resume=victim", check=False)
    one_line_error(busy, "is being written by pid", str(first.pid))
    one_line_error(cli("rm", "victim", "--yes", check=False), "refusing to delete it")
    assert status_of(cli, run_dir.name)["status"] == "running"

    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130 and f"resume={run_dir}" in stderr.strip().splitlines()[-1]
    assert record(run_dir)["status"] == "interrupted" and (run_dir / "checkpoint.pt").is_file()

    second = start(out, "train", "resume=victim", "epochs=600", "-q")
    wait_for(lambda: (record(run_dir)["owner"] or {}).get("pid") == second.pid, what="resume")
    time.sleep(0.5)
    second.kill()
    second.wait(timeout=30)
    dead = status_of(cli, run_dir.name)
    assert dead["status"] == "dead" and dead["recorded_status"] == "running"
    assert f"resume={run_dir.name}" in dead["message"]
    assert "dead" in cli("show", "victim").stdout

    third = start(out, "train", "resume=victim", "-q")
    wait_for(lambda: (record(run_dir)["owner"] or {}).get("pid") == third.pid, what="second resume")
    cli("rm", "victim", "--yes", "--force")
    assert third.wait(timeout=60) == 130, third.communicate()
    assert not run_dir.exists() and not any(p.name == "victim" for p in (out / "runs").iterdir())


@pytest.mark.slow
def test_ctrl_c_prints_the_resume_command(tmp_path):
    out = tmp_path / "outputs"
    process = start(out, "train", *LONG)
    wait_for(lambda: any(out.glob("runs/*/checkpoint.pt")), what="checkpoint")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: stopped at step") and "bnexp train resume=" in last


# --- a full disk --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_full_disk_fails_the_run_cleanly(tmp_path):
    mid_run = on_tiny_disk(tmp_path, "400k", ["train", "output_dir={disk}/outputs", "epochs=3", "-q"])
    assert mid_run["rc"] == 2
    (line,) = mid_run["stderr"].strip().splitlines()
    assert line.startswith("error: cannot write") and "checkpoint.pt: No space left on device" in line
    assert not any(".tmp" in name for name in mid_run["files"]), mid_run["files"]
    (run_json,) = [text for name, text in mid_run["files"].items() if name.endswith("run.json")]
    saved = json.loads(run_json)
    assert saved["status"] == "failed" and "No space left on device" in saved["message"]

    nothing = on_tiny_disk(tmp_path, "8k", ["train", "output_dir={disk}/outputs", "-q"])
    assert nothing["rc"] == 2 and "No space left on device" in nothing["stderr"]
    assert not [d for d in nothing["dirs"] if d.startswith("outputs/runs/")], "an empty run directory was left"


# --- the registry at scale ------------------------------------------------------------------------


def test_many_references_resolve_in_one_walk(tmp_path, monkeypatch):
    import bnexp.store.catalog as catalog

    root = tmp_path / "outputs"
    ids = [f"20261122-{i:06d}-mlp-custom-{i:04x}" for i in range(200)]
    for run_id in ids:
        fake_run(root, run_id)
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(catalog.os, "scandir", lambda path: (listed.append(path), real_scandir(path))[1])
    found = catalog.expand([i[:-5] for i in ids[:50]], root)
    assert len(found) == 50
    assert len(listed) <= len(ids) + 3  # every directory listed once: one walk, not one per reference


def test_the_record_cache_never_serves_a_stale_or_hostile_record(tmp_path, monkeypatch):
    import sqlite3

    from bnexp.store import index as index_module
    from bnexp.store.index import INDEX_FILE
    from bnexp.store.registry import load_runs

    monkeypatch.setattr(index_module, "SETTLE_NS", -10**18)  # cache at once (normally after 2 s)
    root = tmp_path / "outputs"
    run_dir = fake_run(root, "20261120-100000-mlp-custom-aaaa")
    assert [r.status for r in load_runs(root)] == ["completed"] and (root / INDEX_FILE).is_file()
    set_status(run_dir, "interrupted")  # a new file: the cached record must not be served
    assert [r.status for r in load_runs(root)] == ["interrupted"]
    with sqlite3.connect(root / INDEX_FILE) as db:  # a tampered index: checked when used, the file read instead
        (text,) = db.execute("SELECT record FROM runs").fetchone()
        db.execute("UPDATE runs SET record = ?", (json.dumps({**json.loads(text), "duration_s": "forged"}),))
    (record,) = load_runs(root)
    assert record.status == "interrupted" and record.duration_s == 12.5
    for junk in (b"\xff\x00garbage", b"[]", b'{"version": 1, "records": []}'):
        (root / INDEX_FILE).write_bytes(junk)
        assert [r.status for r in load_runs(root)] == ["interrupted"]  # rebuilt from the run itself
    (root / INDEX_FILE).unlink()
    os.mkfifo(root / INDEX_FILE)  # never blocks
    assert [r.status for r in load_runs(root)] == ["interrupted"]
