"""The registry's index (``<output dir>/.index.sqlite``, issue 18): a listing through it is the same
as a full scan of the run directories, after runs are added, removed, edited, labelled or
damaged and after the index itself is damaged; and an unchanged registry is not read again."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest
from conftest import fake_run

from bnexp.core.text import finite
from bnexp.store import catalog, index, listing
from bnexp.store.index import INDEX_FILE
from bnexp.store.registry import sort_runs


@pytest.fixture(autouse=True)
def settled(monkeypatch):
    """Cache what the tests write at once (bnexp waits 2 s, the clock's resolution, before
    trusting an mtime); every edit below changes a file's size or inode, so none hides."""
    monkeypatch.setattr(index, "SETTLE_NS", -10**18)


def full_scan(root) -> list:
    """What a listing must equal: every run read from its files, no index involved."""
    return [listing.fresh_record(entry) for entry in catalog.iter_run_entries(root)]


def as_json(records) -> list[str]:
    return [json.dumps(finite(r.as_dict()), default=str, allow_nan=False) for r in records]


def assert_same_as_full_scan(root, page: int = 7) -> None:
    truth = full_scan(root)
    for key in ("started", "best_val_acc", "duration", "status", "id"):
        for reverse in (False, True):
            expected = as_json(sort_runs(truth, key, reverse))
            with listing.Listing(root) as found:
                ordered = sort_runs(found.runs, key, reverse)
                assert len(ordered) == len(truth)
                assert as_json(found.records(ordered[:page])) == expected[:page]
                assert found.json_texts(ordered) == expected


def make_registry(root, count: int = 12) -> list:
    runs = [fake_run(root, f"20261120-1000{i:02d}-mlp-custom-{i:04x}", age_h=1 + i % 5, best=0.9 + i % 4 / 100,
                     status=("completed", "failed", "diverged")[i % 3]) for i in range(count)]
    sweep = root / "sweeps" / "20261120-110000-sweep-lr-abcd"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"id": sweep.name, "status": "completed"}))
    runs += [fake_run(root, f"{sweep.name}-{j}", parent=f"sweeps/{sweep.name}", best=0.8) for j in range(3)]
    return runs


def test_listing_equals_a_full_scan_through_adds_removes_edits_and_damage(tmp_path):
    root = tmp_path / "outputs"
    runs = make_registry(root)
    assert_same_as_full_scan(root)
    assert (root / INDEX_FILE).is_file()
    fake_run(root, "20261120-120000-mlp-custom-ffff", best=0.99)  # added
    shutil.rmtree(runs[3])  # removed
    record = json.loads((runs[4] / "run.json").read_text())
    (runs[4] / "run.json").write_text(json.dumps({**record, "status": "interrupted"}))  # edited in place
    (runs[5] / "labels.json").write_text(json.dumps({"tags": ["best"], "note": "keep"}))  # labelled
    (runs[6] / "run.json").write_text('{"id": "x", "duration_s": "long"}')  # damaged
    (runs[7] / "run.json").unlink()
    os.mkfifo(runs[7] / "run.json")  # a FIFO: never blocks
    (runs[8] / "labels.json").write_text("{")  # unreadable labels hide nothing
    fake_run(root, "20261120-130000-mlp-custom-eeee", status="running")  # its writer is gone: dead
    (runs[9] / "run.json").write_text(json.dumps({**record, "id": runs[9].name, "val": float("nan"),
                                                  "metrics": {"best_val_acc": float("inf")}}))  # not strict JSON
    assert_same_as_full_scan(root)
    statuses = {r.id: r.status for r in full_scan(root)}
    assert statuses[runs[6].name] == statuses[runs[7].name] == "unreadable"
    assert statuses["20261120-130000-mlp-custom-eeee"] == "dead"
    os.unlink(runs[7] / "run.json")
    shutil.copy(runs[0] / "run.json", runs[7] / "run.json")  # repaired (with another run's id)
    assert_same_as_full_scan(root)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong schema", "tampered body", "wrong type",
                                    "fifo", "symlink", "directory"])
def test_a_damaged_or_planted_index_never_changes_the_listing(tmp_path, damage):
    root = tmp_path / "outputs"
    make_registry(root)
    assert_same_as_full_scan(root)
    path = root / INDEX_FILE
    if damage == "garbage":
        path.write_bytes(b"\xff\x00 not a database")
    elif damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif damage == "wrong schema":
        path.unlink()
        sqlite3.connect(path).executescript("CREATE TABLE runs (x); PRAGMA user_version = 2;")
    elif damage == "tampered body":  # a forged record: its digest fails, the run is read again
        with sqlite3.connect(path) as db:
            for (rec,) in db.execute("SELECT record FROM runs").fetchall():
                forged = json.dumps({**json.loads(rec), "duration_s": 99.0, "status": "failed"})
                db.execute("UPDATE runs SET record = ?, rendered = ? WHERE record = ?", (forged, forged[:-1], rec))
    elif damage == "wrong type":  # the typed columns refuse it: the index stays as it was
        with pytest.raises(sqlite3.IntegrityError), sqlite3.connect(path) as db:
            db.execute("UPDATE runs SET duration = 'long'")
    elif damage == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif damage == "symlink":  # never followed: nothing outside the output directory is written
        elsewhere = tmp_path / "elsewhere.sqlite"
        path.unlink()
        path.symlink_to(elsewhere)
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    assert_same_as_full_scan(root)
    if damage == "symlink":
        assert not (tmp_path / "elsewhere.sqlite").exists()
    if damage in ("garbage", "truncated", "wrong schema"):  # replaced by a working index
        assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == index.SCHEMA_VERSION


