"""Every model x norm: shapes, norm placement, forward/backward, and custom == builtin."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnexp.config.compose import load
from bnexp.core.errors import BnexpError
from bnexp.nn.models import build_model, norm_layers

MODELS = ("mlp", "lenet", "convnet")
NORMS = ("none", "custom", "builtin", "layer", "group")  # every entry of the norm registry


def configs(model: str, norm: str, *extra: str):
    cfg = load([f"model={model}", f"norm={norm}", *extra])
    return cfg.model, cfg.norm


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape, classes", [((1, 28, 28), 10), ((3, 32, 32), 7)])
def test_forward_backward_every_model_and_norm(model, norm, shape, classes):
    torch.manual_seed(0)
    net = build_model(*configs(model, norm), shape[0], shape[1:], classes)
    x = torch.randn(8, *shape)
    out = net(x)
    assert out.shape == (8, classes)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("model, sites", [("mlp", ["1d"]), ("lenet", ["2d", "2d", "1d", "1d"]),
                                          ("convnet", ["2d", "2d"])])
def test_norm_sits_between_layer_and_activation(model, sites):
    net = build_model(*configs(model, "builtin"), 1, (28, 28), 10)
    found = [("2d" if isinstance(m, nn.BatchNorm2d) else "1d") for _, m in norm_layers(net)]
    assert found == sites
    names = list(dict(net.named_children()))
    for site in net.norm_sites:
        i = names.index(site)
        assert names[i - 1].startswith(("fc", "conv")) and names[i + 1].startswith("act")
    plain = build_model(*configs(model, "none"), 1, (28, 28), 10)
    assert all(isinstance(m, nn.Identity) for _, m in norm_layers(plain))
    assert len(plain.norm_sites) == len(sites)


def test_course_architectures():
    lenet = build_model(*configs("lenet", "builtin"), 1, (28, 28), 10)
    assert [m.num_features for _, m in norm_layers(lenet)] == [6, 16, 120, 84]
    assert isinstance(lenet.act1, nn.Sigmoid) and isinstance(lenet.pool1, nn.AvgPool2d)
    assert lenet.fc1.in_features == 400
    convnet = build_model(*configs("convnet", "builtin"), 1, (28, 28), 10)
    assert convnet.conv1.kernel_size == (3, 3) and convnet.conv1.padding == (1, 1)
    assert convnet.conv2.kernel_size == (5, 5) and isinstance(convnet.pool1, nn.MaxPool2d)
    assert (convnet.fc1.in_features, convnet.fc1.out_features) == (400, 10)
    mlp = build_model(*configs("mlp", "builtin"), 1, (28, 28), 10)
    assert [(m.in_features, m.out_features) for m in mlp if isinstance(m, nn.Linear)] == [(784, 100), (100, 10)]


def test_models_adapt_to_channels_size_and_classes():
    net = build_model(*configs("lenet", "custom"), 3, (32, 32), 100)
    assert net.conv1.in_channels == 3 and net.fc1.in_features == 16 * 6 * 6 and net.fc3.out_features == 100
    with pytest.raises(BnexpError, match="too small"):
        build_model(*configs("lenet", "none"), 1, (8, 8), 10)


@pytest.mark.parametrize("model", MODELS)
def test_custom_and_builtin_models_train_identically(model):
    """Same seed, same batches: the two norms must agree to rounding after several SGD steps."""
    torch.manual_seed(0)
    batches = [(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))) for _ in range(5)]
    nets = {}
    for norm in ("custom", "builtin"):
        torch.manual_seed(1)
        net = build_model(*configs(model, norm), 1, (28, 28), 10)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for x, y in batches:
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        nets[norm] = net
    custom, builtin = nets["custom"].state_dict(), nets["builtin"].state_dict()
    assert custom.keys() == builtin.keys()
    for key in custom:
        torch.testing.assert_close(custom[key], builtin[key], rtol=1e-4, atol=1e-5, msg=key)


def test_init_schemes():
    model_cfg, norm_cfg = configs("mlp", "none", "model.init=normal", "model.init_std=0.001")
    net = build_model(model_cfg, norm_cfg, 1, (28, 28), 10)
    assert net.fc1.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert torch.count_nonzero(net.fc1.bias) == 0
    xavier = build_model(*configs("mlp", "none", "model.init=xavier_uniform"), 1, (28, 28), 10)
    default = build_model(*configs("mlp", "none"), 1, (28, 28), 10)
    bound = (6 / (784 + 100)) ** 0.5  # U(-bound, bound): std bound / sqrt(3), about twice torch's default
    assert xavier.fc1.weight.abs().max().item() <= bound
    assert xavier.fc1.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.03)
    assert default.fc1.weight.std().item() < 0.6 * bound / 3 ** 0.5  # so the check above can fail
    assert torch.count_nonzero(xavier.fc1.bias) == 0
