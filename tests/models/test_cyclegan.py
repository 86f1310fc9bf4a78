"""CycleGAN networks: shapes, parameter counts, attention placement, init, reference converter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reference.cyclegan import RefNLayerDiscriminator, RefResnetGenerator, randomise
from spap.errors import CheckpointError, ConfigError
from spap.layers import record_attention
from spap.models.cyclegan import (
    CycleGANModelConfig,
    build_discriminator,
    build_generator,
    convert_reference_discriminator,
    convert_reference_generator,
    load_problems,
    load_reference_discriminator,
    load_reference_generator,
    load_weights,
)

TINY = dict(ngf=8, ndf=8, n_blocks=3)


def cfg(**kw) -> CycleGANModelConfig:
    return CycleGANModelConfig(**{**TINY, **kw})


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------- shapes / counts


@pytest.mark.parametrize("n_blocks", [6, 9])
def test_generator_matches_reference_param_count_full_size(n_blocks: int) -> None:
    ours = build_generator(CycleGANModelConfig(n_blocks=n_blocks))
    ref = RefResnetGenerator(ngf=64, n_blocks=n_blocks)
    assert n_params(ours) == n_params(ref)
    # the published figures: 7.84M (6 blocks), 11.38M (9 blocks)
    assert n_params(ours) == {6: 7_837_699, 9: 11_378_179}[n_blocks]


def test_discriminator_matches_reference_param_count() -> None:
    ours = build_discriminator(CycleGANModelConfig())
    assert n_params(ours) == n_params(RefNLayerDiscriminator(ndf=64)) == 2_764_737


def test_shapes() -> None:
    g, d = build_generator(cfg()), build_discriminator(cfg())
    x = torch.randn(2, 3, 32, 32)
    y = g(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    assert d(y).shape == (2, 1, 2, 2)  # 32 -> 16 -> 8 -> 4 -> 3 -> 2
    assert build_discriminator(cfg(n_layers_d=2))(torch.randn(1, 3, 32, 32)).shape == (1, 1, 6, 6)
    g2 = build_generator(cfg(input_nc=1, output_nc=3))
    assert g2(torch.randn(1, 1, 16, 20)).shape == (1, 3, 16, 20)


def test_init_stats() -> None:
    g = build_generator(CycleGANModelConfig(ngf=32, n_blocks=2))
    w = torch.cat(
        [m.weight.flatten() for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    )
    assert abs(w.mean().item()) < 2e-3 and w.std().item() == pytest.approx(0.02, rel=0.03)
    biases = [m.bias for m in g.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert biases and all(torch.all(b == 0) for b in biases)
    bn = build_generator(cfg(norm="batch"))
    gamma = torch.cat([m.weight for m in bn.modules() if isinstance(m, nn.BatchNorm2d)])
    assert gamma.mean().item() == pytest.approx(1.0, abs=0.01)
    assert not any(isinstance(m, nn.Conv2d) and m.bias is not None for m in bn.stem.modules())


def test_instance_norm_is_reference_like() -> None:
    norms = [m for m in build_generator(cfg()).modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(not m.affine and not m.track_running_stats for m in norms)


# --------------------------------------------------------------------- attention placement


@pytest.mark.parametrize(
    ("places", "slots"),
    [
        (["trunk_end"], ["block_2"]),
        (["trunk_start", "trunk_end"], ["down_1", "block_2"]),
        (["block:0", "down:0", "up:1"], ["down_0", "block_0", "up_1"]),
        (["replace:1"], ["block_1"]),
    ],
)
@pytest.mark.parametrize("kind", ["spap", "sagan"])
def test_generator_placement(places, slots, kind) -> None:
    opts = {"rates": [0, 1, 2]} if kind == "spap" else {}
    g = build_generator(cfg(attention=kind, g_attention_at=places, g_attention_options=opts))
    assert list(g.attention.keys()) == slots
    x = torch.randn(1, 3, 32, 32)
    with record_attention(g) as maps:
        y = g(x)
    assert y.shape == x.shape and set(maps) == {f"attention.{s}" for s in slots}
    # gamma = 0: every unit is the identity, so G equals the plain G with the same weights
    plain = build_generator(cfg())
    report = load_weights(plain, g.state_dict())
    if "replace" in places[0]:
        assert isinstance(g.trunk[1], nn.Identity)
        assert report.new and all(k.startswith("trunk.1.") for k in report.new)
    else:
        assert report.new == []
        torch.testing.assert_close(plain(x), y, rtol=0, atol=0)


def test_unit_widths_follow_slot() -> None:
    g = build_generator(cfg(attention="spap", g_attention_at=["down:0", "trunk_end", "up:1"]))
    assert [g.attention[s].channels for s in ("down_0", "block_2", "up_1")] == [16, 32, 8]
    d = build_discriminator(cfg(attention="spap", d_attention_at=[0, 2, 3]))
    assert [d.attention[s].channels for s in ("layer_0", "layer_2", "layer_3")] == [8, 32, 64]
    with record_attention(d) as maps:
        y = d(torch.randn(1, 3, 32, 32))
    assert y.shape == (1, 1, 2, 2)
    assert set(maps) == {"attention.layer_0", "attention.layer_2", "attention.layer_3"}


def test_units_use_host_factory() -> None:
    g = build_generator(cfg(attention="spap", g_attention_at=["trunk_end"]))
    assert any(isinstance(m, nn.InstanceNorm2d) for m in g.attention.modules())
    d = build_discriminator(cfg(attention="spap", d_attention_at=[1], d_spectral_norm=True))
    assert any(hasattr(m, "parametrizations") for m in d.attention.modules())
    assert hasattr(d.head, "parametrizations")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"g_attention_at": ["trunk_ende"]}, "did you mean 'trunk_end'"),
        ({"g_attention_at": ["block:3"]}, "out of range"),
        ({"g_attention_at": ["trunk_end", "block:2"]}, "same place"),
        ({"g_attention_at": ["block:2", "replace:2"]}, "same place"),
        ({"d_attention_at": [4]}, "0..3"),
        ({}, "no place"),
    ],
)
def test_placement_errors(kw, match) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg(attention="spap", **kw).validate()


def test_attention_none_ignores_places() -> None:
    g = build_generator(cfg(g_attention_at=["trunk_end"]))
    assert len(g.attention) == 0 and n_params(g) == n_params(RefResnetGenerator(ngf=8, n_blocks=3))


def test_attention_options_validated() -> None:
    with pytest.raises(ConfigError, match="order"):
        build_generator(
            cfg(
                attention="spap",
                g_attention_at=["trunk_end"],
                g_attention_options={"ordr": "fine_to_coarse"},
            )
        )


def test_mapping_config() -> None:
    g = build_generator({"ngf": 8, "n_blocks": 2})
    assert len(g.trunk) == 2


# --------------------------------------------------------------------- converter


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_blocks=3),
        dict(n_blocks=2, dropout=True),
        dict(n_blocks=2, norm="batch"),
        dict(n_blocks=2, norm="none"),
        dict(n_blocks=2, norm="none", dropout=True),
        dict(n_blocks=0),
        dict(n_blocks=2, input_nc=1, output_nc=3),
    ],
)
def test_reference_generator_converts_exactly(kw) -> None:
    ref = randomise(RefResnetGenerator(ngf=8, **kw))
    g = load_reference_generator(ref.state_dict()).eval()
    x = torch.randn(2, kw.get("input_nc", 3), 32, 24)
    torch.testing.assert_close(g(x), ref(x), rtol=0, atol=1e-5)
    if kw.get("norm") == "none":  # spap's convs keep a bias there (zero: the same function)
        assert all(
            (p == 0).all()
            for k, p in g.named_parameters()
            if k.endswith("bias") and "head" not in k
        )
    else:
        assert n_params(g) == n_params(ref)


def test_reference_generator_file_and_checks(tmp_path) -> None:
    ref = randomise(RefResnetGenerator(ngf=8, n_blocks=3))
    sd = ref.state_dict()
    # old reference checkpoints: instance-norm running stats and DataParallel prefix
    sd = {f"module.{k}": v for k, v in sd.items()}
    sd["module.model.2.running_mean"] = torch.zeros(8)
    sd["module.model.10.conv_block.2.running_var"] = torch.ones(32)
    torch.save(sd, tmp_path / "latest_net_G_A.pth")
    g = load_reference_generator(tmp_path / "latest_net_G_A.pth", n_blocks=3, ngf=8).eval()
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(g(x), ref(x), rtol=0, atol=1e-5)
    with pytest.raises(CheckpointError, match="n_blocks 3 in the file, 9 given"):
        load_reference_generator(tmp_path / "latest_net_G_A.pth", n_blocks=9)
    with pytest.raises(CheckpointError, match="not a reference"):
        load_reference_generator({"foo.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="no such file"):
        load_reference_generator(tmp_path / "missing.pth")


def test_spap_generator_from_reference_is_unchanged() -> None:
    ref = randomise(RefResnetGenerator(ngf=8, n_blocks=3))
    mc = cfg(
        attention="spap",
        g_attention_at=["block:0", "trunk_end"],
        g_attention_options={"rates": [0, 1, 2]},
    )
    g = load_reference_generator(ref.state_dict(), model_cfg=mc).eval()
    assert set(g.attention) == {"block_0", "block_2"}
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(g(x), ref(x), rtol=0, atol=1e-5)
    # the units are new and trainable: moving gamma changes the output
    with torch.no_grad():
        g.attention["block_2"].gamma.fill_(0.5)
    assert (g(x) - ref(x)).abs().max() > 1e-4


def test_load_weights_report() -> None:
    plain = build_generator(cfg())
    spap = build_generator(cfg(attention="spap", g_attention_at=["trunk_end", "replace:0"]))
    report = load_weights(spap, plain.state_dict())
    assert report.new and all(k.startswith("attention.") for k in report.new)
    assert report.dropped and all(k.startswith("trunk.0.") for k in report.dropped)
    assert "attention.block_2" in report.summary()
    with pytest.raises(CheckpointError, match="shape"):
        load_weights(build_generator(cfg(ngf=4)), plain.state_dict())


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_layers=3),
        dict(n_layers=2, norm="batch"),
        dict(n_layers=2, norm="none"),
        dict(n_layers=1),
    ],
)
def test_reference_discriminator_converts_exactly(kw) -> None:
    ref = randomise(RefNLayerDiscriminator(ndf=8, **kw))
    state, arch = convert_reference_discriminator(ref.state_dict())
    assert arch["n_layers_d"] == kw["n_layers"]
    assert arch["norm"] == kw.get("norm", "instance")
    d = load_reference_discriminator(ref.state_dict()).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(d(x), ref(x), rtol=0, atol=1e-5)


def test_convert_reports_architecture() -> None:
    _, arch = convert_reference_generator(
        RefResnetGenerator(ngf=8, n_blocks=2, dropout=True).state_dict()
    )
    assert arch == dict(
        ngf=8,
        n_blocks=2,
        norm="instance",
        dropout=True,
        padding_mode="reflect",
        input_nc=3,
        output_nc=3,
    )


def test_reference_norm_is_inferred() -> None:
    for norm in ("instance", "batch", "none"):
        _, arch = convert_reference_generator(
            RefResnetGenerator(ngf=4, n_blocks=1, norm=norm).state_dict()
        )
        assert arch["norm"] == norm


def test_wrong_kind_of_reference_file_is_named(tmp_path) -> None:
    g = RefResnetGenerator(ngf=4, n_blocks=1).state_dict()
    d = RefNLayerDiscriminator(ndf=4).state_dict()
    torch.save(d, tmp_path / "latest_net_D_A.pth")
    with pytest.raises(
        CheckpointError, match=r"latest_net_D_A.pth: a reference PatchGAN discriminator"
    ):
        convert_reference_generator(tmp_path / "latest_net_D_A.pth")
    with pytest.raises(CheckpointError, match="a reference ResNet generator, not a PatchGAN"):
        convert_reference_discriminator(g)
    unet = {"model.model.0.weight": torch.zeros(4, 3, 4, 4)}
    with pytest.raises(CheckpointError, match="U-Net"):
        convert_reference_generator(unet, source="latest_net_G.pth")


def test_model_config_mismatches_are_all_named() -> None:
    ref = RefResnetGenerator(ngf=8, n_blocks=3, dropout=True).state_dict()
    with pytest.raises(CheckpointError) as err:
        load_reference_generator(ref, model_cfg=cfg(n_blocks=2))
    msg = str(err.value)
    assert "n_blocks 3 in the file, 2 in the model config" in msg
    assert "dropout true in the file, false in the model config" in msg
    assert "\n" not in msg


def test_skip_mismatched_and_load_problems() -> None:
    three = build_generator(cfg(input_nc=3))
    one = build_generator(cfg(input_nc=1, n_blocks=4))
    report = load_weights(one, three.state_dict(), skip_mismatched=True)
    assert report.mismatched == ["stem.0.weight"]
    assert {k.split(".")[1] for k in report.new if k.startswith("trunk.")} == {"3"}
    problems = load_problems(one, report)
    assert problems == ["not in the file: trunk.3", "other shapes in the file: stem.0"]
    assert "of another shape" in report.summary()
    # units the file lacks and blocks the network replaces are no problem
    spap = build_generator(cfg(attention="spap", g_attention_at=["replace:1", "trunk_end"]))
    report = load_weights(spap, three.state_dict())
    assert report.dropped and load_problems(spap, report) == []
    # spectral norm's power-iteration vectors are state, not weights
    d_sn = build_discriminator(cfg(d_spectral_norm=True))
    report = load_weights(d_sn, build_discriminator(cfg()).state_dict())
    assert load_problems(d_sn, report) == []
