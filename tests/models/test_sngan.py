"""SNGAN-style G and D: shapes per resolution, attention placement, spectral norm, config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spap.config import from_dict, to_dict
from spap.errors import ConfigError
from spap.layers import SPAP, SelfAttention, record_attention
from spap.models.sngan import (
    D_ARCH,
    G_ARCH,
    SNGANConfig,
    SNGANDiscriminator,
    SNGANGenerator,
    build_discriminator,
    build_generator,
    d_block_resolutions,
    g_block_resolutions,
    latents,
)


@pytest.mark.parametrize("res", [32, 64, 128, 256])
def test_shapes_per_resolution(res: int) -> None:
    g = SNGANGenerator(res, z_dim=8, ch=2)
    d = SNGANDiscriminator(res, ch=2)
    x = g(torch.randn(2, 8))
    assert x.shape == (2, 3, res, res)
    assert x.abs().max() <= 1.0
    assert d(x).shape == (2,)
    # widths follow the architecture table: first G linear -> ch * mult[0] * 4 * 4
    assert g.linear.out_features == 2 * G_ARCH[res][0] * 16
    assert d.linear.in_features == 2 * D_ARCH[res][0][-1]
    assert len(g.blocks) == len(G_ARCH[res]) - 1
    assert g_block_resolutions(res)[-1] == res


def test_block_resolutions() -> None:
    assert g_block_resolutions(128) == [8, 16, 32, 64, 128]
    assert d_block_resolutions(128) == [64, 32, 16, 8, 4, 4]
    assert d_block_resolutions(32) == [16, 8, 8, 8]


def _sn_count(m: nn.Module) -> tuple[int, int]:
    layers = [x for x in m.modules() if isinstance(x, (nn.Conv2d, nn.Linear))]
    with_sn = [
        x for x in layers if hasattr(x, "parametrizations") and "weight" in x.parametrizations
    ]
    return len(with_sn), len(layers)


def test_spectral_norm_everywhere_in_d_optional_in_g() -> None:
    d = SNGANDiscriminator(32, ch=4, attention={16: "spap", 8: "sagan"})
    n_sn, n = _sn_count(d)
    assert n_sn == n > 10
    g = SNGANGenerator(32, z_dim=8, ch=4)
    assert _sn_count(g)[0] == 0
    assert any(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    g_sn = SNGANGenerator(32, z_dim=8, ch=4, spectral_norm=True)
    n_sn, n = _sn_count(g_sn)
    assert n_sn == n
    # D's largest singular value per layer is ~1 after a few power iterations
    conv = d.blocks[1].conv1
    for _ in range(30):
        conv(torch.randn(1, conv.in_channels, 8, 8))
    w = conv.weight.detach().reshape(conv.out_channels, -1)
    assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("kind,cls", [("sagan", SelfAttention), ("spap", SPAP)])
def test_attention_in_g_and_d(kind: str, cls: type) -> None:
    opts = {"spap": {"rates": [0, 1, 2], "order": "fine_to_coarse"}}
    g = SNGANGenerator(32, z_dim=8, ch=4, attention={16: kind}, attention_options=opts)
    d = SNGANDiscriminator(32, ch=4, attention={8: kind}, attention_options=opts)
    assert list(g.attention_units()) == ["g16"] and isinstance(g.attention["g16"], cls)
    assert list(d.attention_units()) == ["d8"] and isinstance(d.attention["d8"], cls)
    if kind == "spap":
        assert g.attention["g16"].order == "fine_to_coarse"
        assert g.attention["g16"].rates == (0, 1, 2)
    # D's unit uses D's factory: spectral norm inside the unit too
    n_sn, n = _sn_count(d.attention["d8"])
    assert n_sn == n > 0
    # G's unit sits at 16x16 with that block's channels; maps are recorded
    with record_attention(g) as maps:
        x = g(torch.randn(2, 8))
    assert x.shape == (2, 3, 32, 32)
    (name,) = maps
    assert name == "attention.g16"
    if kind == "spap":
        assert maps[name][0].shape == (2, 2, 16, 16)
    else:
        assert maps[name][0].shape == (2, 256, 64)
    assert d(x).shape == (2,)


def test_attention_none_places_no_unit() -> None:
    g = SNGANGenerator(32, z_dim=8, ch=4, attention={16: "none", 8: "none"})
    d = SNGANDiscriminator(32, ch=4, attention={8: "none"})
    assert g.attention_units() == {} and d.attention_units() == {}
    assert not any(isinstance(m, (SPAP, SelfAttention)) for m in [*g.modules(), *d.modules()])


def test_attention_starts_as_identity() -> None:
    """gamma = 0: adding a unit does not change the function at init."""
    torch.manual_seed(1)
    base = SNGANGenerator(32, z_dim=8, ch=4).eval()
    torch.manual_seed(1)
    with_unit = SNGANGenerator(32, z_dim=8, ch=4, attention={16: "spap"}).eval()
    z = torch.randn(3, 8)
    assert torch.allclose(base(z), with_unit(z), atol=1e-6)


def test_unknown_attention_option_and_bad_resolution() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        SNGANGenerator(32, ch=4, attention={16: "spap"}, attention_options={"spap": {"oder": "x"}})
    with pytest.raises(ConfigError, match="no G block outputs 4x4"):
        SNGANGenerator(32, ch=4, attention={4: "sagan"})


def test_config_validation_and_round_trip() -> None:
    cfg = from_dict(
        SNGANConfig,
        {"resolution": 64, "g_attention": {32: "spap"}, "d_attention": {"16": "sagan", 8: "none"}},
    )
    assert cfg.g_attention == {32: "spap"} and cfg.d_attention == {16: "sagan", 8: "none"}
    # to_dict makes string keys; rebuilding gives the same config
    again = from_dict(SNGANConfig, to_dict(cfg))
    assert again == cfg
    with pytest.raises(ConfigError, match="choose from"):
        from_dict(SNGANConfig, {"resolution": 64, "g_attention": {128: "spap"}})
    with pytest.raises(ConfigError, match="not one of"):
        from_dict(SNGANConfig, {"resolution": 64, "g_attention": {32: "transformer"}})
    with pytest.raises(ConfigError, match="resolution"):
        from_dict(SNGANConfig, {"resolution": 48})


def test_builders_follow_config() -> None:
    cfg = from_dict(
        SNGANConfig,
        {
            "resolution": 32,
            "z_dim": 12,
            "g_ch": 4,
            "d_ch": 2,
            "g_spectral_norm": True,
            "g_attention": {8: "spap"},
            "d_attention": {16: "spap"},
            "spap_options": {"order": "fine_to_coarse", "rates": [0, 1, 2]},
        },
    )
    g, d = build_generator(cfg), build_discriminator(cfg)
    assert g.z_dim == 12 and g.linear.out_features == 4 * 4 * 16
    assert d.blocks[0].conv1.out_channels == 2 * 4
    assert g.attention["g8"].order == d.attention["d16"].order == "fine_to_coarse"
    assert _sn_count(g)[0] == _sn_count(g)[1]


def test_init_schemes_differ_and_default_untouched() -> None:
    torch.manual_seed(0)
    a = SNGANDiscriminator(32, ch=2, init="default")
    torch.manual_seed(0)
    b = SNGANDiscriminator(32, ch=2, init="xavier")
    wa = a.blocks[1].conv1.parametrizations.weight.original
    wb = b.blocks[1].conv1.parametrizations.weight.original
    assert not torch.equal(wa, wb)
    assert b.linear.bias.abs().max() == 0  # biases zeroed by the SNGAN init


def test_latents_depend_only_on_seed_and_index() -> None:
    a = latents(3, range(5), 7)
    b = latents(3, [4, 2], 7)
    assert a.shape == (5, 7)
    assert torch.equal(a[4], b[0]) and torch.equal(a[2], b[1])
    assert not torch.equal(latents(4, [2], 7)[0], a[2])
    g = SNGANGenerator(32, z_dim=7, ch=2).eval()
    x = g.sample(3, seed=3)
    assert torch.allclose(x, g(a[:3]), atol=1e-6)
