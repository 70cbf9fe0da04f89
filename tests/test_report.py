"""`bnexp report`: figures and report.md from a tiny sweep (norm none / custom / builtin), the
ways runs are named, runs lacking data, and one-line errors for bad targets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bnexp.report import FIGURE_PIXELS, build_report, collect_run_dirs, default_out_dir, load_run
from bnexp.errors import BnexpError
from bnexp.vocab import fmt_number

NORMS = ("none", "custom", "builtin")
# 3 epochs of 4 steps; percentiles at steps 1, 3, 6, 9, 12
TINY_SWEEP = ["model=mlp", "model.hidden_sizes=[16,12]", "model.activation=sigmoid", "optimizer.lr=0.5", "dataset=digits",
              "dataset.limit_train=128", "dataset.limit_val=64", "batch_size=32", "epochs=3", "log_every_steps=2",
              "hist_every_steps=3", "checkpoint=false"]


def cli(*args: str, cwd: Path, output_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("BNEXP_DEBUG", None)
    if output_dir is not None:
        env["BNEXP_OUTPUT_DIR"] = str(output_dir)
    return subprocess.run([sys.executable, "-m", "bnexp", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """One parent directory holding three runs that differ only in the norm (what a sweep over norm makes)."""
    from bnexp.config import load
    from bnexp.train import train

    root = tmp_path_factory.mktemp("sweep")
    for norm in NORMS:
        overrides = [*TINY_SWEEP, f"norm={norm}", f"output_dir={root}"]
        summary = train(load(overrides), overrides, progress=False)
        assert summary.status == "completed"
    return root


def run_ids(sweep: Path) -> dict[str, str]:
    ids = {}
    for run_dir in (sweep / "runs").iterdir():
        ids[json.loads((run_dir / "run.json").read_text())["norm"]] = run_dir.name
    return ids


def assert_png(path: Path, size: tuple[int, int]) -> None:
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 5_000, path
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        image = image.convert("RGB")
        colours = image.getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 20  # lines, bands and text, not a blank canvas
        background = max(colours)[0]
        assert background < 0.97 * size[0] * size[1]


def test_report_of_a_sweep_directory(sweep):
    result = cli("report", str(sweep), cwd=sweep)
    assert result.returncode == 0, result.stderr
    out = sweep / "report"
    for name, size in FIGURE_PIXELS.items():
        assert_png(out / f"{name}.png", size)
        assert str(out / f"{name}.png") in result.stdout
    assert str(out / "report.md") in result.stdout and "3 run(s)" in result.stdout

    text = (out / "report.md").read_text()
    for name in FIGURE_PIXELS:
        assert f"![{name}]({name}.png)" in text
    ids = run_ids(sweep)
    metrics_part = text.split("## Final metrics")[1].split("\n## ")[0]
    table = [line for line in metrics_part.splitlines() if line.startswith("| 20")]
    assert len(table) == 3
    for norm, run_id in ids.items():  # every run, with its own final numbers
        m = json.loads((sweep / "runs" / run_id / "run.json").read_text())["metrics"]
        row = next(line for line in table if line.startswith(f"| {run_id} |"))
        assert f"| {norm} |" in row and f"| {fmt_number(m['val_acc'])} |" in row
        assert f"| {fmt_number(m['val_loss'])} |" in row
        assert f"{fmt_number(m['best_val_acc'])} ({m['best_epoch']})" in row and "| 3 / 12 |" in row
    assert [line.split(" | ")[2] for line in table] == list(NORMS)  # none, custom, builtin order
    # custom and builtin differ only in the norm implementation: compared in their own table
    assert "## Custom vs builtin batch norm" in text
    pair = next(line for line in text.splitlines() if line.startswith(f"| {ids['custom']} | {ids['builtin']} |"))
    # tiny runs of 12 steps: the two implementations agree at every epoch
    assert "| 3 of 3 |" in pair


def test_run_dirs_id_prefixes_and_out(sweep, tmp_path):
    ids = run_ids(sweep)
    out = tmp_path / "chosen"
    # a run directory and a unique id prefix (looked up under --output-dir), into a chosen directory
    result = cli("report", str(sweep / "runs" / ids["none"]), ids["builtin"][:-2], "--output-dir", str(sweep),
                 "--out", str(out), "--title", "two runs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (out / "report.md").read_text()
    assert text.startswith("# two runs") and ids["none"] in text and ids["builtin"] in text
    assert ids["custom"] not in text and "Custom vs builtin" not in text
    for name, size in FIGURE_PIXELS.items():
        assert_png(out / f"{name}.png", size)
    # without --out: a single target's own directory (an id names its run's), several: <root>/reports/<time>
    assert default_out_dir([ids["none"][:-2]], sweep) == sweep / "runs" / ids["none"] / "report"
    assert default_out_dir([str(sweep)], sweep) == sweep / "report"
    assert default_out_dir([str(sweep), ids["none"]], sweep).parent == sweep / "reports"
    # the same runs named twice are reported once
    assert len(collect_run_dirs([str(sweep), str(sweep / "runs" / ids["none"])])) == 3


def test_runs_lacking_data_still_render(sweep, tmp_path):
    """norm=none alone has no gamma/beta; a run without metrics.jsonl is read from its TB events;
    a run without activation records gets an empty panel."""
    ids = run_ids(sweep)
    none_run = tmp_path / "none"
    shutil.copytree(sweep / "runs" / ids["none"], none_run)
    events_only = tmp_path / "events_only"
    shutil.copytree(sweep / "runs" / ids["builtin"], events_only)
    (events_only / "metrics.jsonl").unlink()
    (events_only / "norm_params.json").unlink()

    from_events = load_run(events_only)
    original = load_run(sweep / "runs" / ids["builtin"])
    assert [e["epoch"] for e in from_events.epochs] == [1, 2, 3]
    assert [e["val_acc"] for e in from_events.epochs] == pytest.approx([e["val_acc"] for e in original.epochs])
    assert [t["step"] for t in from_events.train] == [t["step"] for t in original.train]
    assert from_events.activations == [] and from_events.norm_params == {}

    written = build_report([none_run, events_only], tmp_path / "report")
    for name, size in FIGURE_PIXELS.items():
        assert_png(written[name], size)
    text = written["report"].read_text()
    assert ids["none"] in text and ids["builtin"] in text

    alone = build_report([none_run], tmp_path / "alone")
    assert_png(alone["norm_params"], FIGURE_PIXELS["norm_params"])  # "no BN parameters" panels
    assert "Custom vs builtin" not in alone["report"].read_text()


@pytest.mark.parametrize("make_target, message", [
    (lambda tmp: str(tmp / "missing" / "dir"), "no such directory"),
    (lambda tmp: str(tmp), "no runs in this directory"),
    (lambda tmp: "20991231-nothing", "matches '20991231-nothing'"),
])
def test_bad_targets_are_one_line_errors(make_target, message, tmp_path):
    result = cli("report", make_target(tmp_path), cwd=tmp_path, output_dir=tmp_path / "outputs")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_ambiguous_prefix_is_refused(sweep):
    with pytest.raises(BnexpError, match="ambiguous"):
        collect_run_dirs(["20"], root=sweep)


def test_command_module_stays_light():
    """`bnexp --help` must not pay for matplotlib, torch or tensorboard."""
    code = ("import sys, bnexp.commands.report; "
            "print(sorted(m for m in ('matplotlib', 'torch', 'tensorboard') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
