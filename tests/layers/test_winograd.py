"""Winograd (NNPACK) 3x3 convolutions: same results as nn.Conv2d within fp32 rounding, used
only where eligible, never in exported graphs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spap.layers.winograd import WinogradConv2d, available, use_winograd

pytestmark = pytest.mark.skipif(not available(), reason="this torch build has no NNPACK")


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


@pytest.mark.parametrize(("pad", "mode"), [(0, "zeros"), (1, "zeros"), (1, "reflect")])
def test_output_and_gradients_match_the_direct_convolution(pad: int, mode: str) -> None:
    plain, wino = _pair(pad, mode=mode)
    x = torch.randn(2, 6, 20, 20)
    go = torch.randn(2, 5, 18 + 2 * pad, 18 + 2 * pad)
    ref, got = _grads(plain, x, go), _grads(wino, x, go)
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), ref, got):
        err = ((a - b).norm() / a.norm()).item()
        assert 0 <= err < 1e-5, name
    assert not torch.equal(ref[0], got[0])  # really a different algorithm
    assert torch.equal(wino(x), wino(x))  # deterministic (exact resume relies on it)


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
