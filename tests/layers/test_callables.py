"""The units take layer callables (conv_layer, norm_layer, act_layer, spectral_norm, device,
dtype) as torchvision / timm blocks do, and LayerFactory routes to exactly the same units."""

from __future__ import annotations

import copy
import pickle
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from spap import SPAP, SelfAttention
from spap.errors import ConfigError
from spap.layers import (
    LayerFactory,
    attention_options,
    build_attention,
    discriminator_factory,
    generator_factory,
)
from spap.layers.factories import group_norm
from spap.layers.spap import default_inner_channels

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v0_1"


def _conv_blocks(unit: SPAP) -> list[nn.Sequential]:
    """Every conv-norm-act block of a unit: the branches, then each fuse block's stacks."""
    blocks = list(unit.branches)
    for fuse in unit.fuse:
        blocks += list(fuse.embed) + list(fuse.refine)
    return blocks


def _convs(unit: nn.Module) -> list[nn.Conv2d]:
    return [m for m in unit.modules() if isinstance(m, nn.Conv2d)]


def test_group_norm_and_silu_are_the_modules_asked_for() -> None:
    unit = SPAP(64, rates=(0, 1, 2), norm_layer=partial(nn.GroupNorm, 8), act_layer=nn.SiLU)
    blocks = _conv_blocks(unit)
    assert len(blocks) == 3 + 2 * 2
    for conv, norm, act in blocks:
        assert isinstance(conv, nn.Conv2d) and conv.bias is None  # a norm follows
        assert isinstance(norm, nn.GroupNorm)
        assert (norm.num_groups, norm.num_channels) == (8, 16)
        assert type(act) is nn.SiLU
    assert unit.project.bias is not None and unit.fuse[0].spatial_head.bias is not None
    x = torch.randn(2, 64, 6, 6)
    assert torch.equal(unit(x), x)
    # Nothing of the callables is kept on the unit: it copies, pickles and scripts as before.
    for clone in (copy.deepcopy(unit), pickle.loads(pickle.dumps(unit))):
        assert clone.state_dict().keys() == unit.state_dict().keys()
    with torch.no_grad():
        unit.gamma.fill_(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.x
        scripted = torch.jit.script(unit.eval())
    torch.testing.assert_close(scripted(x), unit(x))


def test_no_norm_means_conv_bias_and_identity() -> None:
    unit = SPAP(8, rates=(1, 2), act_layer=partial(nn.LeakyReLU, 0.2))
    for conv, norm, act in _conv_blocks(unit):
        assert conv.bias is not None
        assert type(norm) is nn.Identity
        assert isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.2
    for _, _, act in _conv_blocks(SPAP(8, rates=(1, 2), act_layer=None)):
        assert type(act) is nn.Identity


def test_sync_batchnorm_builds_with_batchnorm_state_names() -> None:
    unit = SPAP(16, rates=(0, 1, 2), norm_layer=nn.SyncBatchNorm)
    assert all(isinstance(norm, nn.SyncBatchNorm) for _, norm, _ in _conv_blocks(unit))
    # Same state as a BatchNorm2d unit, so checkpoints move between the two.
    plain = SPAP(16, rates=(0, 1, 2), norm_layer=nn.BatchNorm2d)
    assert unit.state_dict().keys() == plain.state_dict().keys()
    unit.load_state_dict(plain.state_dict())


def test_resnet18_with_a_unit_after_layer3() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    model = copy.deepcopy(ref)
    unit = SPAP(256, norm_layer=nn.BatchNorm2d, act_layer=partial(nn.ReLU, inplace=True))
    model.layer3 = nn.Sequential(model.layer3, unit)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ref(x))  # gamma starts at 0: exactly the identity
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([1, 3]))
    loss.backward()
    assert unit.gamma.grad is not None and unit.gamma.grad.abs() > 0
    opt.step()
    assert unit.gamma.item() != 0.0
    assert torch.isfinite(model(x)).all()


