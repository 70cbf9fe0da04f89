"""The run registry: `bnexp runs`, `show`, `compare` and `rm` over run directories made by hand
(valid run.json + config.yaml, no training), plus the filter/sort/since helpers."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
from conftest import fake_run

import bnexp.store.listing
import bnexp.store.registry
from bnexp.core.errors import BnexpError
from bnexp.store.catalog import resolve
from bnexp.store.labels import update_labels
from bnexp.store.registry import check_choices, filter_runs, load_runs, parse_since, sort_runs

NOW = datetime.now().astimezone().replace(microsecond=0)


@pytest.fixture
def registry(tmp_path):
    root = tmp_path / "outputs"
    fake_run(root, "20261120-100000-mlp-custom-aaaa", lr=0.1, best=0.95, age_h=50)
    fake_run(root, "20261121-100000-mlp-none-bbbb", norm="none", lr=0.5, best=0.80, age_h=20)
    fake_run(root, "20261122-100000-lenet-builtin-cccc", model="lenet", norm="builtin", best=0.97, age_h=2)
    fake_run(root, "20261122-110000-mlp-none-dddd", norm="none", status="failed", age_h=1)
    sweep = root / "sweeps" / "20261122-120000-sweep-eeee"
    fake_run(root, "20261122-120000-sweep-eeee-0-mlp-none", norm="none", parent="sweeps/20261122-120000-sweep-eeee",
             age_h=0.5, best=0.7)
    fake_run(root, "20261122-120000-sweep-eeee-1-mlp-custom", parent="sweeps/20261122-120000-sweep-eeee",
             age_h=0.5, best=0.9)
    (sweep / "sweep.json").write_text(json.dumps({"id": sweep.name, "kind": "grid", "status": "completed",
                                                  "swept": ["norm"], "metric": "best_val_acc", "jobs": []}))
    return root


def test_runs_json_lists_all_500_runs(tmp_path, bnexp):
    for i in range(500):
        fake_run(bnexp.out, f"20261122-{i:06d}-mlp-custom-{i:04x}", best=i / 500)
    runs = json.loads(bnexp("runs", "--json").stdout)
    assert len(runs) == 500
    assert {r["id"] for r in runs} == {f"20261122-{i:06d}-mlp-custom-{i:04x}" for i in range(500)}
    order = [(r["started"], r["id"]) for r in runs]  # newest first; runs started together keep id order
    assert all(a[0] > b[0] or (a[0] == b[0] and a[1] < b[1]) for a, b in zip(order, order[1:]))
    top = json.loads(bnexp("runs", "--json", "--sort", "best_val_acc", "--limit", "3").stdout)
    assert [r["metrics"]["best_val_acc"] for r in top] == [0.998, 0.996, 0.994]


def test_filters_sorting_and_sweep_membership(registry):
    records = load_runs(registry)
    assert len(records) == 6
    by_id = {r.id: r for r in records}
    assert by_id["20261122-120000-sweep-eeee-0-mlp-none"].sweep == "20261122-120000-sweep-eeee"
    assert by_id["20261120-100000-mlp-custom-aaaa"].sweep is None
    assert {r.id for r in filter_runs(records, status=["failed"])} == {"20261122-110000-mlp-none-dddd"}
    assert len(filter_runs(records, norm=["none"], model=["mlp"])) == 3
    assert len(filter_runs(records, sweep="20261122-12")) == 2
    assert len(filter_runs(records, since=parse_since("1d"))) == 5
    newest_first = [r.id for r in sort_runs(records)]
    assert newest_first[-1] == "20261120-100000-mlp-custom-aaaa"
    best = sort_runs(records, "best_val_acc")
    assert best[0].id == "20261122-100000-lenet-builtin-cccc" and best[-1].status == "failed"
    assert sort_runs(records, "best_val_acc", reverse=True)[0].metrics["best_val_acc"] == 0.7
    with pytest.raises(BnexpError, match="valid keys"):
        sort_runs(records, "colour")


def test_filters_by_name_experiment_dataset_and_tags(registry, monkeypatch):
    run = registry / "runs/20261121-100000-mlp-none-bbbb"
    record = json.loads((run / "run.json").read_text())
    record.update(name="lr-high", experiment="mlp_mnist", dataset="idx", dataset_path="/data/t10k")
    (run / "run.json").write_text(json.dumps(record))
    update_labels(run, add=["keep", "paper"])
    update_labels(registry / "runs/20261120-100000-mlp-custom-aaaa", add=["keep"])
    reads = []
    real = bnexp.store.listing.read_labels
    monkeypatch.setattr(bnexp.store.listing, "read_labels", lambda path: reads.append(path) or real(path))
    records = load_runs(registry)
    assert sorted(os.path.basename(p) for p in reads) == ["20261120-100000-mlp-custom-aaaa", run.name]  # only where present

    def ids(**filters):
        return {r.id for r in filter_runs(records, **filters)}

    assert ids(name="lr-*") == ids(name="lr-high") == ids(experiment=["mlp_mnist"]) == {run.name}
    assert ids(dataset=["idx"]) == ids(dataset=["/data/t10k"]) == {run.name}
    assert len(ids(dataset=["digits"])) == 5
    assert ids(tags=["keep"]) == {run.name, "20261120-100000-mlp-custom-aaaa"}
    assert ids(tags=["keep", "paper"]) == {run.name}  # every tag given
    assert ids(tags=["nothing"]) == set()
    check_choices("norm", ["none", "custom"], records)
    check_choices("experiment", ["mlp_mnist"], records)
    check_choices("model", ["retired-model"], records + [type(records[0])(id="x", model="retired-model")])
    with pytest.raises(BnexpError, match="--norm batch: no norm of that name; valid values are batch_renorm, builtin, custom, frozen, group, layer, none"):
        check_choices("norm", ["batch"], records)


def test_parse_since_accepts_dates_times_and_ages():
    assert parse_since("12h", now=NOW) == NOW - timedelta(hours=12)
    assert parse_since("3d", now=NOW) == NOW - timedelta(days=3)
    assert parse_since("2026-11-20").date().isoformat() == "2026-11-20"
    assert parse_since("2026-11-20T14:30").hour == 14
    with pytest.raises(BnexpError, match="--since 'yesterday'"):
        parse_since("yesterday")


def test_resolve_prefers_sweeps_and_lists_ambiguity(registry):
    assert resolve("20261122-120000-sweep-eeee", registry)[0] == "sweep"
    assert resolve("20261122-120000-sweep-eeee-1", registry) == (
        "run", registry / "sweeps/20261122-120000-sweep-eeee/20261122-120000-sweep-eeee-1-mlp-custom")
    with pytest.raises(BnexpError, match="ambiguous.*20261122-100000-lenet-builtin-cccc.*20261122-110000"):
        resolve("20261122-1", registry)
    with pytest.raises(BnexpError, match="no run or sweep matches 'zzz'"):
        resolve("zzz", registry)


def test_runs_table_and_cli_filters(registry, bnexp):
    out = bnexp("runs", "--output-dir", str(registry)).stdout
    assert "6 of 6 runs" in out and "20261122-100000-lenet-builtin-cccc" in out and "optimizer.lr=0.5" in out
    assert "output_dir" not in out  # plumbing overrides are not "key overrides"
    listed = json.loads(bnexp("runs", "--output-dir", str(registry), "--json", "--status", "completed",
                              "--norm", "none", "--since", "2d").stdout)
    assert [r["id"] for r in listed] == ["20261122-120000-sweep-eeee-0-mlp-none", "20261121-100000-mlp-none-bbbb"]
    bad = bnexp("runs", "--output-dir", str(registry), "--status", "done", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --status done: valid statuses")
    empty = bnexp("runs", "--output-dir", str(registry / "nothing-here"))
    assert "0 of 0 runs" in empty.stdout


def test_show_run_and_sweep(registry, bnexp):
    out = bnexp("show", "20261121", "--output-dir", str(registry)).stdout
    assert "run 20261121-100000-mlp-none-bbbb" in out and "best_val_acc" in out and "config.yaml" in out
    assert "lr: 0.5" in out  # the saved config is printed
    data = json.loads(bnexp("show", "20261121", "--json", "--output-dir", str(registry)).stdout)
    assert data["config"]["optimizer.lr"] == 0.5 and data["sweep"] is None
    sweep = bnexp("show", "20261122-120000-sweep", "--output-dir", str(registry)).stdout
    assert "sweep 20261122-120000-sweep-eeee" in sweep and "norm=custom" in sweep
    ambiguous = bnexp("show", "2026112", "--output-dir", str(registry), check=False)
    assert ambiguous.returncode == 2 and "ambiguous" in ambiguous.stderr and "Traceback" not in ambiguous.stderr
    assert len(ambiguous.stderr.strip().splitlines()) == 1


def test_compare_runs_and_csv(registry, bnexp):
    out = bnexp("compare", "20261120", "20261121", "--output-dir", str(registry)).stdout
    assert "optimizer.lr" in out and "norm.kind" in out and "best_val_acc" in out
    assert "model.name" not in out and "output_dir" not in out  # equal or plumbing keys are left out
    rows = list(csv.DictReader(io.StringIO(bnexp("compare", "20261122-120000-sweep-eeee", "--csv",
                                                 "--output-dir", str(registry)).stdout)))
    assert [r["norm.kind"] for r in rows] == ["none", "custom"]
    assert [float(r["best_val_acc"]) for r in rows] == [0.7, 0.9]
    single = bnexp("compare", "20261120", "--output-dir", str(registry), check=False)
    assert single.returncode == 2 and "at least two runs" in single.stderr


def answering(answer: str, *args: str) -> subprocess.CompletedProcess:
    """`bnexp ARGS` with ``answer`` typed at its prompt."""
    return subprocess.run([sys.executable, "-m", "bnexp", *args], input=answer, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=120)


def test_rm_confirms_and_refuses_non_runs(registry, bnexp, tmp_path):
    target = registry / "runs/20261121-100000-mlp-none-bbbb"
    declined = answering("n\n", "rm", "20261121", "--output-dir", str(registry))
    assert declined.returncode == 1 and target.is_dir() and "nothing deleted" in declined.stdout
    assert answering("y\n", "rm", "20261121", "--output-dir", str(registry)).returncode == 0
    assert not target.exists()
    bnexp("rm", "20261122-120000-sweep-eeee", "--yes", "--output-dir", str(registry))
    assert not (registry / "sweeps/20261122-120000-sweep-eeee").exists()
    stranger = tmp_path / "not-a-run"
    stranger.mkdir()
    refused = bnexp("rm", str(stranger), "20261120", "--yes", "--output-dir", str(registry), check=False)
    assert refused.returncode == 2 and "neither a run" in refused.stderr
    assert stranger.is_dir() and (registry / "runs/20261120-100000-mlp-custom-aaaa").is_dir()  # nothing deleted
