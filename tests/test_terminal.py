"""The terminal experience: tables that fit 80/100/120 columns, help text, bad options, curves in the
terminal, export, tags and notes, the trash, seed statistics in compare, resume and timing lines.

Runs are made by hand (`fake_run` plus a metrics.jsonl) except where training itself is the subject.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import fake_run, one_line_error
from rich.cells import cell_len

from bnexp.views.terminal import Column, FittedTable, Series, line_plot, wrap_text

WIDTHS = (80, 100, 120)
DESCRIPTION = ("MLP 784-100-10 with BN, ReLU, SGD lr 0.1, 10 epochs on MNIST. Offline: dataset=idx "
               "dataset.path=../shared/data/mnist-t10k")
LONG_OVERRIDES = ["model=mlp", "optimizer.lr=0.18", "model.hidden_sizes=[100,100,100]", "norm.momentum=0.2",
                  "epochs=20", "batch_size=128", "output_dir=/x"]


def fits(text: str, width: int) -> list[str]:
    """Every line of ``text`` is at most ``width`` cells wide; returns the lines."""
    lines = text.splitlines()
    too_wide = [line for line in lines if cell_len(line) > width]
    assert not too_wide, f"{len(too_wide)} lines wider than {width}:\n" + "\n".join(too_wide)
    return lines


def with_history(run_dir: Path, epochs: int = 5, rates=None, torn: bool = False) -> Path:
    """A metrics.jsonl as the trainer writes it: 4 training logs and one epoch record per epoch."""
    rates = rates or [10_000.0] * epochs
    lines = []
    for epoch in range(1, epochs + 1):
        for k in range(1, 5):
            step = (epoch - 1) * 4 + k
            lines.append({"kind": "train", "step": step, "epoch": epoch, "loss": 2.0 / step, "acc": 1 - 1 / (step + 1),
                          "lr": 0.1, "examples_per_s": rates[epoch - 1]})
        lines.append({"kind": "activation", "step": epoch * 4, "epoch": epoch, "site": "norm1",
                      "input": {"p15": -1.0, "p50": 0.0, "p85": 1.0}})
        lines.append({"kind": "epoch", "train_loss": 1.0 / epoch, "train_acc": 0.8 + epoch / 100, "lr": 0.1,
                      "examples_per_s": rates[epoch - 1], "val_loss": 1.2 / epoch, "val_acc": 0.7 + epoch / 50,
                      "best_val_acc": 0.7 + epoch / 50, "best_epoch": epoch, "epoch": epoch, "step": epoch * 4})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (run_dir / "metrics.jsonl").write_text(text + ('{"kind": "train", "st' if torn else ""))
    return run_dir


@pytest.fixture
def runs(cli):
    """Two seeded configurations (norm custom/none, seeds 0-2), a named run with long overrides, a
    diverged one with a huge loss, an interrupted one."""
    root = cli.out
    for seed in range(3):
        with_history(fake_run(root, f"20261122-12000{seed}-mlp-custom-c{seed}c{seed}", seed=seed,
                              best=0.9 + seed / 100))
        with_history(fake_run(root, f"20261122-13000{seed}-mlp-none-d{seed}d{seed}", norm="none", seed=seed,
                              best=0.85 + seed * 0.012))
    noted = with_history(fake_run(root, "20261121-100000-mlp-none-noted-bbbb", norm="none", lr=0.5,
                                  overrides=LONG_OVERRIDES))
    record = json.loads((noted / "run.json").read_text())
    record.update(name="noted", experiment="mlp_mnist", dataset="idx", dataset_path="/data/mnist-t10k",
                  repro={"command": "bnexp train name=noted experiment=mlp_mnist", "cwd": "/home/me",
                         "python": "3.11.7", "torch": "2.14.1", "bnexp": "0.2.0", "host": "gpu-box", "device": "cpu",
                         "threads": 2, "git_commit": "0123456789abcdef0123", "git_dirty": True})
    (noted / "run.json").write_text(json.dumps(record))
    with open(noted / "config.yaml", "a") as config:
        config.write(f"description: {json.dumps(DESCRIPTION)}\n")
    diverged = fake_run(root, "20261121-110000-mlp-none-dddd", norm="none", status="diverged")
    record = json.loads((diverged / "run.json").read_text())
    record["metrics"]["train_loss"] = 1.91e20
    (diverged / "run.json").write_text(json.dumps(record))
    fake_run(root, "20261121-120000-lenet-builtin-eeee", model="lenet", norm="builtin", status="interrupted")
    return root


# --- the layout engine --------------------------------------------------------------------------


def test_wrap_text_breaks_between_words_and_long_tokens_after_separators():
    assert wrap_text("optimizer.lr=0.18 norm.kind=custom", 20) == ["optimizer.lr=0.18", "norm.kind=custom"]
    assert wrap_text("/very/long/path/to/a/run/directory", 16) == ["/very/long/path/", "to/a/run/", "directory"]
    assert wrap_text("line one\nline two", 40) == ["line one", "line two"]


def test_columns_give_way_by_priority_and_never_overflow():
    table = FittedTable([Column("id"), Column("extra", priority=2), Column("wrapped", wrap=True, priority=1),
                         Column("acc", "right")],
                        [["run-" + "x" * 20, "e" * 30, "alpha=1 beta=2 gamma=3", "0.9531"]])
    for width in (40, 50, 60, 100):
        text = "\n".join("".join(t for t, _ in line) for line in table.lines(width))
        fits(text, width)
        assert "run-" + "x" * 20 in text and "0.9531" in text
    narrow = "\n".join("".join(t for t, _ in line) for line in table.lines(50))
    assert "not shown at 50 columns: extra" in narrow and "beta=2" in narrow  # wrapped, not dropped
    wide = FittedTable(table.columns, [[t for t, _ in table.rows[0]]], wide=True)
    assert len("".join(t for t, _ in wide.lines(40)[2])) > 40  # --wide: full width whatever the terminal


def test_line_plot_fits_reads_without_colour_and_survives_a_blow_up():
    series = [Series("a", [1, 2, 3, 4], [0.5, 0.7, 0.8, 0.85]), Series("b", [1, 2, 3], [0.4, 0.6, 0.65])]
    lines = line_plot(series, 80, title="val acc")
    fits("\n".join(lines), 80)
    body = "\n".join(lines[1:13])
    assert "*" in body and "o" in body and "* a" in lines[-1] and "o b" in lines[-1]
    assert "0.8500" in body and "0.4000" in body  # the y-axis names its range
    exploded = line_plot([Series("loss", [1, 2, 3, 4], [2.3, 1.0, 1.91e20, float("nan")])], 60, title="loss")
    assert "log scale" in exploded[-1] and "1.910e+20" in "\n".join(exploded)
    assert line_plot([Series("none", [1], [None])], 60, title="t")[1].strip() == "(no values to plot)"


# --- every table at 80/100/120 columns ------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_runs_table_fits_and_keeps_id_status_accuracy(cli, runs, width):
    lines = fits(cli("runs", columns=width).stdout, width)
    text = "\n".join(lines)
    for run_id in ("20261122-120000-mlp-custom-c0c0", "20261121-100000-mlp-none-noted-bbbb"):
        row = next(line for line in lines if line.startswith(run_id))
        assert "completed" in row
    assert re.search(r"20261122-120002-mlp-custom-c2c2 .*completed +0\.9200", text)
    assert "interrupted" in text and "diverged" in text
    if width < 120:
        assert "not shown at" in text and "--wide" in text


def test_runs_wide_shows_every_override_whole(cli, runs):
    out = cli("runs", "--wide", columns=80).stdout
    assert "model.hidden_sizes=[100,100,100]" in out and "optimizer.lr=0.18" in out and "not shown" not in out
    assert max(cell_len(line) for line in out.splitlines()) > 80


@pytest.mark.parametrize("width", WIDTHS)
def test_show_fits_with_long_overrides_repro_and_curves(cli, runs, width):
    text = "\n".join(fits(cli("show", "noted", "--curves", columns=width).stdout, width))
    assert "run 20261121-100000-mlp-none-noted-bbbb" in text and "completed" in text
    assert "model.hidden_sizes=[100,100,100]" in text  # the detail view: every override, whole
    for fragment in ("bnexp train name=noted experiment=mlp_mnist", "0123456789ab + uncommitted changes",
                     "python 3.11.7, torch 2.14.1, bnexp 0.2.0", "gpu-box / cpu, 2 threads", "mlp_mnist",
                     "idx (/data/mnist-t10k)", "validation accuracy by epoch", "per-epoch history"):
        assert fragment in text, fragment
    assert all(word in text for word in DESCRIPTION.split())  # the preset's description, not cut


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_fits_in_blocks_with_seed_statistics(cli, runs, width):
    ids = [p.name for p in sorted((runs / "runs").glob("20261122-1*"))]
    text = "\n".join(fits(cli("compare", *ids, columns=width).stdout, width))
    for short in ("120000-mlp-custom-c0c0", "130002-mlp-none-d2d2"):
        assert short in text
    assert text.count("completed") == 6 and "0.9200" in text
    assert "norm.kind=custom      3  0.9100 ± 0.0100" in text
    assert re.search(r"best_val_acc +-0\.04800 +0\.0065\d+ +larger than seed noise", text)


def test_compare_seed_cells_and_csv_keeps_one_row_per_run(cli, runs):
    ids = [p.name for p in sorted((runs / "runs").glob("20261122-1*"))]
    rows = list(csv.DictReader(io.StringIO(cli("compare", *ids, "--csv").stdout)))
    assert [r["id"] for r in rows] == ids and {r["seed"] for r in rows} == {"0", "1", "2"}
    single_seeds = cli("compare", ids[0], ids[3]).stdout  # one run per configuration: no seed statistics
    assert "seed statistics" not in single_seeds
    uneven = cli("compare", *ids[:3], ids[3]).stdout  # 3 seeds against 1
    assert "seed statistics" in uneven and "needs two seeds or more on both sides" in uneven


@pytest.mark.parametrize("width", WIDTHS)
def test_sweep_table_and_restore_list_fit(cli, width):
    sweep = cli.out / "sweeps" / "20261122-140000-sweep-ffff"
    for i, lr in enumerate((0.01, 0.1, 0.5)):
        fake_run(cli.out, f"20261122-140000-sweep-ffff-{i}-mlp-custom", parent=f"sweeps/{sweep.name}", lr=lr,
                 overrides=[f"optimizer.lr={lr}", "model.hidden_sizes=[256,256,256,256]", "norm.momentum=0.01"])
    (sweep / "sweep.json").write_text(json.dumps({"id": sweep.name, "kind": "grid", "status": "completed",
                                                  "swept": ["optimizer.lr", "model.hidden_sizes", "norm.momentum"],
                                                  "metric": "best_val_acc", "jobs": []}))
    text = "\n".join(fits(cli("show", sweep.name, columns=width).stdout, width))
    assert "model.hidden_sizes=[256,256,256,256]" in text and text.count("completed") >= 3
    cli("rm", f"{sweep.name}-1", "--yes")
    listing = "\n".join(fits(cli("restore", columns=width).stdout, width))
    assert f"{sweep.name}-1-mlp-custom" in listing


@pytest.mark.parametrize("width", WIDTHS)
def test_train_summary_fits(cli, tiny, width, monkeypatch, capsys):
    from bnexp.commands.train import print_summary
    from bnexp.store.record import read_record

    cli("train", *tiny, "epochs=2", "name=summary", "-q")
    run_dir = next((cli.out / "runs").iterdir())
    record = read_record(run_dir)
    record.dir = str(run_dir)
    monkeypatch.setenv("COLUMNS", str(width))
    print_summary(record)
    text = "\n".join(fits(capsys.readouterr().out, width))
    assert "completed" in text and run_dir.name in text and "mean over the run" in text
    assert re.search(r"throughput +[\d,]+ examples/s last epoch", text)
    assert isinstance(record.metrics["mean_examples_per_s"], float)


# --- timing honesty ---------------------------------------------------------------------------------


def test_throughput_collapse_gives_a_threads_hint(cli):
    from bnexp.commands.train import throughput_hint
    from bnexp.store.record import read_record

    steady = with_history(fake_run(cli.out, "20261120-100000-mlp-custom-aaaa"), epochs=4)
    collapsed = with_history(fake_run(cli.out, "20261120-110000-mlp-custom-bbbb"), epochs=4,
                             rates=[3000.0, 12000.0, 11000.0, 2500.0])
    slow_start = with_history(fake_run(cli.out, "20261120-120000-mlp-custom-cccc"), epochs=3,
                              rates=[1000.0, 12000.0, 12000.0])
    hints = {}
    for run_dir in (steady, collapsed, slow_start):
        record = read_record(run_dir)
        record.dir = str(run_dir)
        hints[run_dir] = throughput_hint(record)
    assert hints[steady] is None and hints[slow_start] is None  # the first epoch warms up
    assert "2,500 examples/s in epoch 4, from 12,000" in hints[collapsed] and "threads=1" in hints[collapsed]


def test_mean_rate_is_total_examples_over_total_time():
    from bnexp.engine.loop import mean_rate

    metrics = {"examples_per_s": 1000.0}
    mean = mean_rate(metrics, 1)
    for epoch, rate in ((2, 250.0), (3, 1000.0)):
        metrics.update(examples_per_s=rate, mean_examples_per_s=mean)
        mean = mean_rate(metrics, epoch)
    assert mean == pytest.approx(3 / (1 / 1000 + 1 / 250 + 1 / 1000))  # equal epochs: 3 N over the 3 times


# --- help, version, completion, bad options ------------------------------------------------------------


@pytest.mark.parametrize("args", [("--help",), ("runs", "--help"), ("rm", "--help"), ("train", "--help")])
def test_help_has_no_bool_placeholders(cli, args):
    out = cli(*args, columns=100).stdout
    assert "<bool>" not in out and "--help" in out


def test_epilog_examples_wrap_with_a_hanging_indent(cli):
    out = cli("train", "--help", columns=60).stdout
    lines = [line.rstrip() for line in out.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Examples: bnexp train"))
    example_lines = lines[start:start + 6]
    assert all(line.startswith("  ") for line in example_lines[1:] if line.strip())  # nothing flush-left
    assert any("model=convnet" in line and line.startswith(" " * 12) for line in example_lines)
    fits(out, 60)
    export_help = cli("export", "--help", columns=60).stdout.splitlines()
    at = next(i for i, line in enumerate(export_help) if line.strip() == "Examples:")
    assert [line.strip().split()[:2] for line in export_help[at + 1:at + 3]] == [["bnexp", "export"]] * 2
    assert "\u200b" not in out + "\n".join(export_help)  # nothing invisible to copy along with a command


def test_version_and_shell_completion(cli, monkeypatch):
    from bnexp import __version__

    assert cli("--version").stdout.strip() == f"bnexp {__version__}"
    assert "--install-completion" in cli("--help").stdout
    # name the shell: detecting it from the parent processes depends on how the tests were started
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    script = cli("--show-completion", "bash").stdout
    assert "_bnexp_completion" in script and "_BNEXP_COMPLETE=complete_bash" in script
    fake_run(cli.out, "20261121-100000-mlp-none-noted-bbbb")

    def complete(words: str) -> list[str]:
        env = {**os.environ, "_BNEXP_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - 1), "BNEXP_OUTPUT_DIR": str(cli.out)}
        script = Path(sys.executable).parent / "bnexp"  # the installed entry point, as a shell calls it
        return subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=120).stdout.split()

    assert complete("bnexp cur") == ["curves"]
    assert complete("bnexp show not") == ["noted"]  # run ids and names complete too
    assert complete("bnexp compare 20261121-1") == ["20261121-100000-mlp-none-noted-bbbb"]


def test_unknown_option_is_one_error_line(cli):
    one_line_error(cli("--bogus", check=False), "No such option: --bogus")
    one_line_error(cli("runs", "--bogus", check=False), "No such option: --bogus", "bnexp runs --help")


@pytest.mark.parametrize(("option", "value", "valid"), [
    ("--norm", "batch", "batch_renorm, builtin, custom, frozen, group, layer, none"), ("--model", "vgg", "convnet, lenet, mlp, resnet"),
    ("--dataset", "imagenet", "digits"), ("--experiment", "nope", "mlp_mnist"), ("--status", "done", "completed"),
    ("--sort", "colour", "best_val_acc"), ("--since", "yesterday", "2w")])
def test_runs_filter_values_that_name_nothing_are_errors(cli, runs, option, value, valid):
    one_line_error(cli("runs", option, value, check=False), option, value, valid)


def test_one_output_dir_option_everywhere(cli):
    for command in ("runs", "show", "compare", "rm", "restore", "tag", "note", "export", "curves", "report",
                    "tensorboard"):
        assert "--output-dir" in cli(command, "--help", columns=200).stdout, command
        assert "--root" not in cli(command, "--help", columns=200).stdout, command


# --- runs you can name and find ------------------------------------------------------------------------


def test_filters_by_experiment_dataset_name_and_tag(cli, runs):
    def ids(*args):
        return [r["id"] for r in json.loads(cli("runs", "--json", *args).stdout)]

    noted = "20261121-100000-mlp-none-noted-bbbb"
    assert ids("--experiment", "mlp_mnist") == [noted]
    assert ids("--dataset", "idx") == [noted] == ids("--dataset", "/data/mnist-t10k")
    assert len(ids("--dataset", "digits")) == 8
    assert ids("--name", "noted") == [noted] == ids("--name", "no*")
    assert ids("--name", "other") == []
    cli("tag", "noted", "baseline", "keep")
    cli("tag", "20261122-120000", "keep")
    assert set(ids("--tag", "keep")) == {noted, "20261122-120000-mlp-custom-c0c0"}
    assert ids("--tag", "keep", "--tag", "baseline") == [noted]
    listed = json.loads(cli("runs", "--json", "--name", "noted").stdout)[0]
    assert listed["experiment"] == "mlp_mnist" and listed["dataset_path"] == "/data/mnist-t10k"
    assert listed["tags"] == ["baseline", "keep"] and listed["note"] is None and listed["repro"]["host"] == "gpu-box"
    assert "tags" in cli("runs", columns=120).stdout  # a tags column once any run has tags


def test_show_by_name_and_ambiguous_names(cli, runs):
    assert "run 20261121-100000-mlp-none-noted-bbbb" in cli("show", "noted").stdout
    fake_run(runs, "20261123-100000-mlp-custom-noted-ffff")
    one_line_error(cli("show", "noted", check=False), "'noted' is ambiguous")


def test_tag_note_and_remove(cli, runs):
    run_dir = runs / "runs/20261121-100000-mlp-none-noted-bbbb"
    cli("tag", "noted", "baseline", "keep")
    cli("tag", "noted", "keep", "--remove")
    cli("note", "noted", "lr 0.5 [diverges] without BN")
    assert json.loads((run_dir / "labels.json").read_text()) == {"tags": ["baseline"],
                                                                 "note": "lr 0.5 [diverges] without BN"}
    assert "lr 0.5 [diverges] without BN" in cli("note", "noted").stdout
    shown = cli("show", "noted").stdout
    assert re.search(r"tags +baseline", shown) and "[diverges]" in shown
    cli("note", "noted", "--clear")
    assert json.loads(cli("show", "noted", "--json").stdout)["note"] is None
    one_line_error(cli("tag", "noted", "two words", check=False), "tag 'two words'")
    one_line_error(cli("tag", "noted", "--remove", check=False), "--remove needs the tags")
    every = cli("tag", str(run_dir.parent), "all").stdout.splitlines()  # a folder of runs: each one is tagged
    assert len(every) == 9 and all(line.endswith(" all") for line in every)


def test_labels_survive_the_trainer_rewriting_run_json(cli, runs):
    """The trainer rewrites run.json from memory while it trains: a tag added meanwhile must stay."""
    from bnexp.store.record import read_record
    from bnexp.store.run import Run

    run_dir = runs / "runs/20261121-120000-lenet-builtin-eeee"
    run = Run.open(run_dir)
    try:
        run.begin()
        cli("tag", "20261121-120000", "watched")
        cli("note", "20261121-120000", "tagged while training")
        run.record.metrics["val_acc"] = 0.5
        run.save()
    finally:
        run.finish("completed", None)
        run.close()
    listed = json.loads(cli("runs", "--json", "--tag", "watched").stdout)
    assert [r["id"] for r in listed] == [run_dir.name] and listed[0]["note"] == "tagged while training"
    assert "tags" not in json.loads((run_dir / "run.json").read_text()) and read_record(run_dir).status == "completed"


def test_concurrent_tagging_keeps_every_tag(runs):
    from bnexp.store.labels import read_labels, update_labels

    run_dir = runs / "runs/20261121-100000-mlp-none-noted-bbbb"
    threads = [threading.Thread(target=update_labels, args=(run_dir,), kwargs={"add": [f"t{i}"]}) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(read_labels(run_dir).tags) == sorted(f"t{i}" for i in range(12))


def test_a_damaged_labels_file_hides_no_run(cli, runs):
    (runs / "runs/20261121-100000-mlp-none-noted-bbbb/labels.json").write_text("{not json")
    listed = json.loads(cli("runs", "--json", "--name", "noted").stdout)
    assert listed[0]["tags"] == [] and "not valid JSON" in listed[0]["labels_error"]
    one_line_error(cli("tag", "noted", "x", check=False), "labels.json", "not valid JSON")


# --- soft delete ------------------------------------------------------------------------------------------


def test_rm_moves_to_the_trash_and_restore_brings_it_back(cli, runs):
    run_dir = runs / "runs/20261121-100000-mlp-none-noted-bbbb"
    cli("tag", "noted", "keep")
    out = cli("rm", "noted", "--yes").stdout
    assert "moved 1 to the trash" in out and not run_dir.exists()
    assert "noted" not in cli("runs", "--wide").stdout  # the registry skips the trash
    assert "20261121-100000-mlp-none-noted-bbbb" in cli("restore").stdout
    cli("restore", "noted")  # by its name= label, as in place
    assert (run_dir / "run.json").is_file() and json.loads((run_dir / "labels.json").read_text())["tags"] == ["keep"]
    assert "is empty" in cli("restore").stdout


def test_restore_refuses_a_taken_place_and_a_missing_sweep(cli, runs):
    run_dir = runs / "runs/20261121-100000-mlp-none-noted-bbbb"
    cli("rm", "noted", "--yes")
    fake_run(runs, run_dir.name)  # something new at the old place
    one_line_error(cli("restore", run_dir.name, check=False), "exists again")
    sweep = runs / "sweeps/20261122-150000-sweep-abcd"
    fake_run(runs, f"{sweep.name}-0-mlp-none", parent=f"sweeps/{sweep.name}")
    (sweep / "sweep.json").write_text(json.dumps({"id": sweep.name, "status": "completed", "jobs": []}))
    cli("rm", f"{sweep.name}-0", "--yes")
    cli("rm", sweep.name, "--yes")
    one_line_error(cli("restore", f"{sweep.name}-0", check=False), "restore the sweep it belonged to first")
    cli("restore", sweep.name)
    cli("restore", f"{sweep.name}-0")
    assert (sweep / f"{sweep.name}-0-mlp-none" / "run.json").is_file()
    one_line_error(cli("restore", "nothing-like-it", check=False), "nothing in the trash matches")


def test_purge_and_empty_trash_delete_for_good(cli, runs):
    cli("rm", "20261122-120000", "--yes")
    out = cli("rm", "20261122-120001", "--purge", "--yes").stdout
    assert "deleted 1" in out and not (runs / "runs/20261122-120001-mlp-custom-c1c1").exists()
    assert "20261122-120001" not in cli("restore").stdout and "20261122-120000" in cli("restore").stdout
    assert "deleted 1 for good" in cli("rm", "--empty-trash", "--yes").stdout
    assert list((runs / ".trash").iterdir()) == []
    one_line_error(cli("rm", check=False), "name the runs or sweeps")


def test_rm_trashes_a_symlink_itself_never_its_target(cli, tmp_path):
    elsewhere = fake_run(tmp_path / "precious", "20261120-100000-mlp-custom-aaaa")
    link = cli.out / "runs" / "20261121-100000-mlp-custom-link"
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere, target_is_directory=True)
    cli("rm", str(link), "--yes")
    assert not link.is_symlink() and (elsewhere / "run.json").is_file()
    cli("restore", link.name)
    assert link.is_symlink() and link.resolve() == elsewhere.resolve()


# --- curves and export --------------------------------------------------------------------------------------


def test_curves_of_several_runs_overlay_and_fit(cli, runs):
    out = cli("curves", "20261122-120000", "20261122-130001", columns=80).stdout
    fits(out, 80)
    assert "val acc by epoch" in out and "validation loss by epoch" in out
    assert "* 120000-mlp-custom-c0c0" in out and "o 130001-mlp-none-d1d1" in out
    steps = cli("curves", "noted", "--steps", columns=80).stdout
    assert "train loss by step" in steps and "(step)" in steps
    compared = cli("compare", "20261122-120000", "20261122-130001", "--curves", columns=100).stdout
    fits(compared, 100)
    assert "validation accuracy by epoch" in compared and "o 130001-mlp-none-d1d1" in compared


def test_curves_of_a_run_without_history(cli, runs):
    out = cli("curves", "20261121-120000-lenet", columns=80).stdout
    assert "no epoch finished yet" in out and "(no values to plot)" in out


def test_export_csv_and_json_to_stdout_and_file(cli, runs, tmp_path):
    noted = runs / "runs/20261121-100000-mlp-none-noted-bbbb"
    rows = list(csv.DictReader(io.StringIO(cli("export", "noted").stdout)))
    assert len(rows) == 25 and {r["kind"] for r in rows} == {"train", "epoch"}
    assert rows[0]["run"] == noted.name and rows[0]["step"] == "1"
    diagnostics = list(csv.DictReader(io.StringIO(cli("export", "noted", "--kind", "activation").stdout)))
    assert len(diagnostics) == 5 and diagnostics[0]["input.p85"] == "1.0"
    target = tmp_path / "both.json"
    message = cli("export", "noted", "20261122-120000", "--format", "json", "--out", str(target)).stderr
    data = json.loads(target.read_text())
    assert [r["id"] for r in data] == [noted.name, "20261122-120000-mlp-custom-c0c0"]
    assert len(data[0]["epoch"]) == 5 and len(data[0]["train"]) == 20 and data[0]["metrics"]["best_val_acc"] == 0.9
    assert "wrote 50 records of 2 run(s)" in message
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_export_skips_a_torn_last_line_and_names_a_damaged_one(cli, runs, tmp_path):
    with_history(runs / "runs/20261122-120000-mlp-custom-c0c0", torn=True)
    assert len(list(csv.DictReader(io.StringIO(cli("export", "20261122-120000").stdout)))) == 25
    path = runs / "runs/20261122-120001-mlp-custom-c1c1/metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + ["garbage"] + lines[3:]) + "\n")
    one_line_error(cli("export", "20261122-120001", check=False), "metrics.jsonl: line 4")
    one_line_error(cli("export", "noted", "--format", "xml", check=False), "--format xml", "csv, json")
    one_line_error(cli("export", "noted", "--kind", "loss", check=False), "--kind loss", "train, epoch")
    one_line_error(cli("export", "noted", "--out", str(tmp_path / "no/such/dir/x.csv"), check=False),
                   "does not exist")


# --- resume ------------------------------------------------------------------------------------------------


def test_resume_says_where_it_restarts_and_extends_a_finished_run(cli, tiny):
    cli("train", *tiny, "name=grow", "-q")
    run_dir = next((cli.out / "runs").iterdir())
    steps = json.loads((run_dir / "run.json").read_text())["metrics"]["step"]
    extended = cli("train", "resume=grow", "epochs=2", "-q")
    assert f"resuming {run_dir.name} at epoch 2, step {steps}" in extended.stderr
    assert json.loads((run_dir / "run.json").read_text())["metrics"]["epoch"] == 2
    one_line_error(cli("train", "resume=grow", "optimizer.lr=0.5", check=False), "only epochs and max_steps",
                   "optimizer.lr=0.5")


def test_resume_of_an_interrupted_run_says_where_it_restarts(cli, tiny):
    cli("train", *tiny, "name=cut", "-q")
    run_dir = next((cli.out / "runs").iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    steps = record["metrics"]["step"]
    record["status"] = "interrupted"  # as if stopped after epoch 1 of 2
    (run_dir / "run.json").write_text(json.dumps(record))
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("\nepochs: 1\n", "\nepochs: 2\n"))
    resumed = cli("train", "resume=cut", "-q")
    assert f"resuming {run_dir.name} at epoch 2, step {steps}" in resumed.stderr
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