def test_meta_device_construction() -> None:
    unit = SPAP(32, norm_layer=nn.BatchNorm2d, spectral_norm=True, device="meta")
    sagan = SelfAttention(32, spectral_norm=True, device="meta")
    for m in (unit, sagan):
        tensors = list(m.parameters()) + list(m.buffers())
        assert tensors and all(t.is_meta for t in tensors)
    # The usual deferred-init path: materialise on the CPU, then load real weights.
    real = SPAP(32, norm_layer=nn.BatchNorm2d, spectral_norm=True)
    unit.to_empty(device="cpu").load_state_dict(real.state_dict())
    x = torch.randn(1, 32, 5, 5)
    torch.testing.assert_close(unit.eval()(x), real.eval()(x))


def test_float64_construction() -> None:
    unit = SPAP(
        8, rates=(0, 1, 2), norm_layer=nn.BatchNorm2d, act_layer=nn.PReLU, dtype=torch.float64
    )
    sagan = SelfAttention(8, dtype=torch.float64)
    for m in (unit, sagan):
        assert all(p.dtype == torch.float64 for p in m.parameters())
        assert m.gamma.dtype == torch.float64
    assert unit.branches[0][1].num_batches_tracked.dtype == torch.int64
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    assert unit(x).dtype == torch.float64 and sagan(x).dtype == torch.float64


def test_callables_without_device_keywords_are_moved() -> None:
    def plain_conv(in_ch, out_ch, kernel_size, padding, dilation, bias):  # no device / dtype
        return nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, dilation=dilation, bias=bias)

    unit = SPAP(
        16,
        rates=(0, 1),
        conv_layer=plain_conv,
        norm_layer=lambda c: nn.GroupNorm(4, c),
        device="meta",
        dtype=torch.float64,
    )
    norms = [norm for _, norm, _ in _conv_blocks(unit)]
    assert all(isinstance(n, nn.GroupNorm) and n.num_groups == 4 for n in norms)
    for t in list(unit.parameters()) + list(unit.buffers()):
        assert t.is_meta and t.dtype == torch.float64
    cpu = SPAP(16, rates=(0, 1), norm_layer=lambda c: nn.GroupNorm(4, c), dtype=torch.float64)
    assert all(p.dtype == torch.float64 and not p.is_meta for p in cpu.parameters())


def test_spectral_norm_parametrizes_every_conv() -> None:
    unit = SPAP(8, rates=(0, 1, 2), attention="both", spectral_norm=True)
    sagan = SelfAttention(16, spectral_norm=True)
    for m in (unit, sagan):
        convs = _convs(m)
        assert convs and all(parametrize.is_parametrized(c, "weight") for c in convs)
    keys = set(unit.state_dict())
    for stem in ("branches.0.0", "fuse.1.channel_head", "fuse.1.spatial_head", "project"):
        assert {
            f"{stem}.parametrizations.weight.original",
            f"{stem}.parametrizations.weight.0._u",
            f"{stem}.parametrizations.weight.0._v",
        } <= keys
    assert not any(parametrize.is_parametrized(c) for c in _convs(SPAP(8, rates=(1, 2))))


# Each factory, and the callables a user would write for the same layers.
ROUTES = [
    (LayerFactory(), {}),
    (generator_factory("batch"), {"norm_layer": nn.BatchNorm2d}),
    (generator_factory("instance"), {"norm_layer": nn.InstanceNorm2d}),
    (
        LayerFactory(norm="instance", norm_affine=True, activation="none"),
        {"norm_layer": partial(nn.InstanceNorm2d, affine=True), "act_layer": None},
    ),
    (
        LayerFactory(norm="group", activation="lrelu"),
        {"norm_layer": group_norm, "act_layer": partial(nn.LeakyReLU, 0.2)},
    ),
    (
        LayerFactory(norm="batch", spectral_norm=True),
        {"norm_layer": nn.BatchNorm2d, "spectral_norm": True},
    ),
    (discriminator_factory(), {"act_layer": partial(nn.LeakyReLU, 0.2), "spectral_norm": True}),
]


def _state(make, seed: int = 3) -> tuple[str, list[tuple[str, torch.Tensor]]]:
    torch.manual_seed(seed)
    unit = make()
    return repr(unit), list(unit.state_dict().items())


def _assert_same(a: tuple, b: tuple) -> None:
    assert a[0] == b[0]  # same module tree, same layer settings
    assert [k for k, _ in a[1]] == [k for k, _ in b[1]]
    for (name, x), (_, y) in zip(a[1], b[1]):
        assert x.dtype == y.dtype and torch.equal(x, y), name


