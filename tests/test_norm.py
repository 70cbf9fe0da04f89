"""bnexp.nn.batchnorm against torch.nn.BatchNorm*d, which is the oracle: same outputs, gradients, buffers,
state_dict, repr and errors, within 1e-5 (float32) / 1e-10 (float64) relative."""

from __future__ import annotations

import inspect
import random
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bnexp.nn.batchnorm as bn
from bnexp.nn.check import CONFIGS, SHAPES, TOLERANCE, compare

DTYPES = [torch.float32, torch.float64]
CLASSES = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]
SHAPE_OF = {"BatchNorm1d": (8, 5, 7), "BatchNorm2d": (4, 5, 3, 6), "BatchNorm3d": (3, 5, 2, 3, 4)}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tol(dtype: torch.dtype) -> float:
    return TOLERANCE[str(dtype).removeprefix("torch.")]


def assert_close(actual, expected, dtype, what=""):
    """``max|actual - expected| <= tol * max|expected|``: the check-bn metric, per tensor."""
    assert (actual is None) == (expected is None), what
    if actual is None:
        return
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    diff = (actual.detach() - expected.detach()).abs().max().item() if expected.numel() else 0.0
    assert diff <= tol(dtype) * max(scale, 1e-30), f"{what}: max diff {diff:.3g} vs scale {scale:.3g}"


def pair(cls_name, num_features=5, dtype=torch.float32, device="cpu", **kwargs):
    """A custom layer and a builtin one with the same (random) parameters and buffers."""
    custom = getattr(bn, cls_name)(num_features, device=device, dtype=dtype, **kwargs)
    builtin = getattr(nn, cls_name)(num_features, device=device, dtype=dtype, **kwargs)
    if custom.affine:
        with torch.no_grad():
            custom.weight.uniform_(0.5, 1.5)
            custom.bias.uniform_(-0.5, 0.5)
    builtin.load_state_dict(custom.state_dict())
    return custom, builtin


def run_both(custom, builtin, x, grad=None, dtype=torch.float32, backward=True):
    """Forward (and backward) both layers on copies of x; compare output, grads and buffers."""
    outs, grads = [], []
    if grad is None:  # random: with ones, grad_input is 0 up to rounding and has no relative scale
        grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for layer in (custom, builtin):
        xi = x.detach().clone().requires_grad_(backward)
        y = layer(xi)
        if backward:
            y.backward(grad.to(device=y.device, dtype=y.dtype))
        outs.append(y)
        grads.append([xi.grad] + ([layer.weight.grad, layer.bias.grad] if layer.affine else []))
        layer.zero_grad(set_to_none=True)
    assert_close(outs[0], outs[1], dtype, "output")
    for i, (a, b) in enumerate(zip(*grads)):
        assert_close(a, b, dtype, f"grad {i}")
    assert_buffers_equal(custom, builtin, dtype)
    return outs


def assert_buffers_equal(custom, builtin, dtype):
    assert_close(custom.running_mean, builtin.running_mean, dtype, "running_mean")
    assert_close(custom.running_var, builtin.running_var, dtype, "running_var")
    if builtin.num_batches_tracked is None:
        assert custom.num_batches_tracked is None
    else:
        assert torch.equal(custom.num_batches_tracked, builtin.num_batches_tracked)


# --- the shared comparison (also behind `bnexp check-bn`) ------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("cls_name,shape", SHAPES)
def test_matches_builtin_every_config(cls_name, shape, mode, dtype):
    for i, (name, config) in enumerate(CONFIGS.items()):
        result = compare(cls_name, shape, config, mode=mode, dtype=dtype, steps=4, seed=i)
        assert result.passed, result


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_builtin_randomized(dtype):
    """Random shapes, configs and long runs (running stats after many steps)."""
    rng = random.Random(1234)
    for trial in range(12):
        cls_name = rng.choice(CLASSES)
        rank = {"BatchNorm1d": rng.choice([2, 3]), "BatchNorm2d": 4, "BatchNorm3d": 5}[cls_name]
        shape = (rng.randint(2, 40), rng.randint(1, 9), *[rng.randint(1, 9) for _ in range(rank - 2)])
        config = {"momentum": rng.choice([0.1, 0.01, 0.5, None]), "eps": rng.choice([1e-5, 1e-3, 0.1]),
                  "affine": rng.random() < 0.8, "track_running_stats": rng.random() < 0.8}
        result = compare(cls_name, shape, config, mode=rng.choice(["train", "eval"]), dtype=dtype,
                         steps=rng.choice([3, 30]), seed=trial)
        assert result.passed, (result, config)


