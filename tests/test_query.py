"""Finding and grouping runs: the --where grammar, --group-by, compare against a baseline with Holm's
correction, CSV/LaTeX tables, the Python API and `bnexp import` (hostile archives included)."""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile

import pytest
from conftest import fake_run, one_line_error

from bnexp.core.errors import BnexpError
from bnexp.core.query import MISSING, compile_query
from bnexp.views.stats import holm

RECORD = {"val_acc": 0.95, "optimizer.lr": 0.1, "norm.kind": "custom", "tags": ["paper"], "name": "lr-1",
          "norm.sync": False, "seed": 3, "started": "2026-11-22T10:00:00+00:00", "message": None}


@pytest.mark.parametrize("query, expected", [
    ("val_acc > 0.9 and optimizer.lr < 0.5 and norm.kind in ('custom','builtin')", True),
    ("val_acc > 0.9 and norm.kind in ('none', 'builtin')", False),
    ("0.01 <= optimizer.lr <= 0.5", True),          # a range: chained comparisons
    ("0.2 <= optimizer.lr <= 0.5", False),
    ("optimizer.lr between 0.1 and 0.2", True),
    ("name ~ '^lr-'", True), ("name ~ 'x'", False), ("name !~ 'x'", True),
    ("'paper' in tags", True), ("'draft' in tags", False),
    ("norm.kind not in ['none']", True),
    ("not (val_acc < 0.5 or seed == 3)", False),
    ("val_acc > 0.9 or missing.key > 1", True),
    ("missing.key > 1", False), ("missing.key == null", False), ("missing.key != 1", False),  # missing: false
    ("message == null", True), ("message != null", False),
    ("norm.sync == false", True), ("norm.sync == 0", False),  # a bool is no number
    ("norm.kind > 1", False), ("seed == '3'", False),          # types do not mix
    ("started >= '2026-11-20'", True),
    ("seed = 3 AND NOT val_acc < 0.9", True),           # keywords in any case; = is ==
    ("optimizer.lr == 1e-1", True), ("seed > -1", True),
])
def test_grammar_evaluates_comparisons_logic_ranges_regex_and_missing_keys(query, expected):
    assert compile_query(query).matches(RECORD) is expected


@pytest.mark.parametrize("query, column, fragment", [
    ("val_acc >> 0.9", 10, "expected a key, a number or a quoted string at '>'"),
    ("val_acc > ", 11, "at the end"),
    ("(val_acc > 1", 13, "expected ')'"),
    ("a in (1, 2", 11, "expected ',' or ')'"),
    ("name ~ '('", 8, "bad regular expression"),
    ("x == 1)", 7, "expected 'and', 'or' or the end at ')'"),
    ("val_acc $ 3", 9, "unexpected character at '$'"),
    ("val_acc", 8, "expected a comparison"),
    ("__import__('os').system('true') == 1", 17, "unexpected character at '.'"),  # no call syntax at all
    ("", 1, "empty query"),
])
def test_errors_point_at_the_bad_token(query, column, fragment):
    with pytest.raises(BnexpError) as error:
        compile_query(query)
    message = str(error.value)
    assert fragment in message and f"(column {column})" in message and "\n" not in message


def test_a_query_reads_through_any_lookup():
    seen = []
    query = compile_query("a > 1 and b == 'x'")
    assert set(query.keys) == {"a", "b"}
    assert not query.matches(lambda key: seen.append(key) or MISSING)
    assert seen == ["a"]  # and short-circuits: b is never looked up


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


@pytest.fixture
def grid(tmp_path):
    """norm none/custom/builtin x lr 0.1/0.5 x 3 seeds; custom/builtin better by 0.05, lr 0.5 by 0.04."""
    root = tmp_path / "outputs"
    i = 0
    for norm in ("none", "custom", "builtin"):
        for lr in (0.1, 0.5):
            for seed in range(3):
                best = 0.8 + 0.05 * (norm != "none") + 0.01 * seed + (0.04 if lr == 0.5 else 0)
                fake_run(root, f"20261122-1000{i:02d}-mlp-{norm}-{i:04x}", norm=norm, lr=lr, seed=seed, best=best)
                i += 1
    return root


