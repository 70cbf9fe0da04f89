"""End-to-end `bnexp train`: run directory, TensorBoard events read back, determinism, divergence."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY, one_line_error, requires_mnist_t10k, write_idx
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def only_run(out):
    runs = [p for p in (out / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_lenet_custom_run_writes_everything(cli):
    result = cli("train", "model=lenet", "norm=custom", *TINY, "hist_every_steps=4", "log_channels=3")
    run = only_run(cli.out)
    assert "completed" in result.stdout and run.name in result.stdout

    summary = json.loads((run / "run.json").read_text())
    assert summary["status"] == "completed" and summary["model"] == "lenet" and summary["norm"] == "custom"
    assert 0 <= summary["metrics"]["val_acc"] <= 1 and summary["metrics"]["step"] == 8
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.model.name == "lenet" and cfg.dataset.limit_train == 256
    assert list(OmegaConf.load(run / "overrides.yaml"))[:2] == ["model=lenet", "norm=custom"]
    kinds = [json.loads(line)["kind"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "epoch", "activation"} <= set(kinds)

    import torch

    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)  # plain tensors and values only
    assert {"model", "optimizer", "scheduler", "progress", "rng"} <= checkpoint.keys()
    assert "norm1.running_mean" in checkpoint["model"] and "norm4.num_batches_tracked" in checkpoint["model"]
    assert checkpoint["model"]["norm1.num_batches_tracked"].item() == 8

    acc = events(run)
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/acc", "train/lr", "train/examples_per_s", "val/loss", "val/acc",
            "epoch/examples_per_s", "final/val_acc", "final/best_val_acc"} <= scalars
    assert {"gamma_channels/norm1/c000", "beta_channels/norm4/c002"} <= scalars
    assert "gamma_channels/norm1/c003" not in scalars  # log_channels=3
    histograms = set(acc.Tags()["histograms"])
    for site in ("norm1", "norm2", "norm3", "norm4"):
        assert {f"activations/{site}/input", f"activations/{site}/output", f"gamma/{site}", f"beta/{site}",
                f"running_mean/{site}", f"running_var/{site}"} <= histograms
    assert [e.step for e in acc.Histograms("gamma/norm1")] == [1, 4, 8]
    hparams = acc.PluginTagToContent("hparams")
    assert {"_hparams_/session_start_info", "_hparams_/session_end_info"} <= hparams.keys()
    assert "_hparams_/experiment" not in hparams  # the table's columns: one per sweep / dashboard (bnexp.views.dashboard)
    assert not [p for p in run.iterdir() if p.is_dir()], "HParams must not create a sub-run"
    norm_params = json.loads((run / "norm_params.json").read_text())
    assert len(norm_params["norm3"]["gamma"]) == 120


def test_norm_none_logs_preactivations_at_the_same_sites(cli):
    cli("train", "model=convnet", "norm=none", *TINY, "hist_every_steps=4")
    acc = events(only_run(cli.out))
    histograms = set(acc.Tags()["histograms"])
    assert {"activations/norm1/output", "activations/norm2/output"} <= histograms
    assert not any(tag.startswith("gamma/") for tag in histograms)


def test_same_seed_same_metrics(cli):
    for _ in range(2):
        cli("train", *TINY, "epochs=2", "seed=3", "hist_every_steps=0")
    runs = sorted((cli.out / "runs").iterdir())
    assert len(runs) == 2 and runs[0].name != runs[1].name
    first, second = (json.loads((r / "run.json").read_text())["metrics"] for r in runs)
    for key in ("train_loss", "val_loss", "val_acc"):
        assert first[key] == second[key]


def test_cfg_prints_composed_config_without_training(cli):
    result = cli("train", "--cfg", "model=lenet", "optimizer=adamw", "optimizer.lr=0.002")
    cfg = OmegaConf.create(result.stdout)
    assert cfg.model.name == "lenet" and cfg.optimizer.name == "adamw" and cfg.optimizer.lr == 0.002
    assert not cli.out.exists()


def test_train_help_lists_groups_and_options(cli):
    text = cli("train", "--help").stdout
    for line in ("model: convnet, lenet, mlp, resnet", "norm: batch_renorm, builtin, custom, frozen, group, layer, none", "optimizer: adam, adamw, sgd",
                 "device: auto, cpu, cuda, mps", "dataset: cifar10, digits, fashion_mnist, idx, mnist"):
        assert line in text


def test_nan_loss_stops_the_run_as_diverged(cli):
    result = cli("train", *TINY, "norm=none", "optimizer.lr=1e30", "-q", check=False)
    assert result.returncode == 3
    one_line_error(result, "diverged", "optimizer.lr")
    summary = json.loads((only_run(cli.out) / "run.json").read_text())
    assert summary["status"] == "diverged" and "loss became" in summary["message"]


def test_torchvision_mnist_path_trains_on_local_files(cli, tmp_path):
    """dataset=mnist through torchvision.datasets.MNIST, fed with tiny IDX files (no network)."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 64), ("t10k", 32)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)), compress=False)
        write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, count), compress=False)
    cli("train", "dataset=mnist", f"dataset.root={tmp_path / 'data'}", "epochs=1", "batch_size=16",
        "hist_every_steps=0")
    summary = json.loads((only_run(cli.out) / "run.json").read_text())
    assert summary["status"] == "completed" and summary["dataset"] == "mnist" and summary["metrics"]["step"] == 4


def test_real_mnist_t10k_through_idx(cli):
    path = requires_mnist_t10k()
    cli("train", "dataset=idx", f"dataset.path={path}", "dataset.limit_train=2000", "model=convnet",
        "epochs=1", "hist_every_steps=0")
    summary = json.loads((only_run(cli.out) / "run.json").read_text())
    assert summary["metrics"]["val_acc"] > 0.5  # one epoch on 2,000 real digits is well above chance


def test_help_does_not_import_torch():
    code = ("import sys; sys.argv = ['bnexp', '--help']\n"
            "from bnexp.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'hydra', 'tensorboard', 'matplotlib', 'omegaconf') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_composing_and_checking_a_config_does_not_import_torch():
    code = ("import sys\n"
            "from bnexp.config.compose import load\n"
            "cfg = load(['model=lenet', 'norm=builtin', 'optimizer=adam'])\n"
            "print('TORCH', 'torch' in sys.modules, cfg.optimizer.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "TORCH False adam" in out


@pytest.mark.parametrize("args, message", [
    (["model=foo"], "model=foo: no such option; valid model options: convnet, lenet, mlp, resnet"),
    (["optimizer.lr=-1"], "optimizer.lr=-1.0: must be > 0"),
    (["epochs=0"], "epochs=0: must be >= 1"),
    (["batch_size=1"], "batch_size=1 with norm=custom"),
    (["foo=1"], "unknown config key 'foo'"),
    (["model.width=3"], "unknown config key 'model.width'; valid keys under model:"),
    (["epochs"], "malformed override 'epochs'"),
    (["epochs=abc"], "epochs='abc': expected an integer"),
    (["norm=batch"], "valid norm options: batch_renorm, builtin, custom, frozen, group, layer, none"),
    (["dataset=idx", "dataset.path=/nonexistent"], "/nonexistent"),
])
def test_bad_input_is_one_line_before_any_work(cli, args, message):
    one_line_error(cli("train", *args, check=False), message)
    assert not cli.out.exists(), "a rejected run must leave nothing on disk"


def test_cuda_without_cuda_is_one_line(cli):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = cli("train", "device=cuda", check=False)
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: device=cuda: CUDA is not available on this machine; use device=cpu or device=auto")
    assert not cli.out.exists()