def test_an_unchanged_registry_is_neither_listed_nor_read_again(tmp_path, monkeypatch):
    """Only a stat per directory and record: no directory listing, and only the page's records
    are parsed and checked."""
    from bnexp.store import record as record_module

    root = tmp_path / "outputs"
    make_registry(root, count=30)
    for _ in range(2):  # the first creates the index (and its journal) in the output directory
        with listing.Listing(root):
            pass
    listed, checked = [], []
    real_scandir, real_from_json = os.scandir, record_module.RunRecord.from_json.__func__
    monkeypatch.setattr(catalog.os, "scandir", lambda path: listed.append(path) or real_scandir(path))
    monkeypatch.setattr(record_module.RunRecord, "from_json",
                        classmethod(lambda cls, *a: checked.append(1) or real_from_json(cls, *a)))
    with listing.Listing(root) as found:
        page = found.records(sort_runs(found.runs, "best_val_acc")[:5])
    assert len(found.runs) == 33 and len(page) == 5
    assert listed == [] and len(checked) == 5
    new = fake_run(root, "20261120-140000-mlp-custom-dddd")
    with listing.Listing(root) as found:
        assert len(found.runs) == 34
    assert listed == [str(new.parent), str(new)]  # only what changed: runs/ and the new run


def test_cli_runs_json_from_the_index_equals_the_full_path(cli):
    make_registry(cli.out)
    cli("runs")  # builds the index
    fast = json.loads(cli("runs", "--json").stdout)
    full = json.loads(cli("runs", "--json", "--where", "id != ''").stdout)  # a filter: every record read
    assert fast == full and len(fast) == 15
    table = cli("runs", "--sort", "best_val_acc", "-n", "3").stdout
    assert "3 of 15 runs" in table or "15 runs" in table



def test_saved_configs_are_parsed_once_per_version(tmp_path, monkeypatch):
    """The dashboard's HParams table reads every run's config.yaml: through the index each is
    parsed once per version of the file; a changed or damaged file is read again."""
    from bnexp.store import files
    from bnexp.store.files import UnreadableFile

    root = tmp_path / "outputs"
    runs = [str(r) for r in make_registry(root, count=4)]
    first = listing.run_configs(runs, root)
    assert first[0]["model.name"] == "mlp" and len(first) == 7
    parsed = []
    real = files.read_yaml_mapping
    monkeypatch.setattr(files, "read_yaml_mapping", lambda path: parsed.append(str(path.parent)) or real(path))
    assert listing.run_configs(runs, root) == first and parsed == []
    with open(os.path.join(runs[0], "config.yaml"), "a") as f:
        f.write("name: edited\n")
    os.replace(os.path.join(runs[1], "config.yaml"), os.path.join(runs[1], "moved.yaml"))
    with open(os.path.join(runs[1], "config.yaml"), "w") as f:
        f.write("model: [unclosed\n")
    third = listing.run_configs(runs, root)
    assert sorted(parsed) == sorted(runs[:2]) and third[0]["name"] == "edited"
    assert isinstance(third[1], UnreadableFile) and third[2:] == first[2:]


def test_compare_of_one_configuration_over_seeds(cli):
    """Seeds of one configuration: the seed table, and no test against a second configuration
    (there is none); this crashed with an IndexError before."""
    ids = [fake_run(cli.out, f"20261120-10000{i}-mlp-custom-{i:04x}", seed=i).name for i in range(3)]
    for run in ids:  # the same configuration: only the seed differs
        path = cli.out / "runs" / run / "config.yaml"
        path.write_text(path.read_text().replace(f"seed: {ids.index(run)}", "seed: 0"))
    result = cli("compare", *ids)
    assert "seed statistics: 1 configurations" in result.stdout and "minus" not in result.stdout


def test_resolving_references_never_writes_the_index(tmp_path):
    """show, rm, a dry run: they read an index that is there, and create or change none."""
    root = tmp_path / "outputs"
    runs = make_registry(root, count=3)
    assert catalog.resolve(runs[0].name, root) == ("run", runs[0]) and not (root / INDEX_FILE).exists()
    with listing.Listing(root):
        pass
    before = (root / INDEX_FILE).read_bytes()
    fake_run(root, "20261120-150000-mlp-custom-cccc")
    assert catalog.resolve("20261120-150000", root)[0] == "run"
    assert (root / INDEX_FILE).read_bytes() == before