def test_runs_where_uses_record_and_config(cli, grid):
    out = json.loads(cli("runs", "--json", "--where",
                         "best_val_acc > 0.865 and optimizer.lr < 0.5 and norm.kind in ('custom','builtin')").stdout)
    assert sorted(r["id"][-4:] for r in out) == ["0008", "000e"]  # seed 2 of custom and builtin at lr 0.1
    assert len(json.loads(cli("runs", "--json", "--where", "status == 'completed' and seed == 0").stdout)) == 6


@pytest.mark.parametrize("where, fragments", [
    ("val_ac > 1", ["unknown key 'val_ac'", "did you mean val_acc"]),
    ("norm.kind == custom", ["unknown key 'custom'", "quote strings"]),
    ("x >> 1", ["column 4"]),
])
def test_runs_where_mistakes_are_one_line_errors(cli, grid, where, fragments):
    one_line_error(cli("runs", "--where", where, check=False), *fragments)


def test_group_by_table_csv_and_latex(cli, grid):
    text = cli("runs", "--group-by", "norm.kind,optimizer.lr", columns=80).stdout
    assert "18 runs in 6 groups by norm.kind, optimizer.lr" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert any(line.split()[:6] == ["custom", "0.5", "3", "0.9000", "±", "0.0100"] for line in text.splitlines())
    rows = list(csv.DictReader(io.StringIO(cli("runs", "-g", "norm.kind", "--export", "csv",
                                               "--metric", "best_val_acc").stdout)))
    assert [r["norm.kind"] for r in rows] == ["builtin", "custom", "none"]
    none = rows[2]
    assert none["runs"] == "6" and float(none["best_val_acc_mean"]) == pytest.approx(0.83)
    assert float(none["best_val_acc_min"]) == pytest.approx(0.80)
    assert float(none["best_val_acc_max"]) == pytest.approx(0.86)
    latex = cli("runs", "-g", "norm.kind", "--export", "latex").stdout
    assert "\\toprule" in latex and "\\midrule" in latex and "\\bottomrule" in latex
    assert "best\\_val\\_acc" in latex and "0.8300 $\\pm$ 0.0237" in latex
    groups = json.loads(cli("runs", "-g", "norm.kind", "--json", "--where", "optimizer.lr == 0.5").stdout)
    assert {g["group"]["norm.kind"]: g["runs"] for g in groups} == {"builtin": 3, "custom": 3, "none": 3}
    one_line_error(cli("runs", "-g", "norm.knd", check=False), "--group-by norm.knd", "norm.kind")
    one_line_error(cli("runs", "--export", "csv", check=False), "--group-by")


def test_compare_many_configurations_against_a_baseline_with_holm(cli, grid):
    text = cli("compare", "--where", "seed >= 0", "--baseline", "norm.kind=none,optimizer.lr=0.1").stdout
    assert "Holm-corrected over the 5 comparisons" in text and "norm.kind=none optimizer.lr=0.1 (baseline)" in text
    rows = list(csv.DictReader(io.StringIO(cli("compare", "--where", "seed >= 0", "--export", "csv", "--baseline",
                                               "norm.kind=none,optimizer.lr=0.1").stdout)))
    assert len(rows) == 6 and [r["baseline"] for r in rows].count("True") == 1
    custom = next(r for r in rows if r["configuration"] == "norm.kind=custom optimizer.lr=0.5")
    assert float(custom["best_val_acc_diff"]) == pytest.approx(0.09)
    ps = [float(r["best_val_acc_p"]) for r in rows if r["best_val_acc_p"]]
    assert sorted(float(r["best_val_acc_p_holm"]) for r in rows if r["best_val_acc_p_holm"]) == \
        pytest.approx(sorted(holm(ps)))
    latex = cli("compare", "--where", "seed >= 0", "--export", "latex").stdout
    assert "(baseline)" in latex and "$^{*}$" in latex and "\\begin{tabular}" in latex
    one_line_error(cli("compare", "--where", "seed >= 0", "--baseline", "norm.kind=none", check=False),
                   "2 configurations match")
    one_line_error(cli("compare", "--where", "seed >= 0", "--baseline", "norm.kind=batch", check=False),
                   "builtin, custom, none")