def _factory_reference(c: int, f: LayerFactory, rates, attention, normalizer, layers) -> nn.Module:
    """A SPAP unit's layers made with the factory's own conv / conv_block, in the unit's order."""
    inner = default_inner_channels(c)
    n_logits = 2 if normalizer == "softmax" else 1
    ref = nn.Module()
    ref.branches = nn.ModuleList(
        [f.conv_block(c, inner, 1 if r == 0 else 3, dilation=max(r, 1)) for r in rates]
    )
    ref.fuse = nn.ModuleList()
    for _ in rates[1:]:
        block = nn.Module()
        block.embed = nn.Sequential(
            *[f.conv_block(inner * (2 if i == 0 else 1), inner, 3) for i in range(layers)]
        )
        in_ch = inner if layers else 2 * inner
        block.spatial_head = f.conv(in_ch, n_logits, 1) if attention != "channel" else nn.Identity()
        block.channel_head = (
            f.conv(in_ch, n_logits * inner, 1) if attention != "spatial" else nn.Identity()
        )
        block.refine = nn.Sequential(*[f.conv_block(inner, inner, 3) for _ in range(layers)])
        ref.fuse.append(block)
    ref.project = f.conv(inner, c, 1)
    ref.gamma = nn.Parameter(torch.tensor(0.0))
    return ref


