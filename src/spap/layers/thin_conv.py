"""Convolutions with many input and few output channels (image outputs), run channels_last
on the CPU.

oneDNN's default (NCHW) kernels for a convolution to 1-4 channels, such as the 7x7
64 -> 3 output layer of the CycleGAN generator, run at 25-40 GFLOP/s on the CPU here, a
fifth of the other layers; in channels_last the same layer, conversions included, is
1.2-1.5x faster forward + backward (``benchmarks/perf_ceiling.py --thin``). Only plain
``nn.Conv2d`` modules are converted: training and inference convert 3x3 stride-1 layers to
:class:`~spap.layers.winograd.WinogradConv2d` first, which was faster still for the GAN
generator's 3x3 64 -> 3 output layer (1.23x vs 1.1x, batch 16 at 128x128). :class:`ThinConv2d` is an ``nn.Conv2d`` (same
parameters, same state dict) doing that for outputs of at least 32x32 (on smaller ones the
conversion costs more); :func:`use_thin_conv` converts the eligible convolutions of a
network in place. Not while tracing/exporting/compiling: exported graphs hold plain convs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spap.layers.winograd import _plain_class, _swap_class, _tracing

__all__ = ["ThinConv2d", "use_thin_conv"]

#: at most this many output channels (and more input channels than that)
MAX_OUT_CHANNELS = 4
#: smallest output side that runs channels_last
MIN_SIZE = 32


class _ChannelsLast(torch.autograd.Function):
    """``x.contiguous(memory_format=torch.channels_last)`` whose gradient comes back in the
    default (contiguous) layout, as the layers before it and the optimizer expect."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad.contiguous()


class ThinConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose CPU forward runs channels_last (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight  # read once: a parametrized weight steps its power iteration per read
        if x.device.type != "cpu" or x.dim() != 4 or _tracing() or self._side(x) < MIN_SIZE:
            return self._conv_forward(x, w, self.bias)
        pad = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            pad = (0, 0)
        x, w = _ChannelsLast.apply(x), _ChannelsLast.apply(w)
        out = F.conv2d(x, w, self.bias, self.stride, pad, self.dilation, self.groups)
        return out.contiguous()

    def _side(self, x: Tensor) -> int:
        """The smaller side of the output for input ``x``."""
        return min(
            (
                x.shape[d - 2]
                + 2 * self.padding[d]
                - self.dilation[d] * (self.kernel_size[d] - 1)
                - 1
            )
            // self.stride[d]
            + 1
            for d in (0, 1)
        )  # type: ignore[index,operator]


def _eligible(conv: nn.Conv2d) -> bool:
    return (
        conv.out_channels <= MAX_OUT_CHANNELS < conv.in_channels
        and conv.groups == 1
        and not isinstance(conv.padding, str)
    )


def use_thin_conv(module: nn.Module) -> int:
    """Turn every plain ``nn.Conv2d`` below ``module`` with at most
    :data:`MAX_OUT_CHANNELS` outputs (from more inputs) into :class:`ThinConv2d`, in place.
    Returns how many."""
    n = 0
    for sub in module.modules():
        if _plain_class(sub) is nn.Conv2d and _eligible(sub):  # type: ignore[arg-type]
            _swap_class(sub, ThinConv2d)
            n += 1
    return n