def test_sweep_jobs_sort_numerically(cli, tmp_path):
    root = tmp_path / "outputs"
    sweep = root / "sweeps" / "20261122-120000-sweep-eeee"
    for job in (0, 1, 2, 10, 11):
        fake_run(root, f"20261122-120000-sweep-eeee-{job}-mlp-none", parent=f"sweeps/{sweep.name}")
    (sweep / "sweep.json").write_text(json.dumps({"id": sweep.name, "status": "completed", "jobs": []}))
    rows = list(csv.DictReader(io.StringIO(cli("compare", sweep.name, "--csv").stdout)))
    assert [r["id"].split("-")[4] for r in rows] == ["0", "1", "2", "10", "11"]


def test_where_selects_for_rm_and_export(cli, grid):
    out = cli("rm", "--where", "norm.kind == 'none' and optimizer.lr == 0.5", "--yes").stdout
    assert "moved 3 to the trash" in out
    assert len(json.loads(cli("runs", "--json").stdout)) == 15
    exported = cli("export", "--where", "seed == 1 and norm.kind == 'custom'", "--format", "json").stdout
    assert len(json.loads(exported)) == 2
    one_line_error(cli("export", check=False), "--where")
    one_line_error(cli("rm", "--where", "seed == 9", "--yes", check=False), "none of the 15 runs")


def test_output_dir_that_is_no_directory_is_an_error(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_error(cli("runs", "--output-dir", str(tmp_path / "file"), check=False), "not a directory")
    assert "0 of 0 runs" in cli("runs", "--output-dir", str(tmp_path / "nowhere")).stdout  # no runs yet


def test_python_api_runs_and_history(grid, tmp_path):
    import bnexp.api as bx

    rows = bx.runs(where="norm.kind == 'custom' and seed == 0", root=grid, config=["optimizer.lr"], frame=False)
    assert sorted(r["optimizer.lr"] for r in rows) == [0.1, 0.5]
    assert {r["norm"] for r in rows} == {"custom"} and all("best_val_acc" in r for r in rows)
    run_dir = grid / "runs" / rows[0]["id"]
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"kind": "train", "step": 1, "loss": 2.0}) + "\n" +
        json.dumps({"kind": "epoch", "epoch": 1, "val": {"acc": 0.5}}) + "\n")
    curves = bx.history(rows[0]["id"], root=grid, frame=False)
    assert curves["train"] == [{"kind": "train", "step": 1, "loss": 2.0}]
    assert curves["epoch"][0]["val.acc"] == 0.5
    with pytest.raises(BnexpError, match="valid kinds"):
        bx.history(rows[0]["id"], root=grid, kinds=["nope"])
    pandas = pytest.importorskip("pandas", reason="pandas is optional (pip install pandas): DataFrame output")
    frame = bx.runs(where="seed == 0", root=grid)
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 6


# -- bnexp import -----------------------------------------------------------------------------