def test_compare_catches_broken_layers(monkeypatch):
    """The check can fail: classic slips in the custom layer are reported."""
    update, backward = bn._update_running_stats, bn.batch_norm_backward

    def biased_update(running_mean, running_var, mean, var, m, momentum):
        update(running_mean, running_var, mean, var * (m - 1) / m, m, momentum)  # biased variance

    monkeypatch.setattr(bn, "_update_running_stats", biased_update)
    result = compare("BatchNorm2d", (4, 3, 5, 5), steps=3)
    assert not result.passed and result.stat_diff > 10 * result.tolerance and "running_var" in str(result.failures)
    assert result.out_diff <= result.tolerance  # training outputs still agree
    assert not compare("BatchNorm2d", (4, 3, 5, 5), steps=3, mode="eval").passed
    monkeypatch.undo()

    def no_mean_terms(grad_out, x, mean, invstd, weight, training=True, sync_group=None):
        return backward(grad_out, x, mean, invstd, weight, training=False)  # as if stats were constant

    monkeypatch.setattr(bn, "batch_norm_backward", no_mean_terms)
    result = compare("BatchNorm1d", (16, 3), steps=2)
    assert not result.passed and result.grad_diff > 1e-2 and "grad input" in str(result.failures)
    assert compare("BatchNorm1d", (16, 3), steps=2, mode="eval").passed  # eval gradients are right


