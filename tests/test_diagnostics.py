"""BN diagnostics (bnexp.tracking.diagnostics): the train/eval gap and recalibration listener, precise BN
itself, gradient / effective-LR telemetry, `bnexp recalibrate`, ghost batches equal to the whole
batch, and the batch-size study preset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY, one_line_error
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import bnexp.nn.batchnorm
from bnexp.config.compose import load
from bnexp.data.datasets import DataBundle
from bnexp.engine.evaluate import evaluate
from bnexp.engine.loop import epoch_batches
from bnexp.engine.recalibrate import recalibrate, recalibration_indices, running_stat_layers
from bnexp.launch.trainer import train
from bnexp.store.lock import DirLock

GAP_KEYS = ("val_loss_batch_stats", "val_acc_batch_stats", "val_loss_recalibrated", "val_acc_recalibrated")
GRAD_TAGS = ("grad_norm", "weight_norm", "effective_lr", "gamma_grad_norm", "beta_grad_norm")


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if "examples_per_s" not in k}


def train_run(root: Path, *overrides: str) -> Path:
    args = [*TINY, "threads=1", f"output_dir={root}", *overrides]
    return Path(train(load(args), args, progress=False).dir)


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Two finished runs to read and recalibrate: custom BN (2 epochs, gradients every 3 steps) and norm=none."""
    root = tmp_path_factory.mktemp("trained")
    return {"custom": train_run(root, "epochs=2", "recalibrate_batches=3", "hist_every_steps=3", "norm=custom"),
            "none": train_run(root, "hist_every_steps=3", "norm=none")}


# --- the listeners in a real run ---------------------------------------------------------------------


def test_epoch_records_carry_the_train_eval_gap_and_gradients(trained):
    run = trained["custom"]
    epochs = records(run, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2]
    for epoch in epochs:
        assert all(0 <= epoch[k] <= 1 for k in GAP_KEYS if "acc" in k) and all(epoch[k] > 0 for k in GAP_KEYS)
    metrics = json.loads((run / "run.json").read_text())["metrics"]
    assert all(metrics[k] == epochs[-1][k] for k in GAP_KEYS)

    grads = records(run, "grad")
    assert sorted({g["step"] for g in grads}) == [1, 3, 6, 9, 12, 15]  # 2 epochs of 8 steps: every 3rd and the first
    assert {g["site"] for g in grads} == {"norm1"}
    for g in grads:
        assert set(GRAD_TAGS) <= set(g) and g["lr"] == 0.1
        assert g["effective_lr"] == pytest.approx(g["lr"] / g["weight_norm"] ** 2)

    acc = events(run)
    scalars = set(acc.Tags()["scalars"])
    assert {f"val/{k[4:]}" for k in GAP_KEYS} <= scalars
    assert {f"{tag}/norm1" for tag in GRAD_TAGS} <= scalars
    assert [e.step for e in acc.Scalars("effective_lr/norm1")] == [1, 3, 6, 9, 12, 15]
    assert [e.step for e in acc.Histograms("grad/norm1")] == [1, 3, 6, 9, 12, 15]
    assert [e.step for e in acc.Scalars("val/acc_recalibrated")] == [8, 16]


def test_norm_none_has_gradients_but_no_gap(trained):
    run = trained["none"]
    (epoch,) = records(run, "epoch")
    assert not set(GAP_KEYS) & set(epoch)
    grads = records(run, "grad")
    assert grads and all("grad_norm" in g and "effective_lr" in g and "gamma_grad_norm" not in g for g in grads)


def test_gradient_telemetry_matches_a_fresh_computation(trained):
    """The first step's figures, recomputed from scratch: same seed, same model, same first batch."""
    from bnexp.config.compose import dataset_settings
    from bnexp.data.datasets import load_dataset
    from bnexp.nn.models import build_model
    from bnexp.store.run import load_saved

    run = trained["custom"]
    cfg, _ = load_saved(run)
    torch.manual_seed(cfg.seed)
    data = load_dataset(dataset_settings(cfg), "cpu")
    model = build_model(cfg.model, cfg.norm, data.in_channels, data.image_size, data.num_classes)
    weight_norm = model.fc1.weight.norm().item()
    idx = epoch_batches(len(data.train_x), cfg.batch_size, cfg.seed, 0, 2)[0]
    nn.functional.cross_entropy(model(data.normalize(data.train_x[idx])), data.train_y[idx]).backward()
    first = next(g for g in records(run, "grad") if g["step"] == 1)
    assert first["weight_norm"] == pytest.approx(weight_norm, rel=1e-6)
    assert first["grad_norm"] == pytest.approx(model.fc1.weight.grad.norm().item(), rel=1e-5)
    assert first["gamma_grad_norm"] == pytest.approx(model.norm1.weight.grad.norm().item(), rel=1e-5)
    assert first["beta_grad_norm"] == pytest.approx(model.norm1.bias.grad.norm().item(), rel=1e-5)
    assert first["effective_lr"] == pytest.approx(cfg.optimizer.lr / weight_norm ** 2, rel=1e-5)