def _tar(path, members):
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"{}"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_import_folder_and_archive_refuses_clashes_or_renames(cli, grid, tmp_path):
    other = tmp_path / "other"
    sweep = other / "sweeps" / "20261122-120000-sweep-eeee"
    fake_run(other, "20261122-120000-sweep-eeee-0-mlp-none", parent=f"sweeps/{sweep.name}")
    (sweep / "sweep.json").write_text(json.dumps({"id": sweep.name, "status": "completed", "jobs": [
        {"id": "20261122-120000-sweep-eeee-0-mlp-none", "dir": "/elsewhere/x"}]}))
    fake_run(other, "20261123-000000-mlp-custom-ffff")
    out = cli("import", str(other)).stdout
    assert "imported 2 runs (1 sweep)" in out
    assert len(json.loads(cli("runs", "--json").stdout)) == 20
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(other, arcname="outputs")
    one_line_error(cli("import", str(archive), check=False), "2 ids already here", "--rename")
    assert len(json.loads(cli("runs", "--json").stdout)) == 20  # nothing imported
    out = cli("import", str(archive), "--rename").stdout
    assert "renamed from 20261122-120000-sweep-eeee" in out
    runs = json.loads(cli("runs", "--json").stdout)
    assert len(runs) == 22 and len({r["id"] for r in runs}) == 22
    renamed = [r for r in runs if "-imported-" in r["id"]]
    assert len(renamed) == 2 and all(os.path.basename(r["dir"]) == r["id"] for r in renamed)
    jobs = json.loads(next((grid / "sweeps").glob("*-imported-*/sweep.json")).read_text())["jobs"]
    assert jobs[0]["id"].startswith(jobs[0]["dir"].rsplit("/", 2)[1]) and os.path.isdir(jobs[0]["dir"])
    assert not [p for p in grid.iterdir() if p.name.startswith(".import-")]


@pytest.mark.parametrize("member, fragment", [
    (_file("../evil"), "points outside"), (_file("/abs/path"), "points outside"),
    (_file("runs/a/../../../x"), "points outside"),
])
def test_import_refuses_paths_leading_outside(cli, tmp_path, member, fragment):
    archive = _tar(tmp_path / "bad.tar.gz", [_file("runs/a/run.json"), member])
    one_line_error(cli("import", str(archive), check=False), fragment)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "x").exists()
    assert not [p for p in (tmp_path / "outputs").iterdir() if not p.name.startswith(".index.sqlite")]


@pytest.mark.parametrize("kind, fragment", [(tarfile.SYMTYPE, "a symlink"), (tarfile.LNKTYPE, "a hard link"),
                                            (tarfile.CHRTYPE, "a device file"), (tarfile.FIFOTYPE, "a FIFO")])
def test_import_refuses_links_and_special_files(cli, tmp_path, kind, fragment):
    info = tarfile.TarInfo("runs/a/thing")
    info.type, info.linkname = kind, "/etc/passwd"
    archive = _tar(tmp_path / "bad.tar.gz", [_file("runs/a/run.json"), (info, None)])
    one_line_error(cli("import", str(archive), check=False), fragment)
    folder = tmp_path / "folder" / "runs" / "a"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text("{}")
    (folder / "link").symlink_to("/etc/passwd")
    one_line_error(cli("import", str(tmp_path / "folder"), check=False), "a symlink")
    assert not (tmp_path / "outputs" / "runs").exists()


def test_import_interrupted_while_moving_leaves_nothing(grid, tmp_path, monkeypatch):
    from bnexp.store import importer

    other = tmp_path / "other"
    for i in range(3):
        fake_run(other, f"20261124-00000{i}-mlp-custom-{i:04x}")
    real_rename, calls = os.rename, []

    def interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(importer.os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        importer.import_runs(other, grid)
    monkeypatch.setattr(importer.os, "rename", real_rename)
    assert not list((grid / "runs").glob("20261124-*"))
    assert not [p for p in grid.iterdir() if p.name.startswith(".import-")]
    stale = grid / f"{importer.STAGING_PREFIX}999999999-abc"  # a killed import's staging folder
    stale.mkdir()
    assert len(importer.import_runs(other, grid)) == 3 and not stale.exists()
