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

from bnexp.core.errors import BnexpError
from bnexp.core.vocab import fmt_number
from bnexp.views.report.figures import BASE_HEIGHT_PX, FIGURE_WIDTH_PX
from bnexp.views.report.load import collect_run_dirs, load_run
from bnexp.views.report.markdown import build_report, default_out_dir

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
    from bnexp.config.compose import load
    from bnexp.launch.trainer import train

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


ALWAYS = ("curves", "activations", "norm_params")  # the figures every report has


def assert_png(path: Path) -> None:
    """A real figure: full width, at least its base height (a legend below adds rows), not blank."""
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 5_000, path
    with Image.open(path) as image:
        size = image.size
        assert image.format == "PNG" and size[0] == FIGURE_WIDTH_PX and size[1] >= BASE_HEIGHT_PX[path.stem]
        image = image.convert("RGB")
        colours = image.getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 20  # lines, bands and text, not a blank canvas
        background = max(colours)[0]
        assert background < 0.97 * size[0] * size[1]


def test_report_of_a_sweep_directory(sweep):
    result = cli("report", str(sweep), cwd=sweep)
    assert result.returncode == 0, result.stderr
    out = sweep / "report"
    for name in (*ALWAYS, "bn_gap", "gradients"):  # custom and builtin scored batch statistics; hist on
        assert_png(out / f"{name}.png")
        assert str(out / f"{name}.png") in result.stdout
    assert not (out / "batch_size.png").exists()  # one batch size
    assert str(out / "report.md") in result.stdout and "3 run(s)" in result.stdout

    text = (out / "report.md").read_text()
    for name in (*ALWAYS, "bn_gap", "gradients"):
        assert f"![{name}]({name}.png)" in text
    assert "Each configuration ran with one seed" in text and "(n=" not in text  # no seed statistics to give
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
    for name in (*ALWAYS, "bn_gap"):
        assert_png(out / f"{name}.png")
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
    # the TB events hold val/acc_batch_stats; the norm=none run has gradient records in its metrics.jsonl
    assert set(written) == {*ALWAYS, "bn_gap", "gradients", "report"}
    for name in (*ALWAYS, "bn_gap"):
        assert_png(written[name])
    text = written["report"].read_text()
    assert ids["none"] in text and ids["builtin"] in text

    alone = build_report([none_run], tmp_path / "alone")
    assert_png(alone["norm_params"])  # "no BN parameters" panels
    assert "bn_gap" not in alone  # norm=none: no train/eval gap
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


# --- cells of seeds, labels and legends, batch size ------------------------------------------------------


