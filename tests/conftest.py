"""Shared test helpers: the CLI in this process or in a real subprocess, tiny settings, real data."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST_T10K = REPO.parent / "shared/data/mnist-t10k"

# Small, fast settings for end-to-end runs on the bundled digits data.
TINY = ["epochs=1", "dataset.limit_train=256", "dataset.limit_val=128", "batch_size=32", "log_every_steps=2"]


@pytest.fixture
def tiny() -> list[str]:
    """The overrides of a run that trains in well under a second (a fresh list each time)."""
    return list(TINY)


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """An MNIST-format file: 0x0000, type 0x08 (uint8), dimension count, big-endian sizes, data."""
    array = np.asarray(array, dtype=np.uint8)
    payload = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes() + array.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def requires_mnist_t10k():
    if not SHARED_MNIST_T10K.is_dir():
        pytest.skip(f"real MNIST test set not present at {SHARED_MNIST_T10K} (needs ../shared/data)")
    return SHARED_MNIST_T10K


@dataclass
class Result:
    """What a CLI call left: like subprocess.CompletedProcess, for in-process calls too."""

    returncode: int
    stdout: str
    stderr: str


def _environment(out: Path, columns: int) -> dict[str, str]:
    env = {**os.environ, "BNEXP_OUTPUT_DIR": str(out), "COLUMNS": str(columns)}
    env.pop("BNEXP_DEBUG", None)
    return env


@pytest.fixture
def bnexp(tmp_path):
    """Run ``python -m bnexp ARGS`` in a real subprocess with runs written under tmp_path/outputs: for
    what needs a process of its own (signals, locks, start-up, several commands at once)."""
    out = tmp_path / "outputs"

    def run(*args: str, check: bool = True, cwd: Path | None = None, timeout: float = 300,
            columns: int = 200) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "bnexp", *args], capture_output=True, text=True,
                                cwd=cwd or tmp_path, env=_environment(out, columns), timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"bnexp {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    run.out = out
    return run


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """``bnexp ARGS`` through the CLI's own entry point in this process (no interpreter start-up),
    runs written under tmp_path/outputs; returns a :class:`Result`. For everything that does not
    need a process of its own."""
    from bnexp import cli as entry

    out = tmp_path / "outputs"
    monkeypatch.chdir(tmp_path)

    def run(*args: str, check: bool = True, columns: int = 200) -> Result:
        for key, value in _environment(out, columns).items():
            if os.environ.get(key) != value:
                monkeypatch.setenv(key, value)
        monkeypatch.delenv("BNEXP_DEBUG", raising=False)
        monkeypatch.setattr(sys, "argv", ["bnexp", *args])
        capsys.readouterr()
        try:
            entry.main()
            code = 0
        except SystemExit as exited:
            code = exited.code if isinstance(exited.code, int) else 1
        captured = capsys.readouterr()
        result = Result(code, captured.out, captured.err)
        if check and code != 0:
            raise AssertionError(f"bnexp {' '.join(args)} exited {code}:\n{result.stdout}\n{result.stderr}")
        return result

    run.out = out
    return run


def one_line_error(result, *fragments: str) -> str:
    """Assert the bad-input contract: non-zero exit, exactly one ``error:`` line on stderr naming
    every fragment, no traceback; returns the line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def fake_run(root: Path, run_id: str, *, status="completed", model="mlp", norm="custom", lr=0.1, age_h=1.0,
             best=0.9, overrides=None, parent="runs", seed=0) -> Path:
    """A run directory as `bnexp train` leaves it, minus the heavy files (for registry tests)."""
    import json
    from datetime import datetime, timedelta

    now = datetime.now().astimezone().replace(microsecond=0)
    run_dir = root / parent / run_id
    run_dir.mkdir(parents=True)
    metrics = {} if status == "failed" else {"train_loss": 0.3, "train_acc": best - 0.01, "val_loss": 0.4,
                                             "val_acc": best - 0.02, "best_val_acc": best, "best_epoch": 2,
                                             "epoch": 3, "step": 60, "examples_per_s": 1e4, "lr": lr}
    summary = {"id": run_id, "status": status, "started": (now - timedelta(hours=age_h)).isoformat(),
               "ended": now.isoformat(), "duration_s": 12.5, "model": model, "norm": norm, "dataset": "digits",
               "optimizer": "sgd", "lr": lr, "batch_size": 64, "epochs": 3, "seed": seed, "device": "cpu",
               "metrics": metrics, "message": None, "compile_s": 0.0,
               "overrides": overrides if overrides is not None else [f"model={model}", f"norm={norm}",
                                                                     f"optimizer.lr={lr}", "output_dir=/x"]}
    (run_dir / "run.json").write_text(json.dumps(summary))
    (run_dir / "config.yaml").write_text(
        f"model:\n  name: {model}\n  hidden_sizes: [100]\nnorm:\n  kind: {norm}\n  eps: 1.0e-05\n"
        f"optimizer:\n  name: sgd\n  lr: {lr}\nbatch_size: 64\nepochs: 3\nseed: {seed}\noutput_dir: {root}\n"
        "threads: null\n")
    return run_dir


def on_tiny_disk(tmp_path: Path, size: str, argv: list[str], fill_when: str | None = None) -> dict:
    """Run ``bnexp ARGV`` with a tmpfs of ``size`` mounted at ``{disk}`` (in ARGV), in a private
    mount namespace (no root needed). With ``fill_when`` (a glob under the disk) the disk is filled
    up as soon as a path matches it: a disk that becomes full while the command runs. Returns its
    exit code and stderr, the files it left (the text of each ``*.json``) and its directories."""
    import json
    import shutil

    if not shutil.which("unshare"):
        pytest.skip("needs unshare (util-linux) for a private tmpfs")
    probe = subprocess.run(["unshare", "-rm", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.decode().strip()}")
    disk = tmp_path / f"disk-{size}"
    disk.mkdir()
    report = tmp_path / f"report-{size}.json"
    script = (
        "import glob, json, os, subprocess, sys, time\n"
        f"disk, report, fill_when = {str(disk)!r}, {str(report)!r}, {fill_when!r}\n"
        f"subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size={size}', 'tmpfs', disk], check=True)\n"
        f"argv = [a.replace('{{disk}}', disk) for a in {list(argv)!r}]\n"
        "process = subprocess.Popen([sys.executable, '-m', 'bnexp', *argv], stdout=subprocess.PIPE, "
        "stderr=subprocess.PIPE, text=True)\n"
        "if fill_when:\n"
        "    while process.poll() is None and not glob.glob(os.path.join(disk, fill_when)):\n"
        "        time.sleep(0.02)\n"
        "    with open(os.path.join(disk, 'filler'), 'wb', buffering=0) as filler:\n"
        "        try:\n"
        "            while True:\n"
        "                filler.write(bytes(4096))\n"
        "        except OSError:\n"
        "            pass\n"
        "_, stderr = process.communicate()\n"
        "files = {os.path.relpath(os.path.join(d, f), disk): open(os.path.join(d, f), 'rb').read().decode('utf-8', "
        "'replace') if f.endswith('.json') else None for d, _, fs in os.walk(disk) for f in fs if f != 'filler'}\n"
        "dirs = [os.path.relpath(d, disk) for d, _, _ in os.walk(disk)]\n"
        "json.dump({'rc': process.returncode, 'stderr': stderr, 'files': files, 'dirs': dirs}, open(report, 'w'))\n"
    )
    subprocess.run(["unshare", "-rm", "--propagation", "private", sys.executable, "-c", script], check=True,
                   timeout=300, env={**os.environ, "COLUMNS": "200"})
    return json.loads(report.read_text())
