"""The BN-science parts (issue 19): the probes of bnexp.tracking.probes against known answers, batch renorm,
frozen and noisy BN, deep and residual models, and probes that leave training untouched."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import TINY, one_line_error
from torch import nn

from bnexp.config.compose import load
from bnexp.engine.recalibrate import buffers_restored, recalibrate
from bnexp.launch.trainer import train
from bnexp.nn.models import NormNet, build_model, norm_layers
from bnexp.nn.variants import BatchRenorm1d, BatchRenorm2d, FrozenBatchNorm, NoisyNorm
from bnexp.tracking.probes import (
    internal_covariate_shift,
    mean_shift,
    parameter_groups,
    running_stat_error,
    signal_propagation,
    site_stat_layers,
    smoothness,
    symmetric_kl,
)


def tiny_net(norm: str = "custom", depth: int = 3, width: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = load([f"norm={norm}", f"model.depth={depth}", f"model.hidden_sizes=[{width}]"])
    return build_model(cfg.model, cfg.norm, 1, (4, 4), 3)


def batch(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


# --- distribution shift ----------------------------------------------------------------------------


def test_symmetric_kl_and_mean_shift_have_their_closed_forms():
    zero, one = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    assert symmetric_kl(zero, one, zero, one) == 0.0
    # same variance v, means 0 and 1: KL both ways = 1/(2v) each
    assert symmetric_kl(zero, one, one, one) == pytest.approx(1 / (1 + 1e-5), rel=1e-9)
    # same mean, variances 1 and 4: 0.5 * (4 + 1/4 - 2)
    assert symmetric_kl(zero, one, zero, 4 * one) == pytest.approx(0.5 * (4 + 0.25 - 2), rel=1e-4)
    assert mean_shift(zero, 4 * one, 2 * one) == pytest.approx(1.0, rel=1e-5)  # moved by one old std


def test_signal_propagation_reads_each_sites_moments():
    net = NormNet(OrderedDict(fc1=nn.Linear(2, 2), norm1=nn.Identity(), act1=nn.Identity(),
                              fc2=nn.Linear(2, 2), norm2=nn.Identity()))
    with torch.no_grad():
        for fc in (net.fc1, net.fc2):
            fc.weight.copy_(torch.eye(2) * 2)
            fc.bias.copy_(torch.tensor([1.0, -1.0]))
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])  # channel means 1, 2; variances 1, 1
    rows = signal_propagation(net, x)
    assert [r["site"] for r in rows] == ["norm1", "norm2"] and [r["depth"] for r in rows] == [1, 2]
    # norm1 sees 2x + (1, -1): means 3, 3, variances 4, 4; norm2 sees 2 * that + (1, -1): means 7, 5, variances 16
    assert rows[0]["in_mean_sq"] == pytest.approx(9.0) and rows[0]["in_var"] == pytest.approx(4.0)
    assert rows[1]["in_mean_sq"] == pytest.approx((49 + 25) / 2) and rows[1]["in_var"] == pytest.approx(16.0)


# --- Santurkar's ICS ---------------------------------------------------------------------------------


def _ics(net, lrs_for):
    x, y = batch()
    groups = parameter_groups(net)
    loss = lambda: nn.functional.cross_entropy(net(x), y)  # noqa: E731
    return internal_covariate_shift(loss, [g for _, g in groups], [[lrs_for(i)] * len(g) for i, (_, g) in enumerate(groups)])


def test_ics_is_exactly_zero_when_earlier_layers_do_not_move():
    net = tiny_net(depth=4)
    before = [p.clone() for p in net.parameters()]
    rows = _ics(net, lambda i: 0.0)
    assert [r["layer"] for r in rows] == [2, 3, 4]
    assert all(r["l2"] == 0.0 and r["cos"] == pytest.approx(1.0) for r in rows)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # parameters restored
    moving = _ics(net, lambda i: 0.5)
    assert all(r["l2"] > 0 and r["cos"] < 1 for r in moving)


def test_ics_matches_a_hand_computed_second_layer():
    net = tiny_net(depth=2)
    x, y = batch()
    rows = _ics(net, lambda i: 0.3)
    (site1, g1), (site2, g2) = parameter_groups(net)
    loss = nn.functional.cross_entropy(net(x), y)
    grads1 = torch.autograd.grad(loss, g1, retain_graph=True)
    grads2 = torch.autograd.grad(loss, g2)
    with torch.no_grad():
        for p, g in zip(g1, grads1):
            p.sub_(0.3 * g)
    shifted = torch.autograd.grad(nn.functional.cross_entropy(net(x), y), g2)
    a, b = torch.cat([g.flatten() for g in grads2]), torch.cat([g.flatten() for g in shifted])
    assert rows[0]["l2"] == pytest.approx((a - b).norm().item(), rel=1e-5)
    assert rows[0]["cos"] == pytest.approx(torch.cosine_similarity(a, b, dim=0).item(), rel=1e-5)


# --- smoothness --------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.5, 3.0])
def test_smoothness_of_a_quadratic_is_its_curvature(beta):
    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    loss = lambda: 0.5 * beta * w.square().sum()  # noqa: E731
    lr = 0.1
    found = smoothness(loss, [w], [lr], [0.5, 1, 2, 4])
    assert found["beta"] == pytest.approx(beta, rel=1e-9)
    g = beta * torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert found["grad_pred"] == pytest.approx(beta * 4 * lr * g.norm().item(), rel=1e-9)  # largest step
    # L(x - k lr g) = 0.5 beta |x|^2 (1 - k lr beta)^2
    losses = [0.5 * beta * 5.25 * (1 - k * lr * beta) ** 2 for k in (0.5, 1, 2, 4)]
    assert found["losses"] == pytest.approx(losses, rel=1e-9)
    assert found["loss_range"] == pytest.approx(max(losses) - min(losses), rel=1e-9)
    assert w.tolist() == [1.0, -2.0, 0.5]


def test_smoothness_takes_the_largest_curvature_along_the_gradient():
    curvature = torch.tensor([1.0, 5.0], dtype=torch.float64)
    w = nn.Parameter(torch.tensor([0.0, 1.0], dtype=torch.float64))  # the gradient lies along the stiff axis
    found = smoothness(lambda: 0.5 * (curvature * w.square()).sum(), [w], [0.01], [1, 2])
    assert found["beta"] == pytest.approx(5.0, rel=1e-9)


# --- running statistics ------------------------------------------------------------------------------


def test_running_stat_error_is_zero_after_a_precise_bn_pass_over_the_same_batches():
    net = tiny_net(depth=3)
    batches = [batch(8, seed=s)[0] for s in range(4)]
    recalibrate(net, batches)  # running statistics = the population statistics of these batches
    layers = site_stat_layers(net)
    ema = {site: (m.running_mean.clone(), m.running_var.clone()) for site, m in layers.items()}
    with buffers_restored(net):
        recalibrate(net, batches)
        errors = [running_stat_error(*ema[s], m.running_mean, m.running_var) for s, m in layers.items()]
    assert len(errors) == 3 and all(e == {"mean_err": 0.0, "var_err": 0.0} for e in errors)
    pop_mean, pop_var = torch.zeros(4), torch.full((4,), 4.0)
    off = running_stat_error(pop_mean + 2.0, pop_var * 1.5, pop_mean, pop_var)  # one std off, 50 % too wide
    assert off["mean_err"] == pytest.approx(1.0, rel=1e-5) and off["var_err"] == pytest.approx(0.5, rel=1e-5)


# --- batch renorm, frozen, noisy ---------------------------------------------------------------------


@pytest.mark.parametrize("cls,ref,shape", [(BatchRenorm1d, nn.BatchNorm1d, (32, 6)),
                                            (BatchRenorm2d, nn.BatchNorm2d, (8, 6, 5, 5))])
def test_batch_renorm_without_room_to_correct_is_batch_norm(cls, ref, shape):
    torch.manual_seed(0)
    renorm, bn = cls(6, rmax=1.0, dmax=0.0), ref(6)
    weight, bias = torch.rand(6) + 0.5, torch.randn(6)
    with torch.no_grad():
        for layer in (renorm, bn):
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
    for step in range(3):
        x = (torch.randn(shape) * 3 + 1).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        y, y2 = renorm(x), bn(x2)
        g = torch.randn_like(y)
        y.backward(g)
        y2.backward(g)
        torch.testing.assert_close(y, y2)
        torch.testing.assert_close(x.grad, x2.grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(renorm, name), getattr(bn, name))
    torch.testing.assert_close(renorm.weight.grad, bn.weight.grad)
    renorm.eval(), bn.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(renorm(x), bn(x))


def test_batch_renorm_corrects_towards_the_running_statistics():
    torch.manual_seed(0)
    layer = BatchRenorm1d(4, rmax=2.0, dmax=0.5)
    layer.running_mean.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))
    layer.running_var.copy_(torch.tensor([1.0, 1.0, 0.01, 100.0]))
    x = torch.randn(64, 4).requires_grad_()
    y = layer(x)
    var, mean = torch.var_mean(x.detach(), 0, unbiased=False)
    sigma = (torch.tensor([1.0, 1.0, 0.01, 100.0]) + 1e-5).sqrt()
    r = ((var + 1e-5).sqrt() / sigma).clamp(0.5, 2.0)
    d = ((mean - torch.tensor([0.0, 1.0, 0.0, 0.0])) / sigma).clamp(-0.5, 0.5)
    expected = (x.detach() - mean) / (var + 1e-5).sqrt() * r + d
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    # r and d are constants: the input gradient is BN's times r
    y.sum().backward()
    assert x.grad.abs().max() < 1e-4
    rates = layer.clip_rates()  # channel 2 (var 0.01) and 3 (var 100) must clip r; channel 1 (mean 1) clips d
    assert rates["r_clip"] == pytest.approx(0.5) and rates["d_clip"] >= 0.25
    assert layer.clip_rates() == {}  # reset


def test_batch_renorm_warm_up_schedule():
    layer = BatchRenorm1d(2, rmax=3.0, dmax=5.0, warmup_steps=10, relax_steps=20)
    assert layer.limits(0) == (1.0, 0.0) and layer.limits(9) == (1.0, 0.0)
    assert layer.limits(20) == pytest.approx((2.0, 2.5)) and layer.limits(30) == (3.0, 5.0)
    assert layer.limits(1000) == (3.0, 5.0)


def test_frozen_batch_norm_is_evaluation_mode_batch_norm_in_both_modes():
    bn = nn.BatchNorm2d(3)
    bn.train()
    bn(torch.randn(16, 3, 4, 4) * 2 + 1)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
    frozen = FrozenBatchNorm(3)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped
    assert not list(frozen.parameters())
    bn.eval()
    x = torch.randn(4, 3, 4, 4)
    torch.testing.assert_close(frozen.train()(x), bn(x))
    torch.testing.assert_close(frozen.eval()(x), bn(x))


def test_noisy_norm_shifts_and_scales_per_channel_in_training_only():
    inner = nn.BatchNorm1d(5)
    noisy = NoisyNorm(inner, 0.5)
    assert noisy.state_dict().keys() == inner.state_dict().keys()
    x = torch.randn(64, 5)
    torch.manual_seed(3)
    out = noisy(x)
    normalized = nn.functional.batch_norm(x, None, None, training=True)
    torch.manual_seed(3)
    scale, shift = (torch.randn(1, 5) * 0.5).exp(), torch.randn(1, 5) * 0.5
    torch.testing.assert_close(out, normalized * scale + shift, rtol=1e-4, atol=1e-5)
    noisy.eval()
    torch.testing.assert_close(noisy(x), inner(x))


# --- models -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,sites", [
    (["model=mlp", "model.depth=50"], 50), (["model=mlp", "model.depth=2"], 2),
    (["model=convnet", "model.depth=6"], 6), (["model=lenet", "model.depth=3"], 5),
    (["model=resnet"], 19), (["model=resnet", "model.depth=8", "norm=none"], 7),
])
def test_depth_sets_the_number_of_norm_sites(overrides, sites):
    cfg = load(overrides)
    for channels, size in ((1, 28), (3, 32)):
        model = build_model(cfg.model, cfg.norm, channels, (size, size), 10)
        assert [s for s, _ in norm_layers(model)] == [f"norm{i}" for i in range(1, sites + 1)]
        assert model(torch.randn(2, channels, size, size)).shape == (2, 10)


def test_resnet_blocks_add_their_shortcut():
    cfg = load(["model=resnet", "model.depth=8", "norm=none", "model.channels=[2,4,8]"])
    model = build_model(cfg.model, cfg.norm, 1, (8, 8), 3)
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and name != "conv1":
            nn.init.zeros_(module.weight)  # every branch outputs 0: blocks pass their shortcut through
    x = torch.randn(2, 1, 8, 8)
    stem = model.act1(model.norm1(model.conv1(x)))
    expected = stem[:, :, ::2, ::2][:, :, ::2, ::2]  # two strided stages, zero-padded channels
    features = torch.nn.functional.pad(expected, (0, 0, 0, 0, 0, 6)).mean((2, 3))
    torch.testing.assert_close(model(x), model.fc1(features))


@pytest.mark.parametrize("overrides,fragments", [
    (["model=resnet", "model.depth=21"], ["model.depth=21", "6n+2"]),
    (["model=resnet", "model.channels=[4,8]"], ["model.channels", "3 stage widths"]),
    (["model=convnet", "model.depth=1"], ["model.depth=1", "depth >= 2"]),
    (["norm.noise=-1"], ["norm.noise=-1.0", ">= 0"]),
    (["norm=batch_renorm", "norm.rmax=0.5"], ["norm.rmax=0.5", "rmax >= 1"]),
    (["diagnostics.ics_every=-1"], ["diagnostics.ics_every=-1", ">= 0"]),
    (["norm=frozen", "norm.ghost_batch_size=4"], ["norm=frozen does not take it"]),
])
def test_bad_science_settings_are_one_line_errors(cli, overrides, fragments):
    one_line_error(cli("train", *overrides, check=False), *fragments)


# --- probes in a run --------------------------------------------------------------------------------


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def run(root: Path, *overrides: str) -> Path:
    args = [*TINY, "threads=1", f"output_dir={root}", "model.depth=3", "model.hidden_sizes=[16]",
            "optimizer.momentum=0.9", "norm.noise=0.2", "recalibrate_batches=0", "hist_every_steps=0", *overrides]
    return Path(train(load(args), args, progress=False).dir)


def test_probes_record_everything_and_leave_training_unchanged(tmp_path):
    quiet = run(tmp_path / "a")
    probed = run(tmp_path / "b", "diagnostics.shift_every=2", "diagnostics.ics_every=3",
                 "diagnostics.smooth_every=4", "diagnostics.signal_prop=true", "recalibrate_batches=2")
    strip = lambda r: {k: v for k, v in r.items() if "examples_per_s" not in k}  # noqa: E731
    assert [strip(r) for r in records(quiet, "train")] == [strip(r) for r in records(probed, "train")]
    a, b = (torch.load(r / "checkpoint.pt", weights_only=True) for r in (quiet, probed))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and torch.equal(a["rng"], b["rng"])
    (epoch,) = records(probed, "epoch")
    for key in ("shift_kl_in", "shift_kl_out", "shift_dmu_in", "ics_l2", "ics_cos", "smooth_beta",
                "smooth_loss_range", "smooth_grad_pred", "running_mean_err", "running_var_err"):
        assert key in epoch, key
    assert not {"shift_kl_in", "ics_l2"} & set(records(quiet, "epoch")[0])
    assert [r["depth"] for r in records(probed, "signal")] == [1, 2, 3]
    assert {r["site"] for r in records(probed, "ics")} == {"norm2", "norm3"}
    assert {r["step"] for r in records(probed, "smooth")} == {4, 8}  # 8 steps of 32 in 256
    assert {r["site"] for r in records(probed, "running_stats")} == {"norm1", "norm2", "norm3"}


def test_batch_renorm_runs_log_how_often_r_and_d_clip(tmp_path):
    run_dir = run(tmp_path, "norm=batch_renorm", "norm.warmup_steps=0", "norm.relax_steps=0", "norm.noise=0")
    clips = records(run_dir, "renorm")
    assert {r["site"] for r in clips} == {"norm1", "norm2", "norm3"}
    assert all(0 <= r["r_clip"] <= 1 and 0 <= r["d_clip"] <= 1 for r in clips)
    assert "renorm_r_clip" in records(run_dir, "epoch")[0]


def test_report_and_show_draw_the_science_figures(tmp_path, cli):
    runs = [run(tmp_path / "runs", f"model.depth={depth}", f"seed={seed}", "diagnostics.shift_every=2",
                "diagnostics.ics_every=4", "diagnostics.signal_prop=true", "recalibrate_batches=2")
            for depth in (2, 3) for seed in (0, 1)]
    out = tmp_path / "report"
    cli("report", *map(str, runs), "--out", str(out))
    for name in ("science.png", "signal.png", "depth.png"):
        assert (out / name).stat().st_size > 10_000, name
    text = (out / "report.md").read_text()
    assert "## BN-science probes" in text and "## Signal propagation at initialization" in text
    assert "± " in text.split("## BN-science probes")[1].split("##")[0]  # seed statistics over 2 seeds
    shown = cli("show", str(runs[0]), "--curves").stdout
    assert "signal propagation at initialization" in shown and "input channel variance" in shown


def test_probes_off_by_default_register_nothing():
    from bnexp.tracking.diagnostics import diagnostics
    from bnexp.tracking.probes import ScienceProbes

    for overrides in ([], ["norm=none"], ["norm=builtin", "model=lenet"]):
        cfg = load(overrides)
        model = build_model(cfg.model, cfg.norm, 1, (28, 28), 10)
        assert not any(isinstance(listener, ScienceProbes) for listener in diagnostics(cfg, model, None))
    cfg = load(["norm=batch_renorm"])  # batch renorm logs its clipping: the listener exists
    model = build_model(cfg.model, cfg.norm, 1, (28, 28), 10)
    assert any(isinstance(listener, ScienceProbes) for listener in diagnostics(cfg, model, None))
