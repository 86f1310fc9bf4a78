"""Winograd 3x3 convolutions (NNPACK's and our F(4x4, 3x3)): same results as nn.Conv2d
within fp32 rounding, used only where eligible, never in exported graphs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spap.layers import winograd
from spap.layers.winograd import WinogradConv2d, available, use_winograd

NNPACK = pytest.mark.skipif(not available(), reason="this torch build has no NNPACK")


@pytest.fixture(autouse=True)
def small_layers_use_winograd(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' layers are far smaller than where Winograd pays off: force the kernels
    (F(4x4, 3x3), pure torch) whatever the shape; tests override this where they test
    another kernel or the choice itself."""
    monkeypatch.setattr(winograd, "_conv_kernel", lambda ci, co, side: "f43")
    monkeypatch.setattr(winograd, "_weight_grad_kernel", lambda ci, co, side: "f43")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize(
    ("n", "ci", "co", "h", "w", "pad"),
    [(2, 5, 7, 13, 10, 1), (1, 4, 3, 10, 10, 0), (3, 6, 4, 9, 17, 1), (1, 70, 3, 6, 6, 1)],
)
@pytest.mark.parametrize("group_bytes", [8 << 20, 1], ids=["one-pass", "image-by-image"])
def test_f43_kernels_match_float64_convolutions(
    n, ci, co, h, w, pad, group_bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(winograd, "_GROUP_BYTES", group_bytes)
    torch.manual_seed(0)
    x, wt, b = torch.randn(n, ci, h, w), torch.randn(co, ci, 3, 3), torch.randn(co)
    want = F.conv2d(x.double(), wt.double(), b.double(), padding=pad)
    got = winograd._f43_conv(x, wt, b, pad)
    assert got.shape == want.shape and _rel(got, want) < 1e-5
    go = torch.randn_like(want)
    want_gw = torch.ops.aten.convolution_backward(
        go, x.double(), wt.double(), None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
        [False, True, False],
    )[1]  # fmt: skip
    got_gw = winograd._f43_weight_grad(x, go.float(), pad)
    assert got_gw.shape == wt.shape and _rel(got_gw, want_gw) < 1e-5
    # the input gradient: flipped tile transforms with the forward's transformed weights
    want_gx = torch.ops.aten.convolution_backward(
        go, x.double(), wt.double(), None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
        [True, False, False],
    )[0]  # fmt: skip
    u = winograd._f43_weight(wt).transpose(1, 2)
    got_gx = winograd._f43_conv(go.float(), wt, None, 2 - pad, u, flipped=True)
    assert got_gx.shape == x.shape and _rel(got_gx, want_gx) < 1e-5
    assert not torch.equal(got, F.conv2d(x, wt, b, padding=pad))  # another algorithm


def test_kernel_choice_follows_the_measurements(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    nnpack = "nnpack" if available() else "f43"
    assert winograd._conv_kernel(256, 256, 64) == nnpack
    assert winograd._conv_kernel(256, 256, 32) == "f43"
    assert winograd._conv_kernel(128, 256, 32) == "direct"
    assert winograd._conv_kernel(256, 256, 16) == "direct"
    assert winograd._weight_grad_kernel(128, 128, 64) == "f43"
    assert winograd._weight_grad_kernel(128, 128, 32) == "direct"
    assert winograd._weight_grad_kernel(256, 256, 32) == "f43"
    assert winograd._weight_grad_kernel(64, 256, 64) == "direct"
    assert winograd._weight_grad_kernel(256, 256, 16) == "direct"
    # a layer where no Winograd kernel pays off keeps nn.Conv2d's own forward
    plain, wino = _pair(1)
    x = torch.randn(1, 6, 20, 20)
    assert torch.equal(plain(x), wino(x))


def _pair(pad: int, min_size: int = 8, mode: str = "zeros") -> tuple[nn.Conv2d, nn.Conv2d]:
    torch.manual_seed(0)
    plain = nn.Conv2d(6, 5, 3, padding=pad, padding_mode=mode)
    wino = nn.Conv2d(6, 5, 3, padding=pad, padding_mode=mode)
    wino.load_state_dict(plain.state_dict())
    assert use_winograd(wino, min_size) == 1 and type(wino) is WinogradConv2d
    return plain, wino


def _grads(conv: nn.Module, x: torch.Tensor, go: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    out = conv(x)
    return [out, *torch.autograd.grad(out, (x, conv.weight, conv.bias), go)]


@pytest.mark.parametrize(
    ("conv", "weight_grad"), [pytest.param("nnpack", "direct", marks=NNPACK), ("f43", "f43")]
)
@pytest.mark.parametrize(("pad", "mode"), [(0, "zeros"), (1, "zeros"), (1, "reflect")])
@pytest.mark.parametrize("group_bytes", [8 << 20, 1], ids=["one-pass", "image-by-image"])
def test_output_and_gradients_match_the_direct_convolution(
    pad: int,
    mode: str,
    conv: str,
    weight_grad: str,
    group_bytes: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through autograd: the input gradient reuses the forward's transformed weights and
    the weight gradient its transformed input tiles (kept per pass of images)."""
    monkeypatch.setattr(winograd, "_GROUP_BYTES", group_bytes)
    monkeypatch.setattr(winograd, "_conv_kernel", lambda ci, co, side: conv)
    monkeypatch.setattr(winograd, "_weight_grad_kernel", lambda ci, co, side: weight_grad)
    plain, wino = _pair(pad, mode=mode)
    x = torch.randn(2, 6, 20, 20)
    go = torch.randn(2, 5, 18 + 2 * pad, 18 + 2 * pad)
    ref, got = _grads(plain, x, go), _grads(wino, x, go)
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), ref, got):
        err = ((a - b).norm() / a.norm()).item()
        assert 0 <= err < 1e-5, name
    assert not torch.equal(ref[0], got[0])  # really a different algorithm
    assert torch.equal(wino(x), wino(x))  # deterministic (exact resume relies on it)


@pytest.mark.parametrize("frozen", ["input", "weight"])
def test_gradients_when_only_the_weight_or_only_the_input_needs_one(frozen: str) -> None:
    plain, wino = _pair(1)
    x = torch.randn(2, 6, 20, 20, requires_grad=frozen != "input")
    for conv in (plain, wino):
        conv.weight.requires_grad_(frozen != "weight")
    wanted = (x,) if frozen == "weight" else (plain.weight,)
    got_wanted = (x,) if frozen == "weight" else (wino.weight,)
    go = torch.randn(2, 5, 20, 20)
    ref = torch.autograd.grad(plain(x), wanted, go)[0]
    got = torch.autograd.grad(wino(x), got_wanted, go)[0]
    assert ((got - ref).norm() / ref.norm()).item() < 1e-5


def test_small_outputs_and_other_dtypes_fall_back_to_the_direct_convolution() -> None:
    plain, wino = _pair(1, min_size=32)
    x = torch.randn(1, 6, 16, 16)
    assert torch.equal(plain(x), wino(x))  # 16 < 32
    plain, wino = _pair(1)
    x = torch.randn(1, 6, 16, 16)
    assert torch.equal(plain.double()(x.double()), wino.double()(x.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(plain.float()(x), wino.float()(x))


def test_only_eligible_convolutions_are_converted_and_state_dicts_stay_plain() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # yes
        nn.Conv2d(4, 4, 3, stride=2, padding=1),  # stride 2
        nn.Conv2d(4, 4, 3, padding=2, dilation=2),  # dilated
        nn.Conv2d(4, 4, 7, padding=3),  # 7x7
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),  # yes
        nn.Conv2d(4, 4, 3, padding=0),  # yes
        torch.nn.utils.parametrizations.spectral_norm(nn.Conv2d(4, 4, 3, padding=1)),  # yes
    )
    keys = list(net.state_dict())
    assert use_winograd(net) == 4
    assert [isinstance(m, WinogradConv2d) for m in net] == [1, 0, 0, 0, 1, 1, 1]
    assert list(net.state_dict()) == keys


def test_traced_graphs_hold_plain_convolutions() -> None:
    _, wino = _pair(1)
    traced = torch.jit.trace(wino.eval(), torch.randn(1, 6, 20, 20))
    graph = str(traced.inlined_graph)
    assert "_convolution" in graph and "nnpack" not in graph


def test_the_training_context_converts_by_run_config() -> None:
    from spap.models.cyclegan import build_generator
    from spap.train.config import RunConfig
    from spap.train.cyclegan import CycleGANModelConfig
    from spap.train.distributed import DistInfo
    from spap.train.runner import RunContext

    model = CycleGANModelConfig(ngf=4, n_blocks=2)
    for min_size, expected in ((64, 4), (None, 0)):
        ctx = RunContext(RunConfig(winograd_min_size=min_size), torch.device("cpu"), DistInfo())
        g = ctx.prepare(build_generator(model))
        convs = [m for m in g.modules() if isinstance(m, WinogradConv2d)]
        assert len(convs) == expected  # the residual blocks' convolutions (reflection-padded)
        assert all(m.min_size == 64 for m in convs)


def test_translator_runs_winograd_on_the_cpu_within_rounding_of_direct() -> None:
    import copy

    from spap.inference.translate import Translator
    from spap.layers.winograd import use_direct
    from spap.models.cyclegan import build_generator
    from spap.train.cyclegan import CycleGANModelConfig

    torch.manual_seed(0)
    g = build_generator(CycleGANModelConfig(ngf=4, n_blocks=2))
    direct = copy.deepcopy(g).eval()
    translator = Translator({"AtoB": g})
    net = translator.generator("AtoB")
    assert sum(type(m) is WinogradConv2d for m in net.modules()) == 4
    x = torch.rand(1, 3, 128, 128) * 2 - 1  # residual blocks at 32x32
    with torch.no_grad():
        want = direct(x)
        got = net(x)
        assert not torch.equal(got, want)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
        assert use_direct(net) == 4 and torch.equal(net(x), want)


def test_direct_convolutions_context_switches_winograd_off() -> None:
    from spap.layers.winograd import direct_convolutions

    plain, wino = _pair(1)
    x = torch.randn(1, 6, 20, 20)
    assert not torch.equal(plain(x), wino(x))
    with direct_convolutions():
        assert torch.equal(plain(x), wino(x))
    assert not torch.equal(plain(x), wino(x))


def test_spectrally_normalised_convolutions_keep_their_parametrization() -> None:
    import copy

    from torch.nn.utils.parametrizations import spectral_norm

    from spap.layers.factories import remove_spectral_norm
    from spap.layers.winograd import use_direct

    torch.manual_seed(0)
    plain = spectral_norm(nn.Conv2d(6, 5, 3, padding=1))
    wino = copy.deepcopy(plain)
    assert use_winograd(wino, 8) == 1 and isinstance(wino, WinogradConv2d)
    assert list(wino.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 6, 20, 20)
    for _ in range(3):  # training mode: one power-iteration step per forward, in both
        torch.testing.assert_close(wino(x), plain(x), rtol=1e-4, atol=1e-4)
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(wino.state_dict()[k], v, rtol=1e-6, atol=1e-7)
    twin = copy.deepcopy(wino)
    assert isinstance(twin, WinogradConv2d) and torch.equal(twin.eval()(x), wino.eval()(x))
    assert use_direct(twin) == 1 and not isinstance(twin, WinogradConv2d)
    assert torch.equal(twin(x), plain.eval()(x))  # still spectrally normalised
    remove_spectral_norm(wino)
    assert type(wino) is WinogradConv2d and not hasattr(wino, "parametrizations")
