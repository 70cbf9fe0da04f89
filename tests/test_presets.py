"""The course experiments as presets (conf/experiment/*.yaml): what they compose to, the models they
build, that a command-line dataset wins over the preset's, and that each trains a few steps."""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import requires_mnist_t10k
from torch import nn

from bnexp.config.compose import load
from bnexp.config.groups import config_dir
from bnexp.nn.models import build_model

PRESETS = ["mlp_mnist", "convnet_mnist", "lenet_fashion", "simplenet_mnist", "bn_paper_mnist", "batch_size_study",
           "ics_study", "depth_study", "small_batch_study"]
OFFLINE = "dataset=idx dataset.path=../shared/data/mnist-t10k"
FEW_STEPS = ["max_steps=3", "dataset.limit_train=256", "dataset.limit_val=64", "epochs=1", "log_every_steps=1"]


def layers(model: nn.Module) -> list[str]:
    """A compact description of every layer, e.g. ``Linear(784,100)``, ``BatchNorm1d(100)``, ``ReLU``."""
    out = []
    for module in model.children():
        name = type(module).__name__
        if isinstance(module, nn.Linear):
            out.append(f"Linear({module.in_features},{module.out_features})")
        elif isinstance(module, nn.Conv2d):
            out.append(f"Conv2d({module.in_channels},{module.out_channels},k{module.kernel_size[0]},"
                       f"p{module.padding[0]})")
        elif hasattr(module, "num_features"):
            out.append(f"BN({module.num_features})")
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            out.append(f"{name}({module.kernel_size})")
        else:
            out.append(name)
    return out


@functools.lru_cache(maxsize=None)
def preset_config(preset: str):
    """The composed preset (composing is the slow part of these tests, so once per preset)."""
    return load([f"experiment={preset}"])


def mnist_model(cfg):
    return build_model(cfg.model, cfg.norm, in_channels=1, image_size=(28, 28), num_classes=10)


def test_every_preset_file_is_listed():
    assert sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml")) == sorted(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_describes_itself_and_the_offline_override(preset):
    text = (config_dir() / "experiment" / f"{preset}.yaml").read_text().splitlines()
    assert text[0] == "# @package _global_"
    assert text[1].startswith("# ") and OFFLINE in text[1]  # shown by `bnexp train --help`
    cfg = preset_config(preset)
    assert len(cfg.description) > 80 and OFFLINE in cfg.description
    assert cfg.norm.kind == "custom"  # the norm stays a free choice, custom by default


@pytest.mark.parametrize("preset", PRESETS)
def test_command_line_dataset_and_keys_win_over_the_preset(preset):
    default = preset_config(preset)
    assert default.dataset.name == ("fashion_mnist" if preset == "lenet_fashion" else "mnist")
    cfg = load([f"experiment={preset}", *OFFLINE.split(), "dataset.val_fraction=0.2", "norm=builtin",
                "epochs=2", "optimizer.lr=0.05"])
    assert cfg.dataset.name == "idx" and cfg.dataset.path.endswith("mnist-t10k") and cfg.dataset.val_fraction == 0.2
    assert cfg.norm.kind == "builtin" and cfg.epochs == 2 and cfg.optimizer.lr == 0.05
    # everything else still comes from the preset
    assert cfg.model == default.model and cfg.batch_size == default.batch_size


def test_mlp_mnist():
    cfg = preset_config("mlp_mnist")
    assert layers(mnist_model(cfg)) == ["Flatten", "Linear(784,100)", "BN(100)", "ReLU", "Linear(100,10)"]
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum) == ("sgd", 0.1, 0.0)
    assert (cfg.batch_size, cfg.eval_batch_size, cfg.epochs, cfg.max_steps) == (64, 128, 10, None)


def test_convnet_mnist():
    cfg = preset_config("convnet_mnist")
    model = mnist_model(cfg)
    assert layers(model) == ["Conv2d(1,6,k3,p1)", "BN(6)", "ReLU", "MaxPool2d(2)",
                             "Conv2d(6,16,k5,p0)", "BN(16)", "ReLU", "MaxPool2d(2)", "Flatten", "Linear(400,10)"]
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.batch_size, cfg.epochs) == ("sgd", 0.1, 64, 5)


def test_lenet_fashion():
    cfg = preset_config("lenet_fashion")
    model = mnist_model(cfg)
    assert layers(model) == ["Conv2d(1,6,k5,p2)", "BN(6)", "Sigmoid", "AvgPool2d(2)",
                             "Conv2d(6,16,k5,p0)", "BN(16)", "Sigmoid", "AvgPool2d(2)", "Flatten",
                             "Linear(400,120)", "BN(120)", "Sigmoid", "Linear(120,84)", "BN(84)", "Sigmoid",
                             "Linear(84,10)"]
    assert cfg.model.init == "xavier_uniform"
    for module in model.modules():  # Xavier-uniform weights lie within +-sqrt(6 / (fan_in + fan_out))
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(module.weight)
            assert module.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) + 1e-6
            assert torch.count_nonzero(module.bias) == 0
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.batch_size, cfg.epochs) == ("sgd", 1.0, 256, 10)