def test_check_bn_command_fails_on_a_broken_layer(monkeypatch):
    import typer
    from typer.testing import CliRunner

    from bnexp.commands import check_bn

    app = typer.Typer()
    app.callback()(lambda: None)
    check_bn.register(app)
    update = bn._update_running_stats
    monkeypatch.setattr(bn, "_update_running_stats",  # the tutorial slip: biased running variance
                        lambda rm, rv, mean, var, m, momentum: update(rm, rv, mean, var * (m - 1) / m, m, momentum))
    result = CliRunner().invoke(app, ["check-bn", "--steps", "2"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "running_var" in result.output


def test_check_bn_is_a_plain_function_in_a_module_without_torch(capsys):
    """The command is importable and callable on its own; its module defers torch (``bnexp --help``)."""
    import subprocess
    import sys

    code = "import sys, bnexp.commands.check_bn; print([m for m in ('torch', 'bnexp.nn.check') if m in sys.modules])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
    from bnexp.commands.check_bn import check_bn

    check_bn(dtype="float64", device="cpu", steps=1, seed=3)
    assert f"all {len(SHAPES) * len(CONFIGS) * 2} cases match torch" in capsys.readouterr().out


def test_check_bn_command(cli):
    result = cli("check-bn", "--steps", "2", "--dtype", "float64", columns=80)
    assert f"all {len(SHAPES) * len(CONFIGS) * 2} cases match torch" in result.stdout and "FAIL" not in result.stdout
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80 and any(line.startswith("BatchNorm3d  8x4x5x6x7 ") for line in lines)
    bad = cli("check-bn", "--dtype", "float16", check=False)
    assert bad.returncode == 2 and "--dtype float16" in bad.stderr


# --- the numbers from the course notes -------------------------------------------------------------


def test_seed_check_running_stats():
    torch.manual_seed(0)
    x = torch.rand(100, 16, 784)
    custom, builtin = bn.BatchNorm1d(16), nn.BatchNorm1d(16)
    custom(x), builtin(x)
    # 0.9 * 0 + 0.1 * E[U(0,1)] and 0.9 * 1 + 0.1 * Var[U(0,1)], up to sampling noise
    assert torch.allclose(custom.running_mean, torch.full((16,), 0.05), atol=5e-4)
    assert torch.allclose(custom.running_var, torch.full((16,), 0.9083), atol=1e-4)
    assert_buffers_equal(custom, builtin, torch.float32)


# --- API: construction, parameters, buffers, state_dict, repr -------------------------------------


@pytest.mark.parametrize("cls_name", CLASSES)
def test_parameters_buffers_and_repr_like_torch(cls_name):
    options = [{}, {"affine": False}, {"track_running_stats": False}, {"momentum": None, "eps": 1e-3}]
    if "bias" in inspect.signature(nn.BatchNorm1d).parameters:  # recent torch: weight without bias
        options.append({"bias": False})
    for kwargs in options:
        custom, builtin = getattr(bn, cls_name)(7, **kwargs), getattr(nn, cls_name)(7, **kwargs)
        assert repr(custom) == repr(builtin)
        assert [n for n, _ in custom.named_parameters()] == [n for n, _ in builtin.named_parameters()]
        assert [n for n, _ in custom.named_buffers()] == [n for n, _ in builtin.named_buffers()]
        assert list(custom.state_dict()) == list(builtin.state_dict())
        for (_, a), (_, b) in zip(custom.state_dict().items(), builtin.state_dict().items()):
            assert torch.equal(a, b) and a.dtype == b.dtype
    bare = getattr(bn, cls_name)(3, affine=False, track_running_stats=False)
    assert list(bare.parameters()) == [] and bare.running_mean is None and bare.running_var is None
    assert bare.num_batches_tracked is None


def test_constructor_signature_and_factory_kwargs():
    layer = bn.BatchNorm2d(4, 1e-3, 0.2, True, True, device="cpu", dtype=torch.float64)
    assert (layer.eps, layer.momentum, layer.affine, layer.track_running_stats) == (1e-3, 0.2, True, True)
    assert layer.weight.dtype == layer.running_var.dtype == torch.float64
    assert layer.num_batches_tracked.dtype == torch.long


@pytest.mark.parametrize("cls_name", CLASSES)
def test_state_dict_round_trip_strict(cls_name):
    custom, builtin = pair(cls_name)
    x = torch.randn(SHAPE_OF[cls_name])
    for _ in range(3):
        custom(x), builtin(x)
    fresh_builtin = getattr(nn, cls_name)(5)
    fresh_builtin.load_state_dict(custom.state_dict(), strict=True)
    fresh_custom = getattr(bn, cls_name)(5)
    fresh_custom.load_state_dict(builtin.state_dict(), strict=True)
    for a, b in [(fresh_builtin, custom), (fresh_custom, builtin)]:
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    fresh_custom.eval(), builtin.eval()
    assert torch.equal(fresh_custom(x), fresh_custom(x))
    assert_close(fresh_custom(x), builtin(x), torch.float32)


def test_state_dict_without_num_batches_tracked():
    """Old checkpoints (no version metadata) load and get num_batches_tracked=0, as in torch."""
    for layer in (bn.BatchNorm2d(3), nn.BatchNorm2d(3)):
        old = {k: v for k, v in layer.state_dict().items() if k != "num_batches_tracked"}  # plain dict
        layer.num_batches_tracked.fill_(7)
        layer.load_state_dict(old, strict=True)
        assert layer.num_batches_tracked.item() == 7  # kept, as torch does
        target = type(layer)(3)
        target.load_state_dict(old, strict=True)
        assert target.num_batches_tracked.item() == 0
    # Inside a model (prefixed keys) too.
    model = nn.Sequential(nn.Conv2d(1, 3, 1), bn.BatchNorm2d(3))
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    nn.Sequential(nn.Conv2d(1, 3, 1), bn.BatchNorm2d(3)).load_state_dict(sd, strict=True)
    # A version-2 state_dict missing the key is an error in torch, and here.
    for cls in (bn.BatchNorm2d, nn.BatchNorm2d):
        sd = cls(3).state_dict()
        del sd["num_batches_tracked"]
        with pytest.raises(RuntimeError, match="num_batches_tracked"):
            cls(3).load_state_dict(sd, strict=True)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_reset_running_stats_and_parameters(cls_name):
    custom, builtin = pair(cls_name)
    x = torch.randn(SHAPE_OF[cls_name]) * 3 + 1
    custom(x), builtin(x)
    custom.reset_running_stats(), builtin.reset_running_stats()
    assert_buffers_equal(custom, builtin, torch.float32)
    assert custom.num_batches_tracked.item() == 0 and torch.all(custom.running_var == 1)
    assert not torch.all(custom.weight == 1)  # parameters untouched
    custom.reset_parameters()
    assert torch.all(custom.weight == 1) and torch.all(custom.bias == 0)
    bn.BatchNorm1d(3, affine=False, track_running_stats=False).reset_parameters()  # nothing to reset


# --- semantics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_momentum_and_cumulative_average(dtype, momentum):
    custom, builtin = pair("BatchNorm2d", dtype=dtype, momentum=momentum)
    gen = torch.Generator().manual_seed(3)
    for step in range(25):
        x = torch.randn(6, 5, 4, 4, generator=gen, dtype=dtype) * (step + 1) + step
        run_both(custom, builtin, x, dtype=dtype)
    assert custom.num_batches_tracked.item() == 25
    custom.eval(), builtin.eval()
    run_both(custom, builtin, torch.randn(6, 5, 4, 4, generator=gen, dtype=dtype), dtype=dtype)


def test_momentum_formula_and_unbiased_running_var():
    """new = (1 - momentum) * old + momentum * batch, with the unbiased batch variance."""
    layer = bn.BatchNorm1d(2, momentum=0.3)
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    layer(x)
    assert torch.allclose(layer.running_mean, 0.7 * 0 + 0.3 * x.mean(0))
    assert torch.allclose(layer.running_var, 0.7 * 1 + 0.3 * x.var(0, unbiased=True))
    # ...and normalization uses the biased one.
    layer.eval()
    layer.reset_running_stats()
    layer.train()
    y = layer(x)
    assert torch.allclose(y, (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5))


@pytest.mark.parametrize("cls_name", CLASSES)
def test_eval_uses_running_stats(cls_name):
    custom, builtin = pair(cls_name)
    x = torch.randn(SHAPE_OF[cls_name]) * 2 + 3
    run_both(custom, builtin, x)
    custom.eval(), builtin.eval()
    before = custom.running_mean.clone()
    y = run_both(custom, builtin, torch.randn(SHAPE_OF[cls_name]))[0]
    assert torch.equal(custom.running_mean, before) and custom.num_batches_tracked.item() == 1
    with torch.no_grad():  # inference path (no autograd graph) agrees as well
        assert_close(custom(x), builtin(x), torch.float32)
    assert y.shape == x.shape


@pytest.mark.parametrize("cls_name", CLASSES)
def test_no_running_stats_uses_batch_stats_in_eval(cls_name):
    custom, builtin = pair(cls_name, track_running_stats=False)
    custom.eval(), builtin.eval()
    x = torch.randn(SHAPE_OF[cls_name]) * 2 + 3
    y = run_both(custom, builtin, x)[0]
    dims = (0, *range(2, x.dim()))
    assert y.mean(dims).sub(custom.bias).abs().max() < 1e-5  # normalized with batch statistics


def test_train_mode_under_no_grad_updates_running_stats():
    """torch decides batch vs running statistics by .training, not by grad mode (tutorials differ)."""
    custom, builtin = pair("BatchNorm2d")
    x = torch.randn(4, 5, 3, 3) + 2
    with torch.no_grad():
        run_both(custom, builtin, x, backward=False)
    assert custom.num_batches_tracked.item() == 1 and custom.running_mean.abs().min() > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_size_batch(dtype):
    for cls_name, shape in [("BatchNorm1d", (0, 5)), ("BatchNorm1d", (0, 5, 3)), ("BatchNorm2d", (0, 5, 2, 2)),
                            ("BatchNorm3d", (0, 5, 1, 2, 2)), ("BatchNorm2d", (4, 5, 0, 3))]:
        for momentum in (0.1, None):
            custom, builtin = pair(cls_name, dtype=dtype, momentum=momentum)
            y = run_both(custom, builtin, torch.randn(shape, dtype=dtype), dtype=dtype)[0]
            assert y.shape == shape
            assert custom.num_batches_tracked.item() == 1 and torch.all(custom.running_var == 1)
            custom.eval(), builtin.eval()
            run_both(custom, builtin, torch.randn(shape, dtype=dtype), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_and_channels_last(dtype):
    custom, builtin = pair("BatchNorm2d", dtype=dtype)
    grad = torch.randn(6, 5, 4, 7, dtype=dtype)
    x = torch.randn(6, 5, 4, 7, dtype=dtype) * 3 + 1
    for variant in [x.to(memory_format=torch.channels_last),
                    torch.randn(6, 7, 5, 4, dtype=dtype).permute(0, 2, 3, 1),  # non-contiguous
                    torch.randn(6, 5, 8, 7, dtype=dtype)[:, :, ::2]]:  # strided
        assert not variant.is_contiguous()
        for mode in ("train", "eval"):
            custom.train(mode == "train"), builtin.train(mode == "train")
            y_custom, y_builtin = run_both(custom, builtin, variant, grad=grad, dtype=dtype)
            assert y_custom.is_contiguous(memory_format=torch.channels_last) == \
                y_builtin.is_contiguous(memory_format=torch.channels_last)
    custom3, builtin3 = pair("BatchNorm3d", dtype=dtype)
    run_both(custom3, builtin3, torch.randn(3, 5, 2, 3, 4, dtype=dtype).to(memory_format=torch.channels_last_3d),
             dtype=dtype)
    custom1, builtin1 = pair("BatchNorm1d", dtype=dtype)
    run_both(custom1, builtin1, torch.randn(5, 9, dtype=dtype).t(), dtype=dtype)  # (9, 5), transposed


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_devices(device, dtype):
    result = compare("BatchNorm2d", (8, 4, 5, 5), device=device, dtype=str(dtype).removeprefix("torch."), steps=3)
    assert result.passed, result
    layer = bn.BatchNorm2d(4, device=device, dtype=dtype)
    assert layer.running_mean.device.type == layer.weight.device.type == device
    assert layer(torch.randn(2, 4, 3, 3, device=device, dtype=dtype)).device.type == device


@pytest.mark.parametrize("requires", [(True, True), (True, False), (False, True)])
def test_partial_requires_grad(requires):
    """Only some of input / parameters need gradients."""
    x_grad, p_grad = requires
    custom, builtin = pair("BatchNorm2d")
    for layer in (custom, builtin):
        layer.weight.requires_grad_(p_grad), layer.bias.requires_grad_(p_grad)
    x, r = torch.randn(4, 5, 3, 3), torch.randn(4, 5, 3, 3)
    outs = []
    for layer in (custom, builtin):
        xi = x.clone().requires_grad_(x_grad)
        y = layer(xi)
        (y.sin() * r).sum().backward()  # not sum(y^2): that is constant in x, its gradient ~ rounding
        outs.append((y, xi.grad, layer.weight.grad))
    for a, b in zip(*outs):
        assert_close(a, b, torch.float32)


def test_output_used_twice_and_gradient_accumulation():
    custom, builtin = pair("BatchNorm1d")
    x = torch.randn(10, 5)
    outs = []
    for layer in (custom, builtin):
        xi = x.clone().requires_grad_()
        for _ in range(2):
            y = layer(xi)
            (y * y.detach() + y.sin()).sum().backward()
        outs.append((xi.grad, layer.weight.grad, layer.bias.grad))
    for a, b in zip(*outs):
        assert_close(a, b, torch.float32)


# --- float32 accuracy: at least torch's ----------------------------------------------------------

# Errors within four float32 roundings of a quantity's natural size (below) are rounding noise, in
# torch's kernel as in ours (the last multiply-add alone rounds twice; sums over planes a few times),
# so errors are floored there: what is compared is accuracy lost beyond that.
NOISE = 4 * 2.0**-24


def float32_errors(cls_name, shape, scale, offset, training, seed) -> dict:
    """``{quantity: (custom error, torch error, noise floor)}`` in float32, against torch.nn in
    float64 on the same (float32) inputs, parameters, buffers and output gradient.

    Max abs errors of: the output, the gradients w.r.t. input, weight and bias, and (training) the
    updated running mean and variance. Natural sizes: the largest value; for the input gradient, the
    largest ``dy * weight * invstd`` (before its mean terms cancel); for the weight and bias
    gradients, the largest ``sqrt(sum(term^2))`` over channels (a sum's size without cancellation,
    as in bnexp.nn.check).
    """
    gen = torch.Generator().manual_seed(seed)
    channels, dims = shape[1], (0, *range(2, len(shape)))

    def rand(*size, uniform=False):
        return (torch.rand if uniform else torch.randn)(size, generator=gen, dtype=torch.float64)

    x = (rand(*shape) * scale + offset).float().double()  # float32 values, for all three layers
    grad = rand(*shape).float().double()
    params = {"weight": rand(channels, uniform=True) + 0.5, "bias": rand(channels),
              "running_mean": x.mean(dims) + rand(channels) * 0.1 * scale,
              "running_var": x.var(dims) * (1 + 0.1 * rand(channels, uniform=True))}
    results = {}
    for name, layer, dtype in [("custom", getattr(bn, cls_name)(channels), torch.float32),
                               ("torch", getattr(nn, cls_name)(channels), torch.float32),
                               ("reference", getattr(nn, cls_name)(channels, dtype=torch.float64), torch.float64)]:
        layer.load_state_dict({**layer.state_dict(), **{k: v.float() for k, v in params.items()}})
        layer.train(training)
        xi = x.to(dtype).detach().requires_grad_()
        y = layer(xi)
        y.backward(grad.to(dtype))
        results[name] = {"output": y, "grad_input": xi.grad, "grad_weight": layer.weight.grad,
                         "grad_bias": layer.bias.grad}
        if training:
            results[name].update(running_mean=layer.running_mean, running_var=layer.running_var)
    ref = {k: v.detach().double() for k, v in results["reference"].items()}
    view = (1, -1, *([1] * (len(shape) - 2)))
    var = x.var(dims, unbiased=False) if training else params["running_var"].float().double()
    scaled_grad = grad * (params["weight"].float().double() * torch.rsqrt(var + 1e-5)).view(view)
    x_hat = (ref["output"] - params["bias"].float().double().view(view)) / params["weight"].float().double().view(view)
    sizes = {"grad_input": scaled_grad.abs().max(), "grad_weight": (grad * x_hat).square().sum(dims).sqrt().max(),
             "grad_bias": grad.square().sum(dims).sqrt().max()}
    return {quantity: (*[(results[name][quantity].detach().double() - expected).abs().max().item()
                         for name in ("custom", "torch")], NOISE * float(sizes.get(quantity, expected.abs().max())))
            for quantity, expected in ref.items()}


def test_float32_accuracy_at_least_torchs():
    """Random shapes (1d/2d/3d), scales 1e-3..1e3 and offsets up to 1e3 scales, training and eval:
    custom's error over torch's (both floored at the noise level), per quantity, has median <= 1
    and max <= 2. Run with -s for the table."""
    rng = random.Random(2024)
    cases = [("BatchNorm2d", (16, 4, 8, 8), 0.01, -100.0), ("BatchNorm1d", (64, 16), 0.01, -100.0)]
    for _ in range(60):
        cls_name = rng.choice(CLASSES)
        rank = {"BatchNorm1d": rng.choice([2, 3]), "BatchNorm2d": 4, "BatchNorm3d": 5}[cls_name]
        shape = (rng.randint(2, 64), rng.randint(1, 8), *[rng.randint(1, 8) for _ in range(rank - 2)])
        scale = 10 ** rng.uniform(-3, 3)
        offset = 0.0 if rng.random() < 0.25 else rng.choice([-1, 1]) * 10 ** rng.uniform(-1, 3) * scale
        cases.append((cls_name, shape, scale, offset))
    ratios = {}
    for seed, case in enumerate(cases):
        for training in (True, False):
            for quantity, (custom, builtin, floor) in float32_errors(*case, training, seed).items():
                ratios.setdefault(("train" if training else "eval", quantity), []).append(
                    (max(custom, floor) / max(builtin, floor), custom / max(builtin, 1e-300)))
    mean_100 = float32_errors(*cases[0], True, 0)["output"]
    print(f"\nfloat32 error, custom / torch.nn, {len(cases)} cases (mean -100, std 0.01, BatchNorm2d "
          f"output: {mean_100[0]:.1e} vs {mean_100[1]:.1e})")
    for (mode, quantity), pairs in ratios.items():
        floored = [f for f, _ in pairs]
        raw = [r for _, r in pairs]
        print(f"  {mode:5} {quantity:12}  median {statistics.median(floored):.2f}  max {max(floored):.2f}  "
              f"(unfloored: median {statistics.median(raw):.2f}, best {min(raw):.1e})")
    for (mode, quantity), pairs in ratios.items():
        floored = sorted(f for f, _ in pairs)
        assert statistics.median(floored) <= 1.0 and floored[-1] <= 2.0, (mode, quantity, floored[-5:])


# --- gradients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls_name", CLASSES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_and_gradgradcheck(cls_name, affine, training):
    torch.manual_seed(0)
    layer = getattr(bn, cls_name)(3, affine=affine, dtype=torch.float64)
    if affine:
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-1, 1)
    shape = {"BatchNorm1d": (5, 3), "BatchNorm2d": (3, 3, 2, 2), "BatchNorm3d": (2, 3, 2, 1, 2)}[cls_name]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    if not training:
        layer(torch.randn(shape, dtype=torch.float64) * 2 + 1)
        layer.eval()
    params = (layer.weight, layer.bias) if affine else ()

    def fn(x, *params):
        if affine:
            return bn.batch_norm(x, layer.running_mean.clone(), layer.running_var.clone(), *params,
                                 training=training, momentum=0.1, eps=layer.eps)
        return bn.batch_norm(x, layer.running_mean.clone(), layer.running_var.clone(),
                             training=training, momentum=0.1, eps=layer.eps)

    assert torch.autograd.gradcheck(fn, (x, *params))
    assert torch.autograd.gradgradcheck(fn, (x, *params))
    assert torch.autograd.gradcheck(layer, (x,))  # through the module too
    assert torch.autograd.gradgradcheck(layer, (x,))


@pytest.mark.parametrize("dtype", DTYPES)
def test_double_backward_matches_builtin(dtype):
    """Second derivatives (e.g. gradient penalties) agree with torch's batchnorm_double_backward."""
    custom, builtin = pair("BatchNorm2d", dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    x, r1, r2 = (torch.randn(4, 5, 3, 3, generator=gen, dtype=dtype) for _ in range(3))
    results = []
    for layer in (custom, builtin):
        xi = (x * 2 + 1).requires_grad_()
        y = layer(xi)
        (gx,) = torch.autograd.grad((y.sin() * r1).sum(), xi, create_graph=True)
        (gx * r2).sum().backward()
        results.append((gx, xi.grad, layer.weight.grad, layer.bias.grad))
    for a, b in zip(*results):
        assert_close(a, b, dtype)


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 5), (1, 5, 1), (1, 5, 1, 1)])
def test_one_value_per_channel_in_training(shape):
    layer = (bn.BatchNorm1d if len(shape) < 4 else bn.BatchNorm2d)(5)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        layer(torch.randn(shape))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        (nn.BatchNorm1d if len(shape) < 4 else nn.BatchNorm2d)(5)(torch.randn(shape))
    layer.eval()
    layer(torch.randn(shape))  # fine with running statistics
    assert layer(torch.randn(1, 5, 1, 1) if len(shape) == 4 else torch.randn(shape)).shape == shape