def test_diagnostics_leave_training_unchanged(tmp_path):
    quiet = train_run(tmp_path / "a", "recalibrate_batches=0", "hist_every_steps=0", "optimizer.momentum=0.9")
    watched = train_run(tmp_path / "b", "recalibrate_batches=4", "hist_every_steps=2", "optimizer.momentum=0.9")
    trained_quietly, trained_watched = ([without_timing(r) for r in records(run, "train")] for run in (quiet, watched))
    assert trained_quietly == trained_watched
    (q,), (w,) = records(quiet, "epoch"), records(watched, "epoch")
    assert {k: w[k] for k in without_timing(q)} == without_timing(q)
    assert set(GAP_KEYS) <= set(w) and not {"val_loss_recalibrated"} & set(q)  # recalibration off: not measured
    a, b = (torch.load(r / "checkpoint.pt", weights_only=True) for r in (quiet, watched))
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # BN buffers included
    assert torch.equal(a["rng"], b["rng"])


def test_extended_run_equals_an_uninterrupted_one(cli):
    """Continuing a run repeats nothing and misses nothing: gap, recalibration and gradient records included."""
    common = [*TINY, "threads=1", "recalibrate_batches=3", "hist_every_steps=3", "optimizer.momentum=0.9"]
    cli("train", "-q", *common, "epochs=3", "name=straight")
    cli("train", "-q", *common, "epochs=2", "name=extended")
    (straight,), (extended,) = (list((cli.out / "runs").glob(f"*-{name}-*")) for name in ("straight", "extended"))
    cli("train", "-q", f"resume={extended.name}", "epochs=3")
    for kind in ("train", "epoch", "grad"):
        assert [without_timing(r) for r in records(extended, kind)] == \
               [without_timing(r) for r in records(straight, kind)], kind


# --- precise BN ----------------------------------------------------------------------------------------