def test_simplenet_mnist():
    cfg = preset_config("simplenet_mnist")
    assert layers(mnist_model(cfg)) == ["Flatten", "Linear(784,64)", "BN(64)", "ReLU", "Linear(64,128)", "BN(128)",
                                        "ReLU", "Linear(128,10)"]
    assert cfg.epochs == 20 and cfg.optimizer.name == "sgd"


def test_bn_paper_mnist():
    cfg = preset_config("bn_paper_mnist")
    model = mnist_model(cfg)
    assert layers(model) == ["Flatten", "Linear(784,100)", "BN(100)", "Sigmoid", "Linear(100,100)", "BN(100)",
                             "Sigmoid", "Linear(100,100)", "BN(100)", "Sigmoid", "Linear(100,10)"]
    assert model.norm_sites[-1] == "norm3"  # the last hidden layer's sigmoid input, recorded as unit0
    assert cfg.model.init == "normal" and cfg.model.init_std <= 0.05
    stds = [m.weight.std().item() for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(0.5 * cfg.model.init_std < s < 1.5 * cfg.model.init_std for s in stds)
    assert cfg.batch_size == 60 and cfg.max_steps == 50_000 and cfg.optimizer.name == "sgd"
    # max_steps governs on full MNIST (1,000 steps per epoch), and the percentiles are recorded
    # a few hundred times over the 50,000 steps
    assert cfg.epochs * math.ceil(60_000 / cfg.batch_size) >= cfg.max_steps
    assert 100 <= cfg.max_steps // cfg.hist_every_steps <= 2_000


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_a_few_steps(preset, tmp_path):
    from bnexp.launch.trainer import train

    # batch 32 so that 256 images give 3 steps in one epoch for every preset (lenet_fashion's is 256)
    overrides = [f"experiment={preset}", "dataset=digits", *FEW_STEPS, "batch_size=32", "hist_every_steps=2",
                 f"output_dir={tmp_path}"]
    cfg = load(overrides)
    summary = train(cfg, overrides, progress=False)
    run = tmp_path / "runs" / summary.id
    assert summary.status == "completed" and summary.metrics["step"] == 3
    assert 0.0 <= summary.metrics["val_acc"] <= 1.0 and math.isfinite(summary.metrics["train_loss"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    sites = mnist_model(cfg).norm_sites
    last = [r for r in records if r["kind"] == "activation" and r["site"] == sites[-1]]
    assert [r["step"] for r in last] == [1, 2] and set(last[0]["unit0"]) == {"p15", "p50", "p85"}
    params = json.loads((run / "norm_params.json").read_text())
    assert list(params) == sites and all(len(p["gamma"]) == len(p["beta"]) > 0 for p in params.values())


def test_preset_runs_from_the_command_line(bnexp):
    """`bnexp train experiment=NAME norm=none` on tiny data, through the real CLI."""
    result = bnexp("train", "-q", "experiment=convnet_mnist", "norm=none", "dataset=digits", *FEW_STEPS, "threads=1")
    runs = list((bnexp.out / "runs").iterdir())
    assert len(runs) == 1 and "completed" in result.stdout
    summary = json.loads((runs[0] / "run.json").read_text())
    assert (summary["model"], summary["norm"], summary["lr"], summary["batch_size"]) == ("convnet", "none", 0.1, 64)
    assert json.loads((runs[0] / "norm_params.json").read_text()) == {"norm1": {}, "norm2": {}}


def test_train_help_lists_the_presets_and_their_offline_override():
    result = subprocess.run([sys.executable, "-m", "bnexp", "train", "--help"], capture_output=True, text=True,
                            env={"COLUMNS": "250", "PATH": ""}, timeout=60)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for preset in PRESETS:
        assert f"{preset}:" in text
    assert text.count(OFFLINE) >= len(PRESETS)
    assert "runs on MNIST instead" in text  # lenet_fashion: Fashion-MNIST is not available offline


def test_preset_on_the_local_mnist_test_set(tmp_path):
    data = requires_mnist_t10k()
    from bnexp.launch.trainer import train

    overrides = ["experiment=mlp_mnist", "dataset=idx", f"dataset.path={data}", "dataset.val_fraction=0.2",
                 "norm=builtin", "max_steps=5", "hist_every_steps=0", f"output_dir={tmp_path}"]
    summary = train(load(overrides), overrides, progress=False)
    assert summary.status == "completed" and summary.dataset == "idx" and summary.metrics["step"] == 5
