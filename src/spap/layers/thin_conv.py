"""Convolutions to or from few channels (image outputs and inputs), made faster on the CPU.

oneDNN's kernels for a convolution to 1-4 channels, such as the 7x7 64 -> 3 output layer of
the CycleGAN generator, run at 25-40 GFLOP/s on the CPU here, a fifth of the other layers;
so does the input gradient of the 7x7 3 -> 64 input layer, which is such a convolution too.
:class:`ThinConv2d` (an ``nn.Conv2d``: same parameters, same state dict) computes, for
outputs of at least 32x32 (below that the plain kernels are as fast):

- to few channels (stride 1, dilation 1, one group): the output by :func:`_conv_rows`, one
  matrix product per kernel row over strided views of the input's rows (``(kw * co) x
  ci`` by ``ci x (rows * W)``) and ``kw`` shifted adds, 2-2.5x faster than oneDNN; the
  weight gradient by :func:`_weight_grad_rows` (the same idea, about 2x faster); the input
  gradient channels_last;
- to few channels with other strides: output and gradients channels_last (1.2-1.3x);
- from few channels (stride 1): the output and weight gradient by oneDNN (fast already),
  the input gradient by :func:`_conv_rows`.

Measured by ``benchmarks/perf_ceiling.py --thin``. Only plain ``nn.Conv2d`` modules are
converted: training and inference convert 3x3 stride-1 layers to
:class:`~spap.layers.winograd.WinogradConv2d` first, which was faster still for the GAN
generator's 3x3 64 -> 3 output layer (1.23x vs 1.1x, batch 16 at 128x128).
:func:`use_thin_conv` converts the eligible convolutions of a network in place. Not while
tracing/exporting/compiling or under autocast: exported graphs hold plain convs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spap.layers.winograd import _autocast, _plain_class, _swap_class, _tracing

__all__ = ["ThinConv2d", "use_thin_conv"]

#: at most this many output channels (and more input channels than that), or input
#: channels (and more output channels)
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


def _rows(x: Tensor, image: int, ky: int, rows: int) -> Tensor:
    """Rows ``ky .. ky + rows`` of every channel of image ``image`` of the contiguous NCHW
    ``x``, as a ``C x (rows * W)`` matrix view (each channel's rows are contiguous)."""
    width = x.shape[3]
    offset = x.storage_offset() + image * x.stride(0) + ky * width
    return x.as_strided((x.shape[1], rows * width), (x.stride(1), 1), offset)


def _weight_grad_rows(x: Tensor, go: Tensor, kh: int, kw: int) -> Tensor:
    """Weight gradient of a stride-1, unpadded, ungrouped convolution of ``x`` (NCHW,
    ``n x ci x H x W``) with output gradient ``go`` (``n x co x ho x wo``), as ``n * kh``
    matrix products: for kernel row ``ky``, the output gradient shifted by each of the
    ``kw`` columns (``(co * kw) x (ho * W)``, zeros outside) times the input's rows
    ``ky .. ky + ho`` (a strided view of ``ho * W`` contiguous values per channel)."""
    x, go = x.contiguous(), go.contiguous()
    n, ci, _, width = x.shape
    co, ho, wo = go.shape[1:]
    gp = F.pad(go, (kw - 1, width - wo))  # rows of width + kw - 1
    # shifted[b, o, j, y, c] = go[b, o, y, c + j - (kw - 1)]: column j is kernel column kw-1-j
    shifted = gp.as_strided(
        (n, co, kw, ho, width), (gp.stride(0), gp.stride(1), 1, gp.stride(2), 1)
    ).reshape(n, co * kw, ho * width)
    acc = torch.zeros(kh, co * kw, ci, dtype=x.dtype)
    for b in range(n):
        for ky in range(kh):
            acc[ky].addmm_(shifted[b], _rows(x, b, ky, ho).t())
    return acc.view(kh, co, kw, ci).flip(2).permute(1, 3, 0, 2).contiguous()


def _conv_rows(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """Stride-1, unpadded, ungrouped convolution to few channels as matrix products: per
    image and kernel row ``ky``, the weights ``(kw * co) x ci`` times the input's rows
    ``ky .. ky + ho`` (a strided view of ``ho * W`` contiguous values per channel),
    accumulated over ``ky``; then ``kw`` shifted adds of ``co`` channels."""
    x = x.contiguous()
    n, _, _, width = x.shape
    co, ci, kh, kw = w.shape
    ho, wo = x.shape[2] - kh + 1, width - kw + 1
    wk = w.permute(2, 3, 0, 1).reshape(kh, kw * co, ci)
    out = torch.empty(n, co, ho, wo, dtype=x.dtype)
    z = torch.empty(kw * co, ho * width, dtype=x.dtype)
    for i in range(n):
        torch.mm(wk[0], _rows(x, i, 0, ho), out=z)
        for ky in range(1, kh):
            z.addmm_(wk[ky], _rows(x, i, ky, ho))
        zz = z.view(kw, co, ho, width)  # zz[kx, o, y, c] adds to out[o, y, c - kx]
        if b is None:
            out[i].copy_(zz[0, :, :, :wo])
        else:
            torch.add(zz[0, :, :, :wo], b.view(-1, 1, 1), out=out[i])
        for kx in range(1, kw):
            out[i] += zz[kx, :, :, kx : kx + wo]
    return out


class _ThinConv(torch.autograd.Function):
    """Stride-1, dilation-1, ungrouped convolution of an already padded NCHW input, to few
    channels (``thin_out``) or from few channels; results and gradients in the default
    layout. To few channels: output by :func:`_conv_rows`, input gradient channels_last,
    weight gradient by :func:`_weight_grad_rows`. From few channels: output and weight
    gradient by oneDNN, input gradient (a convolution to few channels) by
    :func:`_conv_rows`."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, thin_out: bool) -> Tensor:  # type: ignore[override]
        x, w = x.contiguous(), w.contiguous()
        ctx.save_for_backward(x, w)
        ctx.has_bias, ctx.thin_out = b is not None, thin_out
        return _conv_rows(x, w, b) if thin_out else F.conv2d(x, w, b)

    @staticmethod
    def backward(ctx, go: Tensor):  # type: ignore[override]
        x, w = ctx.saved_tensors
        go = go.contiguous()
        kh, kw = w.shape[2:]
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            if ctx.thin_out:
                cl = torch.channels_last
                gx = F.conv_transpose2d(
                    go.contiguous(memory_format=cl), w.contiguous(memory_format=cl)
                ).contiguous()
            else:  # full correlation with the flipped, transposed kernel
                gp = F.pad(go, (kw - 1, kw - 1, kh - 1, kh - 1))
                gx = _conv_rows(gp, w.flip(2, 3).transpose(0, 1))
        if ctx.needs_input_grad[1]:
            if ctx.thin_out:
                gw = _weight_grad_rows(x, go, kh, kw)
            else:
                gw = torch.ops.aten.convolution_backward(
                    go, x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                    [False, True, False],
                )[1]  # fmt: skip
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = go.sum((0, 2, 3))
        return gx, gw, gb, None


class ThinConv2d(nn.Conv2d):
    """``nn.Conv2d`` with faster CPU kernels for few output or input channels (see the
    module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight  # read once: a parametrized weight steps its power iteration per read
        if x.device.type != "cpu" or x.dim() != 4 or _tracing() or self._side(x) < MIN_SIZE:
            return self._conv_forward(x, w, self.bias)
        pad = self.padding
        simple = _simple(self) and not _autocast() and x.dtype == w.dtype
        if not simple and self.out_channels > MAX_OUT_CHANNELS:  # from few channels
            return self._conv_forward(x, w, self.bias)
        if self.padding_mode != "zeros" or (simple and any(pad)):  # type: ignore[arg-type]
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
            pad = (0, 0)
        if simple:
            return _ThinConv.apply(x, w, self.bias, self.out_channels <= MAX_OUT_CHANNELS)
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


def _simple(conv: nn.Conv2d) -> bool:
    return conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1


def _eligible(conv: nn.Conv2d) -> bool:
    if isinstance(conv.padding, str) or conv.groups != 1:
        return False
    if conv.out_channels <= MAX_OUT_CHANNELS < conv.in_channels:
        return True
    return conv.in_channels <= MAX_OUT_CHANNELS < conv.out_channels and _simple(conv)


def use_thin_conv(module: nn.Module) -> int:
    """Turn every plain ``nn.Conv2d`` below ``module`` with at most
    :data:`MAX_OUT_CHANNELS` outputs (from more inputs), or with stride 1 from at most
    that many inputs (to more outputs), into :class:`ThinConv2d`, in place. Returns how
    many."""
    n = 0
    for sub in module.modules():
        if _plain_class(sub) is nn.Conv2d and _eligible(sub):  # type: ignore[arg-type]
            _swap_class(sub, ThinConv2d)
            n += 1
    return n
