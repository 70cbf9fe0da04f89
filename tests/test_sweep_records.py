"""A sweep's record tells the truth: job counts, dry runs that write nothing, failed jobs that have
a record, how to rerun one job, a continued search that has nothing to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from conftest import TINY as SHARED_TINY
from conftest import write_idx

TINY = [*SHARED_TINY, "hist_every_steps=0"]


def only_sweep(out: Path) -> tuple[Path, dict]:
    (sweep_dir,) = (out / "sweeps").iterdir()
    return sweep_dir, json.loads((sweep_dir / "sweep.json").read_text())


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def bad_idx(directory: Path) -> Path:
    """IDX files found up front but refused while loading: 80 images, 70 labels."""
    directory.mkdir()
    rng = np.random.default_rng(0)
    write_idx(directory / "images-idx3-ubyte", rng.integers(0, 256, (80, 28, 28)), compress=False)
    write_idx(directory / "labels-idx1-ubyte", rng.integers(0, 10, 70), compress=False)
    return directory


def test_a_sweep_found_through_a_relative_output_dir_counts_each_job_once(cli, tmp_path, monkeypatch):
    from bnexp.store.sweeps import job_rows

    cli("sweep", "norm=none,custom", *TINY)
    sweep_dir, _ = only_sweep(cli.out)
    monkeypatch.chdir(tmp_path)
    relative = Path("outputs/sweeps") / sweep_dir.name
    assert len(job_rows(relative)) == len(job_rows(sweep_dir)) == 2
    monkeypatch.chdir(cli.out)
    assert len(job_rows(Path("sweeps") / sweep_dir.name)) == 2


def test_a_sweep_whose_jobs_all_failed_is_failed_and_every_job_has_a_record(cli, tmp_path):
    data = bad_idx(tmp_path / "bad")
    result = cli("sweep", "dataset=idx", f"dataset.path={data}", "seed=0,1", *TINY, check=False)
    assert result.returncode == 1 and "sweep failed: 2 of 2 jobs did not complete" in result.stdout
    sweep_dir, sweep = only_sweep(cli.out)
    assert sweep["status"] == "failed"
    records = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/run.json"))]
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert all("70 labels" in r["message"] for r in records)
    listed = json.loads(cli("runs", "--status", "failed", "--json").stdout)
    assert sorted(r["id"] for r in listed) == sorted(r["id"] for r in records)
    shown = cli("show", records[0]["id"]).stdout
    assert "failed" in shown and "70 labels" in shown


def test_a_partial_sweep_and_each_jobs_own_command(cli, tmp_path):
    data = bad_idx(tmp_path / "bad")
    good = tmp_path / "good"
    good.mkdir()
    rng = np.random.default_rng(1)
    write_idx(good / "images-idx3-ubyte", rng.integers(0, 256, (80, 28, 28)), compress=False)
    write_idx(good / "labels-idx1-ubyte", rng.integers(0, 10, 80), compress=False)
    result = cli("sweep", "dataset=idx", f"dataset.path={good},{data}", *TINY, check=False)
    assert result.returncode == 1
    sweep_dir, sweep = only_sweep(cli.out)
    assert sweep["status"] == "partial"
    for path in sweep_dir.glob("*/run.json"):
        record = json.loads(path.read_text())
        command = record["repro"]["command"]
        assert command.startswith("bnexp train dataset=idx dataset.path="), command
        assert "bnexp sweep" not in command and "--" not in command
        shown = json.loads(cli("show", record["id"], "--json").stdout)
        assert shown["sweep"] == sweep_dir.name


def test_dry_runs_of_a_continued_sweep_run_and_write_nothing(cli):
    cli("sweep", "norm=none,custom", *TINY)
    sweep_dir, _ = only_sweep(cli.out)
    shutil.rmtree(next(sweep_dir.glob("*-1-*")))  # as if job 1 never ran
    before = snapshot(cli.out)
    out = cli("sweep", "--resume", sweep_dir.name, "--dry-run").stdout
    assert "would run 1 of its 2 jobs" in out and "1: norm=custom" in out and "nothing was run" in out
    assert snapshot(cli.out) == before

    cli("sweep", "--trials", "2", "norm=none,custom", *TINY)
    search = max((cli.out / "sweeps").iterdir(), key=lambda p: (p / "sweep.json").stat().st_mtime)
    before = snapshot(cli.out)
    out = cli("sweep", "--study", search.name, "--trials", "5", "--dry-run").stdout
    assert "would run 3 more trial(s)" in out and "the study has 2 (2 completed)" in out
    assert snapshot(cli.out) == before


def test_a_study_that_already_has_the_trials_says_so(cli):
    cli("sweep", "--trials", "3", "norm=none,custom", *TINY)
    sweep_dir, _ = only_sweep(cli.out)
    before = snapshot(cli.out)
    out = cli("sweep", "--study", sweep_dir.name, "--trials", "2").stdout
    assert "nothing to do" in out and "already has 3 trials" in out
    assert f"bnexp sweep --study {sweep_dir.name} --trials 5" in out
    assert snapshot(cli.out) == before


def test_a_missing_data_source_stops_the_sweep_once_before_anything_runs(cli, tmp_path):
    from conftest import one_line_error

    result = cli("sweep", "dataset=idx", f"dataset.path={tmp_path / 'nowhere'}", "seed=0,1,2", *TINY, check=False)
    assert result.returncode == 2
    one_line_error(result, "nowhere", "not a directory")
    assert not (cli.out / "sweeps").exists() or not any((cli.out / "sweeps").iterdir())
    result = cli("sweep", "dataset=mnist", f"dataset.root={tmp_path / 'empty'}", "dataset.download=false",
                 "norm=none,custom", *TINY, check=False)
    one_line_error(result, "MNIST not found")
    assert not (cli.out / "sweeps").exists() or not any((cli.out / "sweeps").iterdir())


def test_a_sequential_sweep_says_which_job_runs(cli):
    out = cli("sweep", "norm=none,custom", *TINY).stdout
    assert out.index("job 0 running: norm=none") < out.index("job 0 completed") < out.index("job 1 running: norm=custom")