@pytest.mark.parametrize("eps", [0, -1e-5])
def test_eps_must_be_positive(eps):
    with pytest.raises(ValueError, match="eps must be > 0"):
        bn.BatchNorm2d(3, eps=eps)
    with pytest.raises(ValueError, match="eps must be > 0"):
        bn.batch_norm(torch.randn(4, 3), None, None, training=True, eps=eps)


@pytest.mark.parametrize("training", [True, False])
def test_wrong_number_of_channels(training):
    layer = bn.BatchNorm2d(3).train(training)
    with pytest.raises(ValueError, match=r"expected input with 3 channels .* got input of shape \(2, 4, 5, 5\)"):
        layer(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="expected input with 3 channels"):
        bn.batch_norm(torch.randn(4, 2), torch.zeros(3), torch.ones(3), training=training)


@pytest.mark.parametrize("cls_name,bad_ranks", [("BatchNorm1d", [1, 4]), ("BatchNorm2d", [2, 3, 5]),
                                                ("BatchNorm3d", [3, 4, 6])])
def test_wrong_input_rank(cls_name, bad_ranks):
    for rank in bad_ranks:
        x = torch.randn(*([2] * rank))
        with pytest.raises(ValueError) as custom_error:
            getattr(bn, cls_name)(2)(x)
        with pytest.raises(ValueError) as torch_error:
            getattr(nn, cls_name)(2)(x)
        assert str(custom_error.value) == str(torch_error.value)  # "expected 4D input (got 3D input)"


