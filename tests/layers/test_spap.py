"""The SPAP unit: shapes, identity at init, orders, attention maps, gradients, config errors."""

from __future__ import annotations

import pytest
import torch

from spap import SPAP
from spap.errors import ConfigError
from spap.layers import LayerFactory
from spap.layers.spap import DEFAULT_RATES


def _with_gamma(unit: SPAP, value: float = 0.5) -> SPAP:
    with torch.no_grad():
        unit.gamma.fill_(value)
    return unit


@pytest.mark.parametrize(
    ("c", "h", "w"),
    [(8, 16, 16), (16, 5, 7), (3, 1, 1), (8, 3, 9), (32, 9, 9)],
)
def test_shape_is_preserved_for_any_size(c: int, h: int, w: int) -> None:
    # Sizes at or below the largest default rate (8) included: atrous branches degenerate
    # to their centre tap but still give finite outputs.
    unit = _with_gamma(SPAP(c))
    x = torch.randn(2, c, h, w)
    y = unit(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_rate_above_map_size_is_the_centre_tap() -> None:
    # With a 3x3 map and rate 4 only the centre weight ever sees the input: the branch
    # equals a 1x1 conv using that weight.
    unit = SPAP(4, rates=(1, 4), inner_channels=4)
    conv = unit.branches[1][0]
    x = torch.randn(1, 4, 3, 3)
    expected = torch.nn.functional.conv2d(x, conv.weight[:, :, 1:2, 1:2], conv.bias)
    torch.testing.assert_close(conv(x), expected)


@pytest.mark.parametrize("attention", ["spatial", "channel", "both"])
@pytest.mark.parametrize("order", ["coarse_to_fine", "fine_to_coarse"])
def test_identity_at_init_is_exact(attention: str, order: str) -> None:
    unit = SPAP(8, attention=attention, order=order, **LayerFactory(norm="batch").layer_kwargs())
    x = torch.randn(2, 8, 11, 6) * 100
    assert unit.gamma.detach().item() == 0.0
    assert torch.equal(unit(x), x)
    unit.eval()
    assert torch.equal(unit(x), x)


def test_orders_compute_different_things() -> None:
    x = torch.randn(2, 8, 12, 12)
    torch.manual_seed(1)
    c2f = _with_gamma(SPAP(8, order="coarse_to_fine"))
    torch.manual_seed(1)
    f2c = _with_gamma(SPAP(8, order="fine_to_coarse"))
    # Same seed -> same weights; only the cascade order differs.
    for (n1, p1), (n2, p2) in zip(c2f.named_parameters(), f2c.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert c2f.cascade == [4, 3, 2, 1, 0]
    assert f2c.cascade == [0, 1, 2, 3, 4]
    assert (c2f(x) - f2c(x)).abs().max() > 1e-3


def test_blend_formula() -> None:
    unit = _with_gamma(SPAP(8), 0.25)
    x = torch.randn(1, 8, 8, 8)
    y, _ = unit.forward_with_attention(x)
    unit_h = _with_gamma(SPAP(8), 1.0)
    unit_h.load_state_dict({**unit.state_dict(), "gamma": torch.tensor(1.0)})
    h = unit_h(x)
    torch.testing.assert_close(y, 0.25 * h + 0.75 * x)


@pytest.mark.parametrize("normalizer", ["softmax", "sigmoid"])
@pytest.mark.parametrize(
    ("attention", "shape"),
    [
        ("spatial", (2, 2, 7, 9)),
        ("channel", (2, 2, 6, 1, 1)),
        ("both", (2, 2, 6, 7, 9)),
    ],
)
def test_pair_attention_sums_to_one(attention: str, shape: tuple, normalizer: str) -> None:
    unit = SPAP(12, inner_channels=6, attention=attention, normalizer=normalizer)
    _, maps = unit.forward_with_attention(torch.randn(2, 12, 7, 9))
    assert len(maps) == len(DEFAULT_RATES) - 1
    for a in maps:
        assert a.shape == shape
        assert (a >= 0).all() and (a <= 1).all()
        torch.testing.assert_close(a.sum(dim=1), torch.ones_like(a.sum(dim=1)))
        # Not trivially uniform: the maps depend on the input.
        assert a.std() > 0


@pytest.mark.parametrize("attention", ["spatial", "channel", "both"])
@pytest.mark.parametrize("norm", ["none", "batch", "instance", "group"])
def test_gradients_reach_every_parameter(attention: str, norm: str) -> None:
    unit = _with_gamma(
        SPAP(8, rates=(0, 1, 3), attention=attention, **LayerFactory(norm).layer_kwargs())
    )
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    unit(x).square().mean().backward()
    for name, p in unit.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None


def test_gamma_gets_gradient_at_init() -> None:
    unit = SPAP(8)
    x = torch.randn(1, 8, 8, 8)
    unit(x).sum().backward()
    assert unit.gamma.grad is not None and unit.gamma.grad.abs() > 0


def test_spectral_norm_is_applied() -> None:
    from torch.nn.utils import parametrize

    from spap.layers.factories import sigma_max

    unit = SPAP(8, spectral_norm=True)
    convs = [m for m in unit.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(parametrize.is_parametrized(m, "weight") for m in convs)
    unit.train()
    for _ in range(30):  # power iterations converge
        unit(torch.randn(1, 8, 8, 8))
    unit.eval()
    for m in convs:
        assert sigma_max(m.weight) == pytest.approx(1.0, abs=0.05)
    plain = SPAP(8)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())


def test_fuse_layers_zero_and_kernel_one() -> None:
    unit = _with_gamma(SPAP(8, rates=(1, 2), fuse_layers=0, fuse_kernel=1))
    assert len(unit.fuse) == 1 and len(unit.fuse[0].embed) == 0
    x = torch.randn(1, 8, 5, 5)
    assert unit(x).shape == x.shape


def test_defaults_are_documented_values() -> None:
    unit = SPAP(64)
    assert unit.rates == DEFAULT_RATES
    assert unit.inner_channels == 16
    assert len(unit.branches) == 5 and len(unit.fuse) == 4
    assert SPAP(16).inner_channels == 8
    assert SPAP(4).inner_channels == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rates": ()}, "empty"),
        ({"rates": (2,)}, "at least two"),
        ({"rates": (2, 1)}, "strictly increasing"),
        ({"rates": (1, 1, 2)}, "strictly increasing"),
        ({"rates": (-1, 2)}, "non-negative"),
        ({"rates": (1.5, 2)}, "non-negative integers"),
        ({"rates": "12"}, "sequence"),
        ({"order": "coarse2fine"}, "coarse_to_fine"),
        ({"attention": "spatail"}, "did you mean 'spatial'"),
        ({"normalizer": "softmx"}, "did you mean 'softmax'"),
        ({"channels": 0}, "channels"),
        ({"inner_channels": 0}, "inner_channels"),
        ({"fuse_kernel": 2}, "odd"),
        ({"fuse_layers": -1}, "fuse_layers"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs: dict, match: str) -> None:
    kwargs = {"channels": 8, **kwargs}
    with pytest.raises(ConfigError, match=match):
        SPAP(**kwargs)


def test_factory_names_are_checked() -> None:
    with pytest.raises(ConfigError, match="did you mean 'batch'"):
        LayerFactory(norm="bacth")
    with pytest.raises(ConfigError, match="activation"):
        LayerFactory(activation="gelu")
