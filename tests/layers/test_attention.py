"""build_attention, record_attention and the layer factories."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spap import SPAP, SelfAttention
from spap.errors import ConfigError
from spap.layers import (
    ATTENTION_KINDS,
    LayerFactory,
    attention_units,
    build_attention,
    discriminator_factory,
    generator_factory,
    record_attention,
    remove_spectral_norm,
    spatial_attention,
)


def test_build_each_kind() -> None:
    assert ATTENTION_KINDS == ("none", "sagan", "spap")
    assert isinstance(build_attention("none", 8), nn.Identity)
    assert isinstance(build_attention("sagan", 16, reduction=4), SelfAttention)
    unit = build_attention(
        "spap", 8, generator_factory("instance"), order="fine_to_coarse", rates=[1, 2]
    )
    assert isinstance(unit, SPAP)
    assert unit.order == "fine_to_coarse" and unit.rates == (1, 2)
    assert any(isinstance(m, nn.InstanceNorm2d) for m in unit.modules())


def test_bad_option_names_the_key_and_suggests() -> None:
    with pytest.raises(ConfigError, match=r"'oder'.*did you mean 'order'"):
        build_attention("spap", 8, oder="coarse_to_fine")
    with pytest.raises(ConfigError, match=r"'reduce'.*did you mean 'reduction'"):
        build_attention("sagan", 8, reduce=4)
    with pytest.raises(ConfigError, match="'rates'"):
        build_attention("none", 8, rates=(1, 2))
    with pytest.raises(ConfigError, match="did you mean 'spap'"):
        build_attention("spa", 8)


def test_record_attention_collects_every_unit() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        SPAP(8, rates=(0, 1, 2)),
        nn.Sequential(SelfAttention(8), SPAP(8, attention="channel")),
    )
    assert [n for n, _ in attention_units(model)] == ["1", "2.0", "2.1"]
    x = torch.randn(2, 3, 6, 6)
    with record_attention(model) as maps:
        y = model(x)
    assert set(maps) == {"1", "2.0", "2.1"}
    assert len(maps["1"]) == 2 and maps["1"][0].shape == (2, 2, 6, 6)
    assert maps["2.0"][0].shape == (2, 36, 9)
    assert len(maps["2.1"]) == 4 and maps["2.1"][0].shape == (2, 2, 8, 1, 1)
    assert not maps["1"][0].requires_grad
    # The recorded maps are the ones forward_with_attention computes.
    _, direct = model[1].forward_with_attention(model[0](x))
    torch.testing.assert_close(maps["1"][1], direct[1])
    # Outside the block nothing is kept.
    assert all(u._attention_sink is None for _, u in attention_units(model))
    with record_attention(model) as again:
        pass
    model(x)
    assert again == {}
    assert torch.equal(model(x), y)


def test_spatial_attention_reduces_any_map() -> None:
    assert spatial_attention(torch.rand(1, 2, 4, 4)).shape == (1, 2, 4, 4)
    assert spatial_attention(torch.rand(1, 2, 3, 4, 4)).shape == (1, 2, 4, 4)
    assert spatial_attention(torch.rand(1, 2, 3, 1, 1)).shape == (1, 2, 1, 1)


def test_factory_layers() -> None:
    f = LayerFactory(norm="group", activation="lrelu")
    conv = f.conv(4, 6, 5, dilation=2)
    assert conv(torch.randn(1, 4, 9, 9)).shape == (1, 6, 9, 9)
    assert isinstance(f.norm_layer(24), nn.GroupNorm) and f.norm_layer(24).num_groups == 24
    assert f.norm_layer(64).num_groups == 32
    assert isinstance(f.act(), nn.LeakyReLU) and f.act().negative_slope == 0.2
    assert isinstance(LayerFactory().norm_layer(4), nn.Identity)
    assert isinstance(LayerFactory(activation="none").act(), nn.Identity)
    assert not LayerFactory(norm="instance").norm_layer(4).affine
    assert LayerFactory(norm="batch").norm_layer(4).affine
    d = discriminator_factory()
    assert d.spectral_norm and d.norm == "none" and d.activation == "lrelu"
    lin = d.linear(5, 3)
    assert torch.nn.utils.parametrize.is_parametrized(lin, "weight")


def test_remove_spectral_norm_bakes_the_eval_weight() -> None:
    from torch.nn.utils import parametrize

    unit = SPAP(8, rates=(1, 2), **discriminator_factory().layer_kwargs())
    with torch.no_grad():
        unit.gamma.fill_(0.5)
    unit.train()
    for _ in range(3):
        unit(torch.randn(1, 8, 6, 6))
    unit.eval()
    x = torch.randn(2, 8, 6, 6)
    before = unit(x)
    u_before = unit.project.parametrizations.weight[0]._u.clone()
    remove_spectral_norm(unit)
    assert not any(parametrize.is_parametrized(m) for m in unit.modules())
    torch.testing.assert_close(unit(x), before)
    assert u_before.shape == (8,)
    assert set(unit.state_dict()) >= {"project.weight", "gamma"}