def test_eval_needs_running_stats():
    with pytest.raises(ValueError, match="running_mean and running_var"):
        bn.batch_norm(torch.randn(4, 3), None, None, training=False)


# --- implementation constraints -------------------------------------------------------------------


def test_no_builtin_batch_norm_kernel_is_called():
    """Plain tensor ops only: no aten batch_norm op runs, forward, backward or double backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func))
            return func(*args, **(kwargs or {}))

    layer = bn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    with Recorder() as rec:
        y = layer(x)
        (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
        g.sum().backward()
        layer.eval()
        layer(x).sum().backward()
    assert rec.ops and not [op for op in rec.ops if "batch_norm" in op or "native_norm" in op], rec.ops
    with Recorder() as ref:
        nn.BatchNorm2d(3)(x)
    assert any("batch_norm" in op for op in ref.ops)  # the recorder does see torch's kernel


def test_memory_saved_for_backward_like_builtin():
    """Saved tensors: the input (shared with the caller) plus per-channel vectors, as in builtin."""

    def saved_bytes(layer, x):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x)
        return sum(storages.values())

    x = torch.randn(64, 6, 10, 10, requires_grad=True)
    custom, builtin = saved_bytes(bn.BatchNorm2d(6), x), saved_bytes(nn.BatchNorm2d(6), x)
    assert custom <= 1.05 * builtin, (custom, builtin)


def test_models_switch_between_custom_and_builtin():
    """A network built with bnexp.nn.batchnorm loads a builtin network's checkpoint and agrees with it."""

    def net(norm2d, norm1d):
        return nn.Sequential(nn.Conv2d(1, 4, 3), norm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8),
                             norm1d(8), nn.Sigmoid(), nn.Linear(8, 3))

    torch.manual_seed(0)
    builtin = net(nn.BatchNorm2d, nn.BatchNorm1d)
    custom = net(bn.BatchNorm2d, bn.BatchNorm1d)
    custom.load_state_dict(builtin.state_dict(), strict=True)
    opt_b, opt_c = (torch.optim.SGD(m.parameters(), lr=0.5) for m in (builtin, custom))
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, target = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        for model, opt in ((builtin, opt_b), (custom, opt_c)):
            opt.zero_grad()
            F.cross_entropy(model(x), target).backward()
            opt.step()
    builtin.eval(), custom.eval()
    x = torch.randn(16, 1, 8, 8, generator=gen)
    assert torch.allclose(custom(x), builtin(x), rtol=1e-4, atol=1e-5)
    for (name, a), (_, b) in zip(custom.state_dict().items(), builtin.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6), name


# --- compiled path (one small test: compilation takes seconds per shape on CPU) ------------------------


@pytest.mark.timeout(240)
def test_compiled_path_matches_builtin(monkeypatch):
    from torch._dynamo.utils import counters

    monkeypatch.setattr(bn, "COMPILE_MIN_NUMEL", 0)  # small inputs normally stay eager
    custom, builtin = pair("BatchNorm2d", num_features=3, momentum=None)
    model = nn.Sequential(custom)
    assert bn.compile_batch_norms(model) == 1 and custom.compiled and "compiled=True" in repr(custom)
    graphs = counters["stats"]["unique_graphs"]
    gen = torch.Generator().manual_seed(0)
    for step in range(4):  # the cumulative average changes the factor every step: no recompiles
        run_both(custom, builtin, torch.randn(8, 3, 4, 4, generator=gen) * (step + 1) + 1)
    assert counters["stats"]["unique_graphs"] - graphs == 1
    custom.eval(), builtin.eval()
    run_both(custom, builtin, torch.randn(8, 3, 4, 4, generator=gen))