def clone_run(template: Path, dst: Path, settings: dict, final: dict[str, float]) -> Path:
    """A copy of a real run that claims other settings (dotted config keys) and ends with ``final``
    metrics: a fabricated but well-formed run directory, so tests need not train dozens of runs."""
    import yaml

    shutil.copytree(template, dst)
    config = yaml.safe_load((dst / "config.yaml").read_text())
    for key, value in settings.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    (dst / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [json.loads(line) for line in (dst / "metrics.jsonl").read_text().splitlines()]
    last = max(r["epoch"] for r in lines if r["kind"] == "epoch")
    for r in lines:
        if r["kind"] == "epoch" and r["epoch"] == last:
            r.update(final)
    (dst / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    record = json.loads((dst / "run.json").read_text())
    record.update(id=dst.name, norm=config["norm"]["kind"], seed=config["seed"])
    record["metrics"].update(final)
    (dst / "run.json").write_text(json.dumps(record))
    return dst


@pytest.fixture
def figures(monkeypatch) -> dict:
    """The matplotlib figures build_report saves, by file stem, for inspection after the fact."""
    import bnexp.views.report.figures as report

    kept, save = {}, report._save

    def keep(fig, path):
        kept[Path(path).stem] = fig
        return save(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    return kept


def test_runs_of_several_seeds_are_cells_with_mean_std_and_welch(sweep, tmp_path):
    from bnexp.views.stats import summarize, welch

    template = sweep / "runs" / run_ids(sweep)["custom"]
    accs = {"custom": [0.90, 0.91, 0.92], "builtin": [0.95, 0.96, 0.94]}
    dirs = [clone_run(template, tmp_path / "runs" / f"{norm}-{seed}", {"norm.kind": norm, "seed": seed},
                      {"val_acc": acc, "val_acc_batch_stats": acc + 0.01, "val_acc_recalibrated": acc + 0.02 * seed})
            for norm, values in accs.items() for seed, acc in enumerate(values)]
    text = build_report(dirs, tmp_path / "report")["report"].read_text()
    assert "6 run(s) in 2 cell(s)" in text
    labels = text.split("## Labels")[1].split("\n## ")[0]
    assert "| norm=custom (n=3) | `norm.kind=custom` | 0, 1, 2 |" in labels
    seeds = text.split("## Seed statistics")[1].split("\n## ")[0]
    assert "| norm=custom (n=3) | 0.9100 ± 0.0100 (3) |" in seeds
    assert "| norm=builtin (n=3) | 0.9500 ± 0.0100 (3) |" in seeds
    verdict = welch(summarize(accs["custom"]), summarize(accs["builtin"])).verdict()
    assert "larger than seed noise" in verdict and "| `norm.kind` |" in seeds and verdict in seeds
    gap = text.split("## Train/eval gap and recalibration")[1].split("\n## ")[0]
    assert ("| norm=custom (n=3) | 0.9100 ± 0.0100 (3) | 0.9200 ± 0.0100 (3) | 0.9300 ± 0.0300 (3) "
            "| +0.0200 ± 0.0200 | 2 of 3 |") in gap


def short_run(root: Path) -> Path:
    """One epoch of 4 steps with histograms every 100: a single histogram point."""
    from bnexp.config.compose import load
    from bnexp.launch.trainer import train

    overrides = [*TINY_SWEEP[:5], "dataset.limit_train=128", "batch_size=32", "epochs=1", "hist_every_steps=100",
                 "checkpoint=false", f"output_dir={root}"]
    return Path(train(load(overrides), overrides, progress=False).dir)


def many_runs(template: Path, root: Path) -> list[Path]:
    """36 runs that differ in four settings (norm, lr, batch size, momentum), one seed each."""
    import itertools

    combos = itertools.product(NORMS, (0.01, 0.1, 1.0), (16, 64), (0.0, 0.9))
    return [clone_run(template, root / f"run{i:02d}", {"norm.kind": norm, "optimizer.lr": lr, "batch_size": batch,
                                                        "optimizer.momentum": momentum}, {"val_acc": 0.5 + i / 100})
            for i, (norm, lr, batch, momentum) in enumerate(combos)]


def assert_clear_layout(fig) -> None:
    """Every legend lies inside the figure and outside every axes; all each axes draws (tick labels,
    titles, notes) inside the figure; no two axes titles overlap."""
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    box = fig.bbox.padded(1)

    def inside(bb) -> bool:
        return box.x0 <= bb.x0 and bb.x1 <= box.x1 and box.y0 <= bb.y0 and bb.y1 <= box.y1

    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends
    for legend in legends:
        bb = legend.get_window_extent(renderer)
        assert inside(bb), (bb, box)
        assert not any(bb.overlaps(ax.bbox) for ax in fig.axes), "a legend covers an axes"
    for ax in fig.axes:  # what each axes draws: ticks, labels, titles, notes
        assert inside(ax.get_tightbbox(renderer)), ax.get_title()
    titles = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert not any(a.overlaps(b) for i, a in enumerate(titles) for b in titles[i + 1:]), "titles overlap"


def legend_labels(fig) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


@pytest.mark.parametrize("case", ["two runs", pytest.param("36 runs", marks=pytest.mark.slow), "short run"])
def test_legends_never_cover_data_and_nothing_warns(case, sweep, tmp_path, figures, capsys):
    import warnings

    ids = run_ids(sweep)
    if case == "two runs":
        dirs = [sweep / "runs" / ids["none"], sweep / "runs" / ids["builtin"]]
    elif case == "36 runs":
        dirs = many_runs(sweep / "runs" / ids["custom"], tmp_path / "many")
    else:
        dirs = [short_run(tmp_path / "short")]
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a matplotlib (or any) warning fails the test
        written = build_report(dirs, tmp_path / "report")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    for name, fig in figures.items():
        assert_clear_layout(fig)
        assert_png(written[name])
    text = written["report"].read_text()
    if case == "two runs":  # labels name only what differs
        assert legend_labels(figures["curves"]) == ["norm=none", "norm=builtin"]
    elif case == "36 runs":
        labels = legend_labels(figures["curves"])
        assert len(labels) == 36 and len(set(labels)) == 36
        assert "norm=custom batch_size=64 lr=0.1 momentum=0.9" in labels
        assert "| norm=custom batch_size=64 lr=0.1 momentum=0.9 | `norm.kind=custom`, `batch_size=64`, " \
               "`optimizer.lr=0.1`, `optimizer.momentum=0.9` |" in text  # the full mapping
        styles = {(line.get_color(), line.get_linestyle()) for line in figures["curves"].legends[0].get_lines()}
        assert len(styles) == 36  # every line tellable from every other
    else:
        assert legend_labels(figures["curves"]) == ["norm=custom"]
        xlabel = figures["activations"].axes[0].get_xlabel()
        assert "only 1 histogram point" in xlabel and "hist_every_steps=100" in xlabel


def test_accuracy_against_batch_size(sweep, tmp_path, figures):
    template = sweep / "runs" / run_ids(sweep)["custom"]
    acc = {("none", 16): 0.80, ("none", 64): 0.78, ("custom", 16): 0.90, ("custom", 64): 0.93}
    dirs = [clone_run(template, tmp_path / "runs" / f"{norm}-{batch}-{seed}",
                      {"norm.kind": norm, "batch_size": batch, "seed": seed},
                      {"val_acc": value + 0.01 * seed, "val_acc_batch_stats": value + 0.02})
            for (norm, batch), value in acc.items() for seed in (0, 1)]
    written = build_report(dirs, tmp_path / "report")
    assert_png(written["batch_size"])
    accuracy_panel, gap_panel = figures["batch_size"].axes
    lines = {c.get_label(): c.lines[0] for c in accuracy_panel.containers}
    assert sorted(lines) == ["norm=custom", "norm=none"]
    for norm in ("none", "custom"):
        assert list(lines[f"norm={norm}"].get_xdata()) == [16, 64]
        means = [acc[(norm, 16)] + 0.005, acc[(norm, 64)] + 0.005]  # seeds 0 and 1 add 0 and 0.01
        assert list(lines[f"norm={norm}"].get_ydata()) == pytest.approx(means)
    gaps = [c.lines[0].get_ydata() for c in gap_panel.containers]
    assert all(list(g) == pytest.approx([0.015, 0.015]) for g in gaps)
    assert "![batch_size](batch_size.png)" in written["report"].read_text()


# --- figures that never mislead -------------------------------------------------------------------------


def data_artists(ax) -> int:
    """Lines with points, filled bands, scatter points and boxes an axes draws."""
    return (sum(len(line.get_xdata()) > 0 for line in ax.lines) + len(ax.collections)
            + sum(p.get_visible() for p in ax.patches))


def test_coinciding_series_stay_visible_and_bands_stay_readable(sweep, tmp_path, figures):
    """custom and builtin give equal curves: each has its own line style and marker, the thin custom
    line is drawn above the wide builtin one, and the ±std bands are faint fills with edges."""
    from matplotlib.colors import to_rgba

    template = sweep / "runs" / run_ids(sweep)["custom"]
    dirs = [clone_run(template, tmp_path / "runs" / f"{norm}-{seed}", {"norm.kind": norm, "seed": seed}, {})
            for norm in ("none", "custom", "builtin") for seed in (0, 1)]
    build_report(dirs, tmp_path / "report")
    ax = figures["curves"].axes[0]
    lines = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
    custom, builtin = lines["norm=custom (n=2)"], lines["norm=builtin (n=2)"]
    assert list(custom.get_ydata()) == list(builtin.get_ydata())  # the same curve...
    assert (custom.get_linestyle(), custom.get_marker()) != (builtin.get_linestyle(), builtin.get_marker())
    assert custom.get_marker() != builtin.get_marker() and custom.get_linestyle() != builtin.get_linestyle()
    assert custom.get_zorder() > builtin.get_zorder() and custom.get_linewidth() < builtin.get_linewidth()
    styles = [(line.get_linestyle(), line.get_marker()) for line in figures["curves"].legends[0].get_lines()]
    assert len(set(styles)) == 3  # the legend promises three tellable lines
    bands = [c for c in ax.collections if len(c.get_paths())]
    assert bands
    for band in bands:
        assert to_rgba(band.get_facecolor()[0])[3] <= 0.1  # faint: three bands over each other stay readable
        assert band.get_linewidth()[0] > 0 and to_rgba(band.get_edgecolor()[0])[3] >= 0.5  # edged


def test_no_panel_is_empty_or_drops_a_series_silently(sweep, tmp_path, figures):
    """Every panel of every figure draws data or says why not; a series the legend shows but a panel
    cannot draw (effective LR of norm=none) is named under that panel."""
    ids = run_ids(sweep)
    written = build_report([sweep / "runs" / ids[n] for n in NORMS], tmp_path / "report")
    assert "gradients" in written
    for name, fig in figures.items():
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                continue
            assert data_artists(ax) or ax.texts, f"{name}: panel {ax.get_title()!r} is empty without a note"
    effective_lr = figures["gradients"].axes[0]
    assert "not drawn (no norm layer" in effective_lr.get_xlabel() and "norm=none" in effective_lr.get_xlabel()
    assert {line.get_label() for line in effective_lr.lines} == {"norm=custom", "norm=builtin"}
    text = written["report"].read_text()
    assert "What ran (from the runs' config.yaml and run.json): `model.name=mlp`" in text


def test_labels_name_only_what_tells_runs_apart(sweep, tmp_path, figures):
    """Two runs from different datasets differ in dataset.name and dataset.path (and more): the
    legend names the dataset only; report.md lists every differing setting."""
    template = sweep / "runs" / run_ids(sweep)["custom"]
    dirs = [clone_run(template, tmp_path / "runs" / name, {"dataset.name": name, "dataset.path": path,
                                                         "model.hidden_sizes": sizes}, {})
            for name, path, sizes in (("digits", None, [16, 12]), ("idx", "../shared/data/mnist-t10k", [120, 84]))]
    text = build_report(dirs, tmp_path / "report")["report"].read_text()
    assert legend_labels(figures["curves"]) == ["dataset=digits", "dataset=idx"]
    assert "`dataset.path=../shared/data/mnist-t10k`" in text and "`model.hidden_sizes=[120, 84]`" in text
    assert "Labels name the fewest settings that tell the cells apart" in text


def test_training_loss_against_examples_seen_when_batch_sizes_differ(sweep, tmp_path, figures):
    template = sweep / "runs" / run_ids(sweep)["custom"]
    steps = [t["step"] for t in load_run(template).train]
    dirs = [clone_run(template, tmp_path / "runs" / f"b{batch}", {"batch_size": batch}, {}) for batch in (16, 64)]
    build_report(dirs, tmp_path / "report")
    train_panel = figures["curves"].axes[2]
    assert train_panel.get_xlabel().startswith("examples seen")
    xs = {line.get_label(): list(line.get_xdata()) for line in train_panel.lines}
    assert xs["batch_size=16"] == [s * 16 for s in steps] and xs["batch_size=64"] == [s * 64 for s in steps]
    build_report(dirs[:1], tmp_path / "one")  # one batch size: steps are comparable
    assert figures["curves"].axes[2].get_xlabel() == "step"


def preset_run(template: Path, dst: Path, overrides: list[str]) -> Path:
    """A copy of a real run that claims it came from a preset with this description and these overrides."""
    import yaml

    clone_run(template, dst, {"description": "MLP, 3 epochs. MNIST is downloaded by torchvision.", "epochs": 1}, {})
    record = json.loads((dst / "run.json").read_text())
    record.update(experiment="mlp_mnist", overrides=overrides)
    (dst / "run.json").write_text(json.dumps(record))
    (dst / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return dst


def test_preset_description_is_quoted_only_when_it_is_what_ran(sweep, tmp_path):
    template = sweep / "runs" / run_ids(sweep)["custom"]
    kept = preset_run(template, tmp_path / "kept", ["experiment=mlp_mnist", "norm=custom", "seed=3", "threads=1"])
    text = build_report([kept], tmp_path / "r1")["report"].read_text()
    assert "> MLP, 3 epochs. MNIST is downloaded" in text
    changed = preset_run(template, tmp_path / "changed", ["experiment=mlp_mnist", "epochs=1", "dataset=digits"])
    text = build_report([changed], tmp_path / "r2")["report"].read_text()
    assert "MLP, 3 epochs" not in text and "MNIST is downloaded" not in text
    assert ("description of `experiment=mlp_mnist` is not quoted: these runs override what it describes "
            "(`epochs=1`, `dataset=digits`)") in text
    assert "`epochs=1`" in text.split("What ran")[1].split("\n")[0] and "`dataset.name=digits`" in text


def test_an_optuna_search_gets_objective_and_history_plots(sweep, tmp_path, figures):
    """A search's trials as points: objective vs each searched parameter, the history with the best
    so far; no batch-size figure with a legend entry per trial."""
    template = sweep / "runs" / run_ids(sweep)["custom"]
    sweep_dir = tmp_path / "20261205-120000-sweep-abcd"
    trials = [(0.3, 16, 0.90), (0.05, 64, 0.85), (0.8, 32, 0.93), (0.5, 16, 0.91), (0.6, 64, 0.95)]
    for number, (lr, batch, acc) in enumerate(trials):
        clone_run(template, sweep_dir / f"{sweep_dir.name}-{number}-mlp-custom",
                  {"optimizer.lr": lr, "batch_size": batch}, {"best_val_acc": acc})
    space = {"optimizer.lr": json.dumps({"name": "FloatDistribution", "attributes": {"low": 0.01, "high": 1.0,
                                                                                      "log": True, "step": None}}),
             "batch_size": json.dumps({"name": "CategoricalDistribution", "attributes": {"choices": ["16", "64"]}})}
    (sweep_dir / "sweep.json").write_text(json.dumps({
        "id": sweep_dir.name, "status": "completed", "kind": "optuna", "metric": "best_val_acc",
        "swept": ["optimizer.lr", "batch_size"], "space": space, "jobs": []}))
    written = build_report(collect_run_dirs([str(sweep_dir)]), tmp_path / "report")
    assert "batch_size" not in written and "search_objective" in written and "search_history" in written
    assert_png(written["search_objective"])
    lr_panel, batch_panel, *_ = figures["search_objective"].axes
    assert lr_panel.get_xlabel() == "optimizer.lr" and lr_panel.get_xscale() == "log"
    points = lr_panel.collections[0].get_offsets()
    assert sorted(map(tuple, points.tolist())) == sorted((lr, acc) for lr, _, acc in trials)
    assert list(lr_panel.collections[0].get_array()) == [0, 1, 2, 3, 4]  # colour = trial number
    history = figures["search_history"].axes[0]
    best_line = next(line for line in history.lines if line.get_label() == "best so far")
    assert list(best_line.get_ydata()) == [0.90, 0.90, 0.93, 0.93, 0.95]
    assert "best 0.9500 at trial 4 (optimizer.lr=0.6, batch_size=64)" in history.get_title()
    text = written["report"].read_text()
    assert "![search_objective](search_objective.png)" in text and "## Search history" in text