def _stats_per_batch(outputs: list[torch.Tensor], ghost: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the batch means and of the unbiased batch variances (per virtual batch with ghosts)."""
    chunks = [c for out in outputs for c in (out.split(ghost) if ghost else [out])]
    return (torch.stack([c.mean(0) for c in chunks]).mean(0), torch.stack([c.var(0) for c in chunks]).mean(0))


@pytest.mark.parametrize("make_norm, ghost", [
    (lambda: nn.BatchNorm1d(5), None),
    (lambda: bnexp.nn.batchnorm.BatchNorm1d(5), None),
    (lambda: bnexp.nn.batchnorm.GhostBatchNorm(nn.BatchNorm1d(5), 4), 4),
    (lambda: bnexp.nn.batchnorm.BatchNorm1d(5, ghost_batch_size=4), 4),
], ids=["torch", "bnexp", "torch-ghost", "bnexp-ghost"])
def test_recalibrate_is_the_plain_average_over_batches(make_norm, ghost):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), make_norm())
    (layer,) = running_stat_layers(model)
    for _ in range(5):  # some training first: exponential averages, 5 (or 10 virtual) batches tracked
        model(torch.randn(8, 3) * 3 + 1)
    tracked, momentum = layer.num_batches_tracked.clone(), layer.momentum
    model.eval()
    batches = [torch.randn(8, 3) * 2 - 1 for _ in range(3)]
    assert recalibrate(model, iter(batches)) == 3
    with torch.no_grad():
        mean, var = _stats_per_batch([model[0](x) for x in batches], ghost)
    torch.testing.assert_close(layer.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.running_var, var, rtol=1e-5, atol=1e-6)
    assert torch.equal(layer.num_batches_tracked, tracked) and layer.momentum == momentum and not model.training
    before = layer.running_mean.clone()
    assert recalibrate(model, iter([])) == 0 and torch.equal(layer.running_mean, before)  # nothing to average


def test_recalibration_draw_is_its_own():
    state = torch.get_rng_state()
    drawn = recalibration_indices(100, 10, seed=0, epoch=1, batches=3)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is not touched
    assert [len(b) for b in drawn] == [10, 10, 10] and len(torch.cat(drawn).unique()) == 30
    assert all(torch.equal(a, b) for a, b in zip(drawn, recalibration_indices(100, 10, 0, 1, 3)))
    assert not torch.equal(drawn[0], recalibration_indices(100, 10, 0, 2, 3)[0])  # a new draw each epoch
    assert not torch.equal(drawn[0], epoch_batches(100, 10, 0, 1, 2)[0])  # not the training shuffle
    assert len(recalibration_indices(101, 10, 0, 1, 100)) == 10  # at most an epoch; no batch of one


def test_batch_stats_validation_joins_a_single_example_tail():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x, y = torch.randn(9, 3), torch.randint(0, 2, (9,))
    data = DataBundle("toy", x, y, x, y, 2, torch.zeros(()), torch.ones(()))
    loss, acc = evaluate(model, data, x, y, 4, batch_stats=True)  # batches of 4 and 5, not 4, 4 and 1
    parts = [evaluate(model, data, x[a:b], y[a:b], 5, batch_stats=True) for a, b in ((0, 4), (4, 9))]
    assert loss == pytest.approx((parts[0][0] * 4 + parts[1][0] * 5) / 9)
    assert acc == pytest.approx((parts[0][1] * 4 + parts[1][1] * 5) / 9)


# --- bnexp recalibrate -----------------------------------------------------------------------------------


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def test_recalibrate_command_reproduces_the_last_epoch_and_keeps_the_checkpoint(trained, tmp_path, cli):
    run = copy_run(trained["custom"], tmp_path)
    original = (run / "checkpoint.pt").read_bytes()
    result = cli("recalibrate", str(run))  # --batches defaults to the run's recalibrate_batches (3)
    metrics = json.loads((run / "run.json").read_text())["metrics"]
    lines = result.stdout.splitlines()
    row = next(line for line in lines if "recalibrated (3 batches of 32)" in line)
    assert f"{metrics['val_acc_recalibrated']:.4f}" in row  # what the trainer measured after the last epoch
    assert f"{metrics['val_acc']:.4f}" in next(line for line in lines if "running statistics" in line)
    assert f"{metrics['val_acc_batch_stats']:.4f}" in next(line for line in lines if "batch statistics" in line)
    assert (run / "checkpoint.pt").read_bytes() == original
    assert sorted(p.name for p in run.glob("checkpoint*")) == ["checkpoint.pt", "checkpoint.recalibrated.pt"]
    assert not list(run.glob(".*.tmp"))
    new = torch.load(run / "checkpoint.recalibrated.pt", weights_only=True)
    old = torch.load(run / "checkpoint.pt", weights_only=True)
    assert not torch.equal(new["model"]["norm1.running_mean"], old["model"]["norm1.running_mean"])
    assert torch.equal(new["model"]["fc1.weight"], old["model"]["fc1.weight"])
    assert new["progress"]["metrics"]["val_acc_recalibrated"] == pytest.approx(metrics["val_acc_recalibrated"])

    more = cli("recalibrate", str(run), "--batches", "8")  # a whole epoch; replaces the recalibrated file only
    assert "recalibrated (8 batches of 32)" in more.stdout and (run / "checkpoint.pt").read_bytes() == original


def test_recalibrate_refuses_what_it_cannot_do(trained, tmp_path, cli):
    none_run = copy_run(trained["none"], tmp_path)
    one_line_error(cli("recalibrate", str(none_run), check=False), "norm=none", "no running statistics")

    run = copy_run(trained["custom"], tmp_path)
    (run / "checkpoint.pt").rename(run / "moved.pt")
    one_line_error(cli("recalibrate", str(run), check=False), "no checkpoint")
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a zip")
    one_line_error(cli("recalibrate", str(run), check=False), "damaged checkpoint")
    assert not (run / "checkpoint.recalibrated.pt").exists()

    (run / "moved.pt").rename(run / "checkpoint.pt")
    lock = DirLock(run).acquire(lambda: "held by this test")  # as a training process holds it
    try:
        one_line_error(cli("recalibrate", str(run), check=False), "being written")
    finally:
        lock.release()
    assert not (run / "checkpoint.recalibrated.pt").exists()
    one_line_error(cli("recalibrate", "20991231-nothing", check=False), "20991231-nothing")
    one_line_error(cli("recalibrate", str(run), "--batches", "0", check=False), "--batches")


# --- ghost batches and the batch-size study ---------------------------------------------------------------


@pytest.mark.parametrize("norm", ["custom", "builtin"])
def test_ghost_batch_of_the_whole_batch_is_plain_bn(norm, tmp_path):
    common = [f"norm={norm}", "epochs=2", "eval_batch_size=32", "recalibrate_batches=2", "hist_every_steps=3"]
    plain = train_run(tmp_path / "plain", *common)
    ghost = train_run(tmp_path / "ghost", *common, "norm.ghost_batch_size=32")  # = batch_size
    for kind in ("train", "epoch", "grad"):
        assert [without_timing(r) for r in records(plain, kind)] == [without_timing(r) for r in records(ghost, kind)]
    a, b = (torch.load(r / "checkpoint.pt", weights_only=True)["model"] for r in (plain, ghost))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    smaller = train_run(tmp_path / "smaller", *common, "norm.ghost_batch_size=8")  # the test can tell them apart
    assert records(smaller, "epoch")[-1]["train_loss"] != records(plain, "epoch")[-1]["train_loss"]


def test_batch_size_study_preset_plans_the_documented_sweep(cli):
    cfg = load(["experiment=batch_size_study"])
    assert cfg.norm.kind == "custom" and list(cfg.model.hidden_sizes) == [100, 100]
    assert "bnexp sweep experiment=batch_size_study norm=none,custom,builtin batch_size=16,64,256" in cfg.description
    result = cli("sweep", "--dry-run", "experiment=batch_size_study", "norm=none,custom,builtin",
                 "batch_size=16,64,256", "dataset=digits")
    assert "9 jobs" in result.stdout


def test_recalibrate_command_module_stays_light():
    """`bnexp --help` must not pay for torch: the command imports it when it runs."""
    import subprocess
    import sys

    code = ("import sys, bnexp.commands.recalibrate; "
            "print(sorted(m for m in ('torch', 'omegaconf') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
