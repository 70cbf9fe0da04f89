"""A run directory from anywhere is safe to open (issue 17): runs and sweeps are untrusted input.

Each test plants what an attacker or an unlucky user would (a symlink, a hostile override in a
record, a file that never ends, a signal at the worst moment) and checks that nothing executes,
nothing outside the output directory is written, no file hangs or hides the registry, and every
refusal is one line naming the file."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, fake_run, on_tiny_disk, one_line_error


def only_run(out: Path) -> Path:
    (run_dir,) = (out / "runs").iterdir()
    return run_dir


def set_status(run_dir: Path, status: str) -> None:
    data = json.loads((run_dir / "run.json").read_text())
    data["status"] = status
    (run_dir / "run.json").write_text(json.dumps(data))


@pytest.fixture
def trained(cli):
    """A finished two-epoch run, marked interrupted so it can be resumed."""
    cli("train", *TINY, "epochs=2", "-q")
    run_dir = only_run(cli.out)
    set_status(run_dir, "interrupted")
    return run_dir


# --- code execution and writes outside the output directory ---------------------------------------


@pytest.mark.parametrize("planted", [".checkpoint.pt.tmp", ".lock"])
def test_resume_never_writes_through_a_planted_link(cli, trained, tmp_path, planted):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (trained / planted).unlink(missing_ok=True)
    (trained / planted).symlink_to(victim)
    result = cli("train", f"resume={trained.name}", "epochs=3", "-q", check=False)
    errors = [line for line in result.stderr.splitlines() if not line.startswith("resuming ")]
    assert result.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    assert str(trained / planted) in errors[0] and "symbolic link" in errors[0]
    assert victim.read_text() == "precious\n"


def test_a_dangling_metrics_link_is_never_created_outside(cli, trained, tmp_path):
    outside = tmp_path / "outside" / "created.jsonl"
    outside.parent.mkdir()
    (trained / "metrics.jsonl").unlink()
    (trained / "metrics.jsonl").symlink_to(outside)
    result = cli("train", f"resume={trained.name}", "epochs=3", "-q", check=False)
    assert result.returncode != 0 and "metrics.jsonl" in result.stderr and "symbolic link" in result.stderr
    assert not outside.exists()


def test_recalibrate_never_writes_through_a_planted_temporary_link(cli, trained, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (trained / ".checkpoint.recalibrated.pt.tmp").symlink_to(victim)
    one_line_error(cli("recalibrate", trained.name, check=False), "symbolic link")
    assert victim.read_text() == "precious\n"


def test_tag_never_creates_a_file_through_a_planted_labels_lock(cli, tmp_path):
    run_dir = fake_run(cli.out, "20261120-100000-mlp-none-aaaa")
    target = tmp_path / "created-by-tag"
    (run_dir / ".labels.lock").symlink_to(target)
    one_line_error(cli("tag", run_dir.name, "keep", check=False), ".labels.lock", "symbolic link")
    assert not target.exists()


def test_restore_only_puts_an_entry_back_inside_the_output_dir(cli, tmp_path):
    run_dir = fake_run(cli.out, "20261120-100000-mlp-none-aaaa")
    cli("rm", run_dir.name, "--yes")
    (entry,) = (cli.out / ".trash").iterdir()
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True)
    origin = json.loads((entry / "origin.json").read_text())
    origin["origin"] = str(ssh / "authorized_keys")
    (entry / "origin.json").write_text(json.dumps(origin))
    result = cli("restore", run_dir.name, check=False)
    one_line_error(result, "outside")
    assert not (ssh / "authorized_keys").exists()
    # an entry that is not a run or sweep directory is not restored either, even to a place inside
    origin["origin"] = str(run_dir)
    (entry / "origin.json").write_text(json.dumps(origin))
    payload = entry / run_dir.name
    (payload / "run.json").unlink()
    one_line_error(cli("restore", run_dir.name, check=False), "not a run or sweep")
    assert not run_dir.exists()


def test_environment_resolvers_are_never_resolved_from_overrides_or_saved_configs(cli, trained, monkeypatch):
    monkeypatch.setenv("BNEXP_TEST_SECRET", "hunter2")
    one_line_error(cli("train", *TINY, "dataset.root=${oc.env:BNEXP_TEST_SECRET}", check=False),
                   "dataset.root", "oc.env")
    assert len(list((cli.out / "runs").iterdir())) == 1  # nothing new written
    config = (trained / "config.yaml").read_text()
    (trained / "config.yaml").write_text(config.replace("description: ''", "description: ${oc.env:BNEXP_TEST_SECRET}"))
    result = cli("train", f"resume={trained.name}", "epochs=3", "-q", check=False)
    one_line_error(result, "config.yaml", "description")
    assert "hunter2" not in (trained / "config.yaml").read_text()
    assert "hunter2" not in cli("show", trained.name).stdout


def test_an_interpolation_loop_is_one_line_naming_the_key(cli):
    result = cli("train", *TINY, "optimizer.lr=${optimizer.momentum}", "optimizer.momentum=${optimizer.lr}",
                 check=False)
    one_line_error(result, "optimizer.")
    assert "InterpolationResolutionError" not in result.stderr


def test_export_out_writes_where_the_user_points(cli, tmp_path):
    run_dir = fake_run(cli.out, "20261120-100000-mlp-none-aaaa")
    (run_dir / "metrics.jsonl").write_text('{"kind": "epoch", "epoch": 1, "step": 4, "val_acc": 0.5}\n')
    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    cli("export", run_dir.name, "--out", str(link))
    assert link.is_symlink() and "val_acc" in target.read_text()  # the link the user named is followed

    private = tmp_path / "private.csv"
    private.write_text("old\n")
    private.chmod(0o600)
    cli("export", run_dir.name, "--out", str(private))
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and "val_acc" in private.read_text()

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line_error(cli("export", run_dir.name, "--out", str(fifo), check=False), "--out", "FIFO")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    one_line_error(cli("export", run_dir.name, "--out", "/dev/null", check=False), "--out", "not a regular file")


@pytest.mark.parametrize("field, planted", [
    ("hydra_overrides", "+hydra.callbacks.x._target_=builtins.open"),
    ("overrides", "+hydra.callbacks.x._target_=builtins.open"),
    ("overrides", "+model._target_=builtins.open"),
])
def test_sweep_resume_runs_no_code_named_by_its_record(cli, tmp_path, field, planted):
    cli("sweep", "norm=none,custom", *TINY, "hist_every_steps=0")
    (sweep_dir,) = (cli.out / "sweeps").iterdir()
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    marker = tmp_path / "pwned"
    key = planted.split("=")[0].rsplit(".", 1)[0]
    sweep[field] = sweep[field] + [planted, f"{key}.file={marker}", f"{key}.mode=w"]
    sweep["status"] = "interrupted"
    (sweep_dir / "sweep.json").write_text(json.dumps(sweep))
    for job in sweep_dir.glob("*/run.json"):
        set_status(job.parent, "interrupted")
    result = cli("sweep", "--resume", sweep_dir.name, check=False)
    one_line_error(result, "sweep.json", planted.split("=")[0].lstrip("+"), "refused")
    assert not marker.exists(), "an override from sweep.json ran code"


def test_sweep_resume_never_writes_through_links_planted_in_the_sweep(cli, tmp_path):
    """What Hydra and the sweep write on --resume (multirun.yaml, each job's Hydra config folder)
    never goes through a link planted in the sweep directory."""
    cli("sweep", "norm=none,custom", *TINY, "hist_every_steps=0")
    (sweep_dir,) = (cli.out / "sweeps").iterdir()
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    sweep["status"] = "interrupted"
    (sweep_dir / "sweep.json").write_text(json.dumps(sweep))
    victim, outside = tmp_path / "victim.yaml", tmp_path / "outside"
    victim.write_text("precious\n")
    outside.mkdir()
    (sweep_dir / "multirun.yaml").unlink()
    (sweep_dir / "multirun.yaml").symlink_to(victim)
    for job in sweep_dir.glob("*/run.json"):
        set_status(job.parent, "interrupted")
        shutil.rmtree(job.parent / ".hydra", ignore_errors=True)
        (job.parent / ".hydra").symlink_to(outside, target_is_directory=True)
    cli("sweep", "--resume", sweep_dir.name, check=False)
    assert victim.read_text() == "precious\n" and not list(outside.iterdir())
    assert "hydra/job_logging" in one_line_error(cli("sweep", "norm=none,custom", *TINY, "hydra/job_logging=default",
                                                     check=False), "hydra/job_logging=default", "none")


# --- terminal injection ---------------------------------------------------------------------------

ESC = "\x1b]0;pwned\x07\x1b[2J\x1b]52;c;ZWNobyBwd25lZA==\x07"


def test_control_characters_from_files_are_shown_escaped(cli):
    run_dir = fake_run(cli.out, "20261120-100000-mlp-none-aaaa")
    data = json.loads((run_dir / "run.json").read_text())
    data.update(name="evil" + ESC, message="boom" + ESC, overrides=[f"dataset.root={ESC}"], status="failed")
    (run_dir / "run.json").write_text(json.dumps(data))
    (run_dir / "labels.json").write_text(json.dumps({"tags": ["t" + ESC], "note": "n" + ESC}))
    outputs = [cli("runs"), cli("runs", "--wide"), cli("show", run_dir.name), cli("tag", run_dir.name),
               cli("note", run_dir.name)]
    for result in outputs:
        assert "\x1b" not in result.stdout + result.stderr and "\x07" not in result.stdout + result.stderr
    assert "\\x1b]0;pwned" in outputs[2].stdout and "\\x1b" in outputs[4].stdout


def test_overrides_with_control_characters_are_refused(cli):
    result = cli("train", *TINY, "dataset.root='\x1b[41mred'", check=False)
    one_line_error(result, "control characters", "\\x1b")
    assert "\x1b" not in result.stderr and not cli.out.exists()


# --- files that hang, exhaust memory or hide everything ---------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_files_are_unreadable_and_hide_nothing(cli):
    import sqlite3

    from bnexp.store.index import INDEX_FILE, SCHEMA_VERSION

    good = fake_run(cli.out, "20261120-100000-mlp-none-aaaa")
    bad = fake_run(cli.out, "20261120-100000-mlp-none-bbbb")
    labelled = fake_run(cli.out, "20261120-100000-mlp-none-cccc")
    (bad / "run.json").write_text('{"id": "x", "extra": ' + nested(100_000) + "}")
    (labelled / "labels.json").write_text('{"tags": ' + nested(100_000) + "}")
    cli("runs", "--json")  # builds the index
    (cli.out / INDEX_FILE).write_text('{"version": 1, "records": ' + nested(100_000) + "}")
    listed = {r["id"]: r for r in json.loads(cli("runs", "--json").stdout)}
    assert listed[good.name]["status"] == "completed" and listed[bad.name]["status"] == "unreadable"
    assert "nested" in listed[bad.name]["message"] and "labels.json" in listed[labelled.name]["labels_error"]
    with sqlite3.connect(cli.out / INDEX_FILE) as db:  # the damaged index was rebuilt
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    # a deep object just inside the recursion limit is refused too: it would break what prints it
    (bad / "run.json").write_text('{"id": "x", "repro": {"a": ' + nested(900) + "}}")
    assert {r["id"]: r for r in json.loads(cli("runs", "--json").stdout)}[bad.name]["status"] == "unreadable"


def test_deeply_nested_sweep_and_metrics_lines_are_one_line(cli):
    run_dir = fake_run(cli.out, "20261120-100000-mlp-none-aaaa")
    (run_dir / "metrics.jsonl").write_text('{"kind": "epoch", "x": ' + nested(100_000) + "}\n" + '{"kind": "epoch"}\n')
    one_line_error(cli("show", run_dir.name, "--curves", check=False), "metrics.jsonl", "line 1")
    one_line_error(cli("curves", run_dir.name, check=False), "metrics.jsonl")
    sweep_dir = cli.out / "sweeps" / "20261120-100000-sweep-eeee"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text('{"id": "s", "jobs": ' + nested(100_000) + "}")
    one_line_error(cli("show", sweep_dir.name, check=False), "sweep.json")


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9)) + \
    "model: {name: mlp}\n"


def test_a_yaml_alias_bomb_is_refused_quickly(cli):
    import time

    first = fake_run(cli.out, "20261120-100000-mlp-none-aaaa")
    second = fake_run(cli.out, "20261120-100000-mlp-none-bbbb")
    (first / "config.yaml").write_text(BOMB)
    started = time.monotonic()
    shown = cli("show", first.name)
    compared = cli("compare", first.name, second.name, check=False)
    assert time.monotonic() - started < 10
    assert "config.yaml" in shown.stdout + shown.stderr and "expands to more than" in shown.stdout + shown.stderr
    assert "config.yaml" in compared.stdout + compared.stderr and "MemoryError" not in compared.stderr


def test_a_huge_sparse_metrics_file_is_streamed_not_loaded(cli):
    run_dir = fake_run(cli.out, "20261120-100000-mlp-none-aaaa")
    with open(run_dir / "metrics.jsonl", "wb") as handle:
        handle.write(b'{"kind": "epoch", "epoch": 1, "step": 4, "val_acc": 0.5}\n')
        handle.truncate(3 << 30)  # 3 GB of holes
    for args in (("export", run_dir.name), ("show", run_dir.name, "--curves")):
        one_line_error(cli(*args, check=False), "metrics.jsonl", "line 2", "longer than")


@pytest.mark.parametrize("change, field", [
    (lambda s: s["jobs"].append({"id": "j", "dir": 5}), "jobs"),
    (lambda s: s.update(owner="me", status="running"), "owner"),
    (lambda s: s.update(swept=3), "swept"),
])
def test_a_sweep_record_of_wrong_types_is_one_line(cli, change, field):
    sweep_dir = cli.out / "sweeps" / "20261120-100000-sweep-eeee"
    sweep_dir.mkdir(parents=True)
    sweep = {"id": sweep_dir.name, "status": "completed", "kind": "grid", "overrides": ["norm=none,custom"],
             "hydra_overrides": ["hydra/launcher=basic"], "launcher": "basic", "swept": ["norm"], "jobs": []}
    change(sweep)
    (sweep_dir / "sweep.json").write_text(json.dumps(sweep))
    one_line_error(cli("show", sweep_dir.name, check=False), "sweep.json", field)
    one_line_error(cli("sweep", "--resume", sweep_dir.name, check=False), "sweep.json", field)


def _checkpoint_variants():
    import torch

    def edit(fn):
        def apply(path):
            data = torch.load(path, weights_only=True)
            fn(data)
            torch.save(data, path)
        return apply

    return [
        ("rng", edit(lambda d: d.update(rng=[1, 2, 3])), "rng"),
        ("model-list", edit(lambda d: d.update(model=[1, 2])), "model"),
        ("optimizer", edit(lambda d: d["optimizer"]["state"].update({0: {"momentum_buffer": "x"}})), "optimizer"),
        ("tensor", lambda path: torch.save(torch.zeros(3), path), "not a bnexp checkpoint"),
        ("passwd", lambda path: (path.unlink(), path.symlink_to("/etc/passwd")), "symbolic link"),
        ("negative-epoch", edit(lambda d: d["progress"].update(epoch=-999999)), "progress.epoch"),
    ]


def test_random_bytes_as_a_checkpoint_are_always_a_damaged_checkpoint(tmp_path):
    """Random bytes read as an old-style pickle fail in many ways (an unknown opcode, a memo key
    that is not there: ``KeyError: 248``); every one is the same one-line "damaged checkpoint"."""
    import random
    import warnings

    from bnexp.core.errors import BnexpError
    from bnexp.engine.checkpoint import load_checkpoint

    rng, path = random.Random(0), tmp_path / "checkpoint.pt"
    for size in (1, 2, 7, 64, 4000) * 40:
        path.write_bytes(rng.randbytes(size))
        with pytest.raises(BnexpError) as caught, warnings.catch_warnings():
            warnings.simplefilter("error")  # and nothing else is printed
            load_checkpoint(path)
        message = str(caught.value)
        assert "\n" not in message and ("damaged checkpoint" in message or "refused to load" in message), message


@pytest.mark.parametrize("variant", range(6), ids=["rng", "model-list", "optimizer", "tensor", "passwd",
                                                   "negative-epoch"])
def test_a_checkpoint_of_wrong_structure_is_one_line_and_changes_nothing(cli, trained, variant):
    _, damage, fragment = _checkpoint_variants()[variant]
    before = (trained / "run.json").read_text()
    damage(trained / "checkpoint.pt")
    result = cli("train", f"resume={trained.name}", "epochs=3", "-q", check=False)
    one_line_error(result, "checkpoint.pt", fragment)
    assert (trained / "run.json").read_text() == before


def _idx(tmp_path: Path, kind: str) -> Path:
    import gzip
    import zlib

    path = tmp_path / f"{kind}-images-idx3-ubyte"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "negative":
        path.write_bytes(bytes([0, 0, 8, 3]) + (-5).to_bytes(4, "big", signed=True) + (28).to_bytes(4, "big") * 2)
    elif kind == "bomb":  # declares 2**31 x 2 x 2 values; compresses to a few KB
        header = bytes([0, 0, 8, 3]) + (2**31 - 1).to_bytes(4, "big") + (2).to_bytes(4, "big") * 2
        compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
        body = compressor.compress(header) + compressor.compress(bytes(1 << 24)) + compressor.flush()
        path = path.with_suffix(".gz")
        path.write_bytes(body)
        assert gzip.decompress(body)[:4] == header[:4]
    return path


@pytest.mark.parametrize("kind, fragment", [("dev-zero", "not a regular file"), ("fifo", "not a regular file"),
                                            ("bomb", "which no IDX dataset holds"),
                                            ("negative", "which no IDX dataset holds")])
def test_hostile_idx_files_are_refused_before_allocating(cli, tmp_path, kind, fragment):
    import time

    import numpy as np
    from conftest import write_idx

    labels = tmp_path / "labels-idx1-ubyte"
    write_idx(labels, np.arange(10) % 2, compress=False)
    images = "/dev/zero" if kind == "dev-zero" else str(_idx(tmp_path, kind))
    started = time.monotonic()
    result = cli("train", "dataset=idx", f"dataset.images={images}", f"dataset.labels={labels}", "epochs=1",
                 check=False)
    assert time.monotonic() - started < 15
    one_line_error(result, fragment)


def test_wrong_typed_metrics_and_norm_params_are_one_line_or_skipped(cli):
    run_dir = fake_run(cli.out, "20261120-100000-mlp-none-aaaa")
    other = fake_run(cli.out, "20261120-100000-mlp-none-bbbb")
    lines = ['{"kind": "epoch", "epoch": 1, "step": 4, "val_acc": 0.5, "val_loss": 1.0}',
             '{"kind": "epoch", "epoch": 2, "step": 8, "val_acc": "high", "val_loss": 1.0}',
             '{"kind": "epoch", "epoch": 3, "step": 12, "val_acc": 0.7, "val_loss": 0.9}']
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    for args in (("show", run_dir.name, "--curves"), ("curves", run_dir.name)):
        one_line_error(cli(*args, check=False), "metrics.jsonl", "line 2")
    good = ['{"kind": "epoch", "epoch": 1, "step": 4, "val_acc": 0.5, "val_loss": 1.0, "train_loss": 1.1}',
            '{"kind": "epoch", "epoch": 2, "step": 8, "val_acc": 0.6, "val_loss": 0.9, "train_loss": 1.0}']
    for d in (run_dir, other):
        (d / "metrics.jsonl").write_text("\n".join(good) + "\n")
    (run_dir / "norm_params.json").write_text(json.dumps({"norm1": {"gamma": "not numbers"}}))
    result = cli("report", run_dir.name, other.name, "--out", str(cli.out / "report"), check=False)
    assert result.returncode == 0, result.stderr
    assert "norm_params.json" in result.stdout + result.stderr and run_dir.name in result.stdout + result.stderr


def test_runs_json_prints_null_for_nan_and_infinity(cli):
    run_dir = fake_run(cli.out, "20261120-100000-mlp-none-aaaa")
    data = json.loads((run_dir / "run.json").read_text())
    data["metrics"].update(val_loss=float("nan"), train_loss=float("inf"))
    (run_dir / "run.json").write_text(json.dumps(data))
    listed = cli("runs", "--json").stdout
    parsed = json.loads(listed, parse_constant=lambda name: pytest.fail(f"{name} in --json output"))
    assert parsed[0]["metrics"]["val_loss"] is None and parsed[0]["metrics"]["train_loss"] is None
    assert "nan" in cli("show", run_dir.name).stdout.lower()  # the table still shows the value


# --- interrupts, races and limits -------------------------------------------------------------------

MID_EPOCH = ["epochs=2", "batch_size=8", "dataset.limit_val=128", "hist_every_steps=0", "log_every_steps=3",
             "threads=1", "device=cpu", "optimizer.momentum=0.9"]


def _start(out: Path, *args: str) -> subprocess.Popen:
    import signal as signals

    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(out), "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "bnexp", "train", *args, "-q"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signals.signal(signals.SIGINT, signals.SIG_DFL))


def _wait_for(predicate, process, timeout: float = 120.0):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)


def _train_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["step"] for line in lines[:-1] if '"kind": "train"' in line]


@pytest.mark.slow
def test_ctrl_c_mid_epoch_saves_the_step_and_resume_continues_exactly(cli):
    import signal as signals

    cli("train", *MID_EPOCH, "name=straight", "-q")
    (straight,) = cli.out.glob("runs/*-straight-*")
    process = _start(cli.out, *MID_EPOCH, "name=stopped")
    _wait_for(lambda: any(len(_train_steps(d)) >= 5 for d in cli.out.glob("runs/*-stopped-*")), process)
    process.send_signal(signals.SIGINT)  # in epoch 1, before the first (epoch) checkpoint
    _, stderr = process.communicate(timeout=120)
    (run_dir,) = cli.out.glob("runs/*-stopped-*")
    stopped = json.loads((run_dir / "run.json").read_text())
    step = int(stderr.split("stopped at step ")[1].split()[0])
    assert process.returncode == 130 and stopped["status"] == "interrupted"
    last = stderr.strip().splitlines()[-1]
    assert f"stopped at step {step} (epoch 1 of" in last and "continues from" not in last  # resumes where it stopped
    assert f"; continue with: bnexp train resume={run_dir}" in last
    import torch

    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)["progress"]
    steps_per_epoch = json.loads((straight / "run.json").read_text())["metrics"]["step"] // 2
    assert saved["step"] == step and saved["epoch"] == 0 and 0 < step < steps_per_epoch and saved["partial"]

    resumed = cli("train", f"resume={run_dir.name}", "-q")
    assert f"resuming {run_dir.name} at epoch 1, step {step}" in resumed.stderr  # the messages agree
    final, expected = (json.loads((d / "run.json").read_text())["metrics"] for d in (run_dir, straight))
    assert {k: v for k, v in final.items() if "examples_per_s" not in k} == \
        {k: v for k, v in expected.items() if "examples_per_s" not in k}
    records = [[{k: v for k, v in json.loads(line).items() if "examples_per_s" not in k}
                for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (run_dir, straight)]
    assert records[0] == records[1]  # the log has no gap and no duplicate, every window equal


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_right_after_the_record_is_created_leaves_it_interrupted(cli, signal_name):
    import signal as signals

    process = _start(cli.out, *TINY, "epochs=50", "checkpoint=false")
    _wait_for(lambda: any(cli.out.glob("runs/*/run.json")), process)
    process.send_signal(getattr(signals, signal_name))
    _, stderr = process.communicate(timeout=120)
    (run_dir,) = (cli.out / "runs").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    assert process.returncode == 130 and record["status"] == "interrupted", (stderr, record)
    (line,) = stderr.strip().splitlines()
    assert line.startswith("interrupted: stopped at step") and "cannot be resumed" in line
    assert "start it again with: bnexp train" in line and "resume=" not in line
    listed = {r["id"]: r for r in json.loads(cli("runs", "--json").stdout)}
    assert listed[run_dir.name]["status"] == "interrupted"


def test_placement_and_name_overrides_are_refused(cli):
    for key in ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir"):
        one_line_error(cli("train", *TINY, f"{key}=../../escape", check=False), key, "output_dir")
        one_line_error(cli("sweep", "norm=none,custom", *TINY, f"{key}=../../escape", check=False), key, "output_dir")
    for name in ("..", "."):
        one_line_error(cli("train", *TINY, f"name={name}", check=False), f"name={name}")
    assert not cli.out.exists()


def test_nproc_is_checked_against_the_machine_up_front(cli):
    result = cli("train", *TINY, "nproc=64", "batch_size=64", check=False)
    one_line_error(result, "nproc=64", "CPU cores")
    assert not cli.out.exists()


def test_nproc_is_checked_against_available_memory(monkeypatch):
    import torch

    from bnexp.core.errors import BnexpError
    from bnexp.engine import ranks

    monkeypatch.setattr(ranks.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(ranks, "available_memory", lambda: 1 << 30)  # 1 GB free: room for 2 workers
    ranks.check_resources(torch.device("cpu"), 2)
    with pytest.raises(BnexpError, match=r"nproc=8: 8 processes need about 3,200 MB .* 1,024 MB are available"):
        ranks.check_resources(torch.device("cpu"), 8)


def _hold_lock(directory: Path) -> subprocess.Popen:
    """A process that takes a run's lock the way a writer does (and names itself in it)."""
    code = ("import fcntl, os, socket, sys, time\n"
            f"fd = os.open({str(directory / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, f'{os.getpid()} {socket.gethostname()}'.encode())\n"
            "print('locked', flush=True)\ntime.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.parametrize("purge", [False, True])
def test_rm_never_removes_a_run_that_started_after_the_prompt(cli, monkeypatch, purge):
    import typer

    run_dir = fake_run(cli.out, "20261120-100000-mlp-none-aaaa")
    holders = []

    def confirm_while_a_writer_starts(question, *args, **kwargs):
        holders.append(_hold_lock(run_dir))
        return True

    monkeypatch.setattr(typer, "confirm", confirm_while_a_writer_starts)
    try:
        result = cli("rm", run_dir.name, *(["--purge"] if purge else []), check=False)
        one_line_error(result, "is being written by pid", str(holders[0].pid), "refusing to delete it")
        assert run_dir.is_dir() and (run_dir / "run.json").is_file()
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


@pytest.mark.slow
def test_a_run_moved_away_while_training_stops_and_says_so(cli):
    process = _start(cli.out, *TINY, "epochs=400", "threads=1", "name=moved")
    _wait_for(lambda: any(cli.out.glob("runs/*-moved-*/checkpoint.pt")), process)
    (run_dir,) = cli.out.glob("runs/*-moved-*")
    trash = cli.out / ".trash" / "by-hand"
    trash.mkdir(parents=True)
    os.rename(run_dir, trash / run_dir.name)
    _, stderr = process.communicate(timeout=60)
    record = json.loads((trash / run_dir.name / "run.json").read_text())
    assert process.returncode == 130 and record["status"] == "interrupted" and "moved" in record["message"], (stderr, record)
    assert "moved or deleted" in stderr.strip().splitlines()[-1]


def test_a_run_moved_between_the_check_and_the_checkpoint_is_interrupted_not_failed(cli, monkeypatch):
    """The move lands after the epoch's in-place check and before the checkpoint's write by path
    (the window a loaded machine widens): the failed write is the move, not a failure."""
    from bnexp.tracking import listeners

    original, moved = listeners.Checkpointer.save, []

    def save_after_a_move(self, loop):
        if not moved:
            moved.append(cli.out / ".trash" / "by-hand" / self.path.parent.name)
            moved[0].parent.mkdir(parents=True)
            os.rename(self.path.parent, moved[0])
        return original(self, loop)

    monkeypatch.setattr(listeners.Checkpointer, "save", save_after_a_move)
    result = cli("train", *TINY, "epochs=2", "name=moved", check=False)
    record = json.loads((moved[0] / "run.json").read_text())
    assert result.returncode == 130 and record["status"] == "interrupted", (result, record)
    assert "moved or deleted" in record["message"] and "moved or deleted" in result.stderr.strip().splitlines()[-1]
    assert not list(cli.out.glob("runs/*-moved-*"))  # nothing recreated at the old path


def _announced_port(process: subprocess.Popen, timeout: float = 120.0) -> int:
    """The port a ``bnexp tensorboard`` announces in its ``TensorBoard on N runs: URL`` line."""
    import re
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline, seen = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        if selector.select(timeout=1.0):
            line = process.stdout.readline()
            if not line:
                break
            seen += line
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            if found:
                return int(found.group(1))
    process.kill()
    raise AssertionError(f"no URL announced: {seen!r} {process.communicate()[1]!r}")


@pytest.mark.slow
def test_two_dashboards_started_at_once_never_announce_the_same_port(cli):
    import signal as signals
    import urllib.request

    fake_run(cli.out, "20261120-100000-mlp-none-aaaa")
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(cli.out), "COLUMNS": "200"}
    boards = [subprocess.Popen([sys.executable, "-m", "bnexp", "tensorboard"], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signals.signal(signals.SIGINT, signals.SIG_DFL)) for _ in range(2)]
    try:
        ports = [_announced_port(board) for board in boards]
        assert ports[0] != ports[1], ports
        for port in ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugins_listing", timeout=10):
                pass
        assert [board.poll() for board in boards] == [None, None]  # both still serving
    finally:
        for board in boards:
            board.send_signal(signals.SIGINT)
            board.communicate(timeout=60)


@pytest.mark.slow
def test_a_disk_that_fills_up_during_a_sweep_or_a_report_is_named_and_recorded(cli, tmp_path):
    swept = on_tiny_disk(tmp_path, "4m", ["sweep", "norm=none,custom", "output_dir={disk}/outputs", *TINY, "epochs=40",
                                          "hist_every_steps=0"], fill_when="outputs/sweeps/*/*-0-mlp-none/run.json")
    assert swept["rc"] != 0 and "Traceback" not in swept["stderr"], swept["stderr"]
    (record,) = [json.loads(text) for name, text in swept["files"].items() if name.endswith("sweep.json")]
    assert record["status"] == "failed" and record["owner"] is None  # ended, not left running (then dead)
    messages = [job["message"] for job in record["jobs"]]
    assert all("No space left on device" in m for m in messages), messages
    assert messages[0].startswith("cannot write ") and "/outputs/sweeps/" in messages[0], messages

    runs = [fake_run(cli.out, f"20261120-100000-mlp-none-{c * 4}") for c in "ab"]
    for run_dir in runs:
        (run_dir / "metrics.jsonl").write_text(
            '{"kind": "epoch", "epoch": 1, "step": 4, "val_acc": 0.5, "val_loss": 1.0, "train_loss": 1.1}\n')
    reported = on_tiny_disk(tmp_path, "16k", ["report", *map(str, runs), "--out", "{disk}/report"])
    (line,) = reported["stderr"].strip().splitlines()
    assert reported["rc"] != 0 and line.startswith("error: cannot write ") and "/report/" in line, line
    assert line.endswith(": No space left on device") and not [n for n in reported["files"] if "/." in n]