@pytest.mark.parametrize(("factory", "explicit"), ROUTES)
@pytest.mark.parametrize(
    ("attention", "normalizer", "layers"),
    [("spatial", "softmax", 1), ("channel", "sigmoid", 2), ("both", "softmax", 0)],
)
def test_factory_route_equals_explicit_callables(
    factory: LayerFactory, explicit: dict, attention: str, normalizer: str, layers: int
) -> None:
    opts = {"rates": (0, 1, 2), "attention": attention, "normalizer": normalizer}
    opts["fuse_layers"] = layers
    via_factory = _state(lambda: build_attention("spap", 24, factory, **opts))
    via_kwargs = _state(lambda: SPAP(24, **factory.layer_kwargs(), **opts))
    via_callables = _state(lambda: SPAP(24, **explicit, **opts))
    _assert_same(via_factory, via_kwargs)
    _assert_same(via_factory, via_callables)
    # Same names and the same initial values as the factory's own layers (the 0.1 unit).
    torch.manual_seed(3)
    ref = _factory_reference(24, factory, opts["rates"], attention, normalizer, layers)
    _, unit_state = via_factory
    assert [(k, v.dtype, v.shape) for k, v in unit_state] == [
        (k, v.dtype, v.shape) for k, v in ref.state_dict().items()
    ]
    for (name, x), y in zip(unit_state, ref.state_dict().values()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize(("factory", "explicit"), ROUTES)
def test_sagan_factory_route_equals_explicit_callables(
    factory: LayerFactory, explicit: dict
) -> None:
    sn = explicit.get("spectral_norm", False)
    via_factory = _state(lambda: build_attention("sagan", 16, factory, reduction=4))
    via_callables = _state(lambda: SelfAttention(16, reduction=4, spectral_norm=sn))
    _assert_same(via_factory, via_callables)
    torch.manual_seed(3)
    ref = nn.Module()
    for name, (i, o) in {"theta": (16, 4), "phi": (16, 4), "g": (16, 8), "o": (8, 16)}.items():
        setattr(ref, name, factory.conv(i, o, 1, bias=False))
    ref.gamma = nn.Parameter(torch.tensor(0.0))
    _, state = via_factory
    assert [k for k, _ in state] == list(ref.state_dict())
    for (name, x), y in zip(state, ref.state_dict().values()):
        assert torch.equal(x, y), name


def _units_in(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The state dict of every attention unit of a saved network, by prefix."""
    prefixes = [
        k[: -len("gamma")] for k in state if k.startswith("attention.") and k.endswith("gamma")
    ]
    return {p: {k[len(p) :]: v for k, v in state.items() if k.startswith(p)} for p in prefixes}


def _in_channels(unit_state: dict[str, torch.Tensor]) -> int:
    for key in ("branches.0.0.weight", "branches.0.0.parametrizations.weight.original"):
        if key in unit_state:
            return unit_state[key].shape[1]
    raise AssertionError(sorted(unit_state))


@pytest.mark.parametrize(
    ("fixture", "network", "rates", "layer_args", "factory"),
    [
        (
            "cyclegan_step4.pt",
            "G_A",
            (0, 1, 2),
            {"norm_layer": nn.InstanceNorm2d},
            LayerFactory(norm="instance", activation="relu"),
        ),
        (
            "cyclegan_step4.pt",
            "D_B",
            (0, 1, 2),
            {"norm_layer": nn.InstanceNorm2d, "act_layer": partial(nn.LeakyReLU, 0.2)},
            LayerFactory(norm="instance", activation="lrelu"),
        ),
        (
            "gan_step4.pt",
            "G_ema",
            (0, 1, 2, 4, 8),
            {"norm_layer": nn.BatchNorm2d, "spectral_norm": True},
            LayerFactory(norm="batch", spectral_norm=True),
        ),
        (
            "gan_step4.pt",
            "D",
            (0, 1, 2, 4, 8),
            {"spectral_norm": True},
            LayerFactory(norm="none", spectral_norm=True),
        ),
    ],
)
def test_v0_1_checkpoints_load_strictly(
    fixture: str, network: str, rates: tuple, layer_args: dict, factory: LayerFactory
) -> None:
    ckpt = torch.load(FIXTURES / fixture, map_location="cpu", weights_only=True)
    units = _units_in(ckpt["task"]["models"][network])
    assert units
    for unit_state in units.values():
        c = _in_channels(unit_state)
        unit = SPAP(c, rates=rates, **layer_args)
        unit.load_state_dict(unit_state, strict=True)
        routed = build_attention("spap", c, factory, rates=rates)
        routed.load_state_dict(unit_state, strict=True)
        assert abs(unit.gamma.item()) > 0  # trained for a few steps
        x = torch.randn(2, c, 8, 8)
        unit.eval(), routed.eval()
        torch.testing.assert_close(unit(x), routed(x), rtol=0, atol=0)


def test_layer_arguments_are_not_config_options() -> None:
    layer_args = {"conv_layer", "norm_layer", "act_layer", "spectral_norm", "device", "dtype"}
    spap_opts, sagan_opts = attention_options("spap"), attention_options("sagan")
    assert spap_opts == (
        "rates",
        "inner_channels",
        "order",
        "attention",
        "normalizer",
        "fuse_layers",
        "fuse_kernel",
        "gamma_init",
    )
    assert sagan_opts == ("reduction", "pool")
    assert not layer_args & (set(spap_opts) | set(sagan_opts)) and "factory" not in spap_opts
    with pytest.raises(ConfigError, match="'norm_layer'"):
        build_attention("spap", 8, norm_layer=nn.BatchNorm2d)
    with pytest.raises(ConfigError, match="LayerFactory"):
        build_attention("spap", 8, {"norm": "batch"})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"norm_layer": nn.BatchNorm2d(8)}, "not a module instance"),
        ({"act_layer": "relu"}, "act_layer must be a callable"),
        ({"conv_layer": None}, "conv_layer must be a callable, got None"),
        ({"spectral_norm": "yes"}, "spectral_norm"),
        ({"dtype": "float64"}, "dtype"),
        ({"norm_layer": lambda c: None}, "norm_layer must return an nn.Module"),
    ],
)
def test_bad_layer_arguments_are_clear_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SPAP(8, rates=(1, 2), **kwargs)


def test_factory_layer_kwargs() -> None:
    kw = LayerFactory(norm="group", activation="lrelu", spectral_norm=True).layer_kwargs()
    assert set(kw) == {"conv_layer", "norm_layer", "act_layer", "spectral_norm"}
    assert kw["conv_layer"] is nn.Conv2d and kw["spectral_norm"] is True
    gn = kw["norm_layer"](24)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 24 and gn.affine
    assert kw["norm_layer"](64).num_groups == 32
    assert kw["act_layer"]().negative_slope == 0.2
    plain = LayerFactory(activation="none").layer_kwargs()
    assert plain["norm_layer"] is None and plain["act_layer"] is None
    assert not LayerFactory(norm="instance").layer_kwargs()["norm_layer"](4).affine
