"""Convolutions to few channels run channels_last on the CPU: same results as nn.Conv2d
within fp32 rounding, same state dict, plain convolutions in traced graphs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spap.layers.thin_conv import ThinConv2d, _weight_grad_rows, use_thin_conv


def _grads(conv: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    out = conv(x)
    go = torch.linspace(-1, 1, out.numel()).view_as(out)
    return [out, *torch.autograd.grad(out, (x, conv.weight, conv.bias), go)]


@pytest.mark.parametrize(
    ("ci", "co", "kernel", "pad", "mode", "stride"),
    [
        (16, 3, 7, 3, "reflect", 1),  # to few channels: row products
        (16, 3, 7, 3, "zeros", 1),
        (16, 3, 7, 0, "zeros", 1),
        (16, 2, (3, 5), (1, 2), "zeros", 1),
        (16, 3, 4, 1, "zeros", 2),  # channels_last forward and backward by oneDNN
        (3, 16, 7, 3, "reflect", 1),  # from few channels: input gradient by row products
        (2, 8, (5, 3), 0, "zeros", 1),
    ],
)
def test_matches_the_plain_convolution(ci, co, kernel, pad, mode: str, stride: int) -> None:
    torch.manual_seed(0)
    plain = nn.Conv2d(ci, co, kernel, stride, padding=pad, padding_mode=mode)
    thin = copy.deepcopy(plain)
    assert use_thin_conv(thin) == 1 and type(thin) is ThinConv2d
    assert list(thin.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, ci, 40 * stride, 38 * stride)
    ref, got = _grads(plain, x), _grads(thin, x)
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), ref, got):
        assert a.shape == b.shape, name
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=name)
    assert got[0].is_contiguous() and got[1].is_contiguous()
    thin(x).sum().backward()  # what optimizers see: .grad in the parameter's layout
    assert thin.weight.grad is not None and thin.weight.grad.is_contiguous()


def test_row_weight_gradient_matches_float64() -> None:
    torch.manual_seed(0)
    x, go = torch.randn(3, 5, 13, 11), torch.randn(3, 2, 9, 9)
    want = torch.ops.aten.convolution_backward(
        go.double(), x.double(), torch.zeros(2, 5, 5, 3, dtype=torch.float64), None, [1, 1],
        [0, 0], [1, 1], False, [0, 0], 1, [False, True, False],
    )[1]  # fmt: skip
    got = _weight_grad_rows(x, go, 5, 3)
    assert got.shape == (2, 5, 5, 3)
    assert ((got.double() - want).norm() / want.norm()).item() < 1e-6


def test_only_convolutions_to_or_from_few_channels_are_converted() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 64, 7, padding=3),  # yes: from few channels, stride 1
        nn.Conv2d(64, 3, 7, padding=3),  # yes: to few channels
        nn.Conv2d(2, 2, 3, padding=1),  # no: as many inputs as outputs
        nn.Conv2d(8, 1, 4),  # yes (PatchGAN-like head)
        nn.Conv2d(3, 64, 4, 2, 1),  # no: from few channels with stride 2
    )
    assert use_thin_conv(net) == 3
    assert [type(m) is ThinConv2d for m in net] == [True, True, False, True, False]


def test_autocast_uses_the_plain_path() -> None:
    torch.manual_seed(0)
    plain = nn.Conv2d(16, 3, 7, padding=3)
    thin = copy.deepcopy(plain)
    use_thin_conv(thin)
    x = torch.randn(1, 16, 40, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, got = plain(x), thin(x)
    assert got.dtype == ref.dtype == torch.bfloat16 and torch.equal(got, ref)


def test_small_outputs_and_traced_graphs_use_the_plain_path() -> None:
    torch.manual_seed(0)
    plain = nn.Conv2d(8, 1, 4)
    thin = copy.deepcopy(plain)
    use_thin_conv(thin)
    x = torch.randn(1, 8, 10, 10)  # 7x7 output < 32
    assert torch.equal(thin(x), plain(x))
    traced = torch.jit.trace(thin.eval(), torch.randn(1, 8, 40, 40))
    assert "contiguous" not in str(traced.inlined_graph)


def test_the_training_context_converts_by_run_config() -> None:
    from spap.models.cyclegan import build_generator
    from spap.train.config import RunConfig
    from spap.train.cyclegan import CycleGANModelConfig
    from spap.train.distributed import DistInfo
    from spap.train.runner import RunContext

    for on in (True, False):
        ctx = RunContext(RunConfig(thin_conv_channels_last=on), torch.device("cpu"), DistInfo())
        g = ctx.prepare(build_generator(CycleGANModelConfig(ngf=8, n_blocks=1)))
        # the input and the output layer
        assert sum(type(m) is ThinConv2d for m in g.modules()) == 2 * int(on)
