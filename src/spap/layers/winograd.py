"""Winograd 3x3 convolutions on the CPU, for large feature maps.

A 3x3 convolution computed with Winograd's minimal filtering algorithm needs several times
fewer multiplications than the direct one, at the price of input/output transforms and a
rounding error of a few 1e-6 (relative, fp32) instead of ~1e-7. PyTorch's CPU convolutions
are direct (oneDNN). Two Winograd kernels are used here:

- NNPACK's, which PyTorch's build carries and exposes as
  ``torch._nnpack_spatial_convolution`` (forward only; one image at a time is its fast
  path): the output and the input gradient (a full correlation of the output gradient
  with the flipped, transposed weights) for outputs of 64x64 and more;
- F(4x4, 3x3) written here with tensor operations (tile transforms as a strided
  one-channel convolution, 36 batched matrix products over the channels): the weight
  gradient (which NNPACK's binding lacks) of layers with at least 128 channels from 64x64
  on, and the output, input gradient and weight gradient of layers with at least 256
  channels at 32-63 pixels. When the forward runs F(4x4, 3x3) in training, the backward
  reuses its work: the input gradient (a correlation with the flipped kernels) takes the
  forward's transformed weights, with the tile transforms reversed per tile, and the
  weight gradient takes the forward's transformed input tiles, kept instead of the input
  (2.25x its size; the transformed weights are 4x the weights' size).

:class:`WinogradConv2d` is an ``nn.Conv2d`` (same parameters, same state dict) whose
forward picks per call the fastest of these and the direct kernel (see
:func:`_conv_kernel`, measured by ``benchmarks/perf_ceiling.py --winograd``), and uses
``nn.Conv2d``'s own forward unless all of these hold:

- CPU, float32 input and weight (no autocast);
- 3x3 kernel, stride 1, dilation 1, one group, padding of at most 1 (any padding mode);
- the output is at least ``min_size`` pixels on each side;
- not while scripting, tracing, exporting or compiling (exported graphs hold plain convs).

:func:`use_winograd` turns the eligible ``nn.Conv2d`` modules of a network into
:class:`WinogradConv2d` in place (``run.winograd_min_size`` does this for training, and
``Translator`` / ``Sampler`` on the CPU for inference); :func:`use_direct` turns them back.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = [
    "MIN_SIZE",
    "WinogradConv2d",
    "available",
    "direct_convolutions",
    "use_direct",
    "use_winograd",
    "winograd_conv3x3",
]

#: Smallest output side that uses Winograd kernels by default (training and inference);
#: below 32x32 their transforms cost more than they save (``benchmarks/perf_ceiling.py
#: --winograd``).
MIN_SIZE = 32

log = logging.getLogger(__name__)
_STATE: dict[str, bool] = {}


def available() -> bool:
    """Whether this torch build has a working NNPACK (checked once; also initialises it)."""
    if "ok" not in _STATE:
        ok = False
        try:
            if hasattr(torch, "_nnpack_spatial_convolution") and torch._nnpack_available():
                x, w = torch.ones(1, 1, 6, 6), torch.ones(1, 1, 3, 3)
                out = torch._nnpack_spatial_convolution(x, w, None, [0, 0])
                ok = bool(torch.allclose(out, torch.full((1, 1, 4, 4), 9.0), rtol=1e-4))
        except Exception as exc:  # pragma: no cover - depends on the build
            log.info("NNPACK unavailable (%s): direct convolutions only", exc)
        _STATE["ok"] = ok
    return _STATE["ok"]


@contextlib.contextmanager
def direct_convolutions() -> Iterator[None]:
    """Within this context every :class:`WinogradConv2d` runs direct convolutions (e.g. to
    count FLOPs with ``FlopCounterMode``, which does not see NNPACK's kernels)."""
    before = _STATE.get("off", False)
    _STATE["off"] = True
    try:
        yield
    finally:
        _STATE["off"] = before


def _nnpack(x: Tensor, w: Tensor, b: Tensor | None, pad: int) -> Tensor:
    """NNPACK forward, one image at a time (its inference path, the fast one)."""
    outs = [torch._nnpack_spatial_convolution(xi, w, b, [pad, pad]) for xi in x.split(1)]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


# Winograd F(4x4, 3x3) written with tensor operations (Lavin & Gray, 2016; points 0, +-1,
# +-2, inf): 6x6 input tiles at stride 4 give 4x4 outputs, 36 matrix products over the
# channels replace the 9 taps of each output pixel. The weight gradient is the same
# algorithm with the roles swapped, F(3x3, 4x4): the 4x4 tiles of the output gradient are
# the "filter" and the 3x3 weight gradient is the "output" (A and G exchange places).
_B_T = (
    (4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1),
)  # fmt: skip
_G = (
    (1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1),
)  # fmt: skip
_A_T = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))
_MATS: dict[torch.dtype, dict[str, Tensor]] = {}
#: tiles per call of the tile transforms (oneDNN's one-channel convolution slows down
#: several times on larger batches)
_TILES_PER_CALL = 65536
#: bytes of transformed tiles per pass over a group of images
_GROUP_BYTES = 8 << 20


def _f43_matrices(dtype: torch.dtype) -> dict[str, Tensor]:
    """The 2-D transforms as matrices (Kronecker products of the 1-D ones), per dtype."""
    if dtype not in _MATS:
        bt, g, at = (torch.tensor(m, dtype=torch.float64) for m in (_B_T, _G, _A_T))
        _MATS[dtype] = {
            "input": torch.einsum("pu,qv->pquv", bt, bt).reshape(36, 1, 6, 6).to(dtype),
            "grad": torch.einsum("up,vq->pquv", at, at).reshape(36, 1, 4, 4).to(dtype),
            "output": torch.einsum("ip,jq->ijpq", at, at).reshape(16, 36).to(dtype),
            "weight": torch.einsum("pk,ql->pqkl", g, g).reshape(36, 9).to(dtype),
        }
        # correlating with the flipped kernel: per tile, B^T on the reversed window and
        # A^T's rows reversed (corr(d, J g) = J A^T [(G g) * (B^T J d)])
        _MATS[dtype]["input_flipped"] = _MATS[dtype]["input"].flip(-2, -1).contiguous()
        _MATS[dtype]["output_flipped"] = (
            _MATS[dtype]["output"].view(4, 4, 36).flip(0, 1).reshape(16, 36).contiguous()
        )
    return _MATS[dtype]


def _tiles(x: Tensor, kernel: Tensor) -> Tensor:
    """Transform every channel's tiles: ``(N, C, H, W) -> (N, C, 36, tiles)``, as a
    one-channel convolution (stride 4) with the 36 transform kernels."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, 1, h, w)
    step = max(
        1,
        _TILES_PER_CALL // (((h - kernel.shape[-1]) // 4 + 1) * ((w - kernel.shape[-1]) // 4 + 1)),
    )
    parts = [F.conv2d(flat[i : i + step], kernel, stride=4) for i in range(0, n * c, step)]
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    return out.view(n, c, 36, -1)


def _tile_major(t: Tensor) -> Tensor:
    """``(N, C, 36, tiles) -> (36, C, N * tiles)`` (a view for one image): the operand of
    one batched matrix product over all images."""
    n, c, p, k = t.shape
    return t[0].transpose(0, 1) if n == 1 else t.permute(2, 1, 0, 3).reshape(p, c, n * k)


def _tile_padded(x: Tensor, pad: int, ho: int, wo: int) -> tuple[Tensor, int, int]:
    """``x`` zero-padded by ``pad``, plus zeros at the bottom/right up to whole 4x4 tiles."""
    th, tw = -(-ho // 4), -(-wo // 4)
    pads = (pad, pad + 4 * tw - wo, pad, pad + 4 * th - ho)
    return (F.pad(x, pads) if any(pads) else x), th, tw


def _group(n: int, channels: int, ho: int, wo: int) -> int:
    """Images per pass so that one pass's transformed tiles stay within
    :data:`_GROUP_BYTES` (beyond that the passes run from memory, not cache, and batch 16
    ran at half the direct kernel's speed)."""
    per_image = 36 * channels * -(-ho // 4) * -(-wo // 4) * 4
    return max(1, min(n, _GROUP_BYTES // per_image))


def _f43_weight(w: Tensor) -> Tensor:
    """The transformed 3x3 kernels ``G w G^T``: ``(co, ci, 3, 3) -> (36, co, ci)``."""
    co, ci = w.shape[:2]
    return torch.mm(_f43_matrices(w.dtype)["weight"], w.reshape(co * ci, 9).t()).view(36, co, ci)


def _f43_conv(
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    pad: int,
    u: Tensor | None = None,
    flipped: bool = False,
    keep_tiles: list[Tensor] | None = None,
) -> Tensor:
    """``F.conv2d(x, w, b, padding=pad)`` for a 3x3 kernel by Winograd F(4x4, 3x3).

    ``u`` is ``w``'s transform (:func:`_f43_weight`) if already computed, ``(36, co, ci)``
    (``w`` is then only read for its shape). ``flipped`` correlates with the spatially
    flipped kernels instead: with ``u`` the forward's transform, transposed to
    ``(36, ci, co)``, that is the input gradient, without transforming the weights again.
    ``keep_tiles`` receives the transformed input tiles, one tensor per pass, for
    :func:`_f43_weight_grad`.
    """
    if u is None:
        u = _f43_weight(w)
    n, ci, h, wd = x.shape
    co = u.shape[1]
    ho, wo = h + 2 * pad - 2, wd + 2 * pad - 2
    g = _group(n, max(ci, co), ho, wo)
    if g < n:
        return torch.cat(
            [_f43_conv(x[i : i + g], w, b, pad, u, flipped, keep_tiles) for i in range(0, n, g)]
        )
    m = _f43_matrices(x.dtype)
    suffix = "_flipped" if flipped else ""
    xp, th, tw = _tile_padded(x, pad, ho, wo)
    v = _tile_major(_tiles(xp, m["input" + suffix]))  # (36, ci, n * tiles)
    if keep_tiles is not None:
        keep_tiles.append(v)
    y = torch.bmm(u, v)  # (36, co, n * tiles)
    out = torch.mm(m["output" + suffix], y.view(36, -1)).view(4, 4, co, n, th, tw)
    out = out.permute(3, 2, 4, 0, 5, 1).reshape(n, co, 4 * th, 4 * tw)
    if (4 * th, 4 * tw) != (ho, wo):
        out = out[:, :, :ho, :wo].contiguous()
    if b is not None:
        out += b.view(1, -1, 1, 1)
    return out


def _f43_weight_grad(
    x: Tensor | None, go: Tensor, pad: int, tiles: list[Tensor] | None = None
) -> Tensor:
    """The weight gradient of ``F.conv2d(x, w, padding=pad)`` (3x3) for output gradient
    ``go``, by Winograd F(3x3, 4x4); ``tiles`` are ``x``'s transformed tiles as the
    forward kept them (``keep_tiles`` of :func:`_f43_conv`; ``x`` is then not needed)."""
    n, co, ho, wo = go.shape
    if tiles is None:
        assert x is not None
        ci = x.shape[1]
    else:
        ci = tiles[0].shape[1]
    g = _group(n, max(ci, co), ho, wo)
    if g < n:
        parts = [
            _f43_weight_grad(
                None if x is None else x[i : i + g],
                go[i : i + g],
                pad,
                None if tiles is None else tiles[j : j + 1],
            )
            for j, i in enumerate(range(0, n, g))
        ]
        return torch.stack(parts).sum(0)
    m = _f43_matrices(go.dtype)
    th, tw = -(-ho // 4), -(-wo // 4)
    if tiles is not None:
        v = tiles[0]
    else:
        assert x is not None
        v = _tile_major(_tiles(_tile_padded(x, pad, ho, wo)[0], m["input"]))
    if (4 * th, 4 * tw) != (ho, wo):  # zero gradients add nothing
        go = F.pad(go, (0, 4 * tw - wo, 0, 4 * th - ho))
    acc = torch.bmm(_tile_major(_tiles(go, m["grad"])), v.transpose(1, 2))  # (36, co, ci)
    gw = torch.mm(m["weight"].t(), acc.view(36, -1)).view(3, 3, co, ci)
    return gw.permute(2, 3, 0, 1).contiguous()


def _f43_pays_off(ci: int, co: int, side: int) -> bool:
    """Whether F(4x4, 3x3) beats the direct kernel (forward or weight gradient): layers of
    128+ channels from 64x64 on, of 256+ channels from 32x32 on."""
    return side >= 32 and min(ci, co) >= (128 if side >= 64 else 256)


def _conv_kernel(ci: int, co: int, side: int) -> str:
    """Fastest kernel for a 3x3 convolution (or its input gradient) with outputs ``side``
    pixels a side, as measured by ``benchmarks/perf_ceiling.py --winograd``: NNPACK from
    64x64 on; F(4x4, 3x3) where it pays off below that (and from 64 without NNPACK)."""
    if side >= 64 and available():
        return "nnpack"
    return "f43" if _f43_pays_off(ci, co, side) else "direct"


def _weight_grad_kernel(ci: int, co: int, side: int) -> str:
    """Fastest weight-gradient kernel: F(3x3, 4x4) where F(4x4, 3x3) pays off."""
    return "f43" if _f43_pays_off(ci, co, side) else "direct"


def _conv(kernel: str, x: Tensor, w: Tensor, b: Tensor | None, pad: int) -> Tensor:
    if kernel == "nnpack":
        return _nnpack(x, w, b, pad)
    if kernel == "f43":
        return _f43_conv(x, w, b, pad)
    return F.conv2d(x, w, b, padding=pad)


class _WinogradConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, pad: int) -> Tensor:  # type: ignore[override]
        x, w = x.contiguous(), w.contiguous()
        ctx.pad, ctx.has_bias = pad, b is not None
        co, ci = w.shape[:2]
        side = min(x.shape[-2:]) + 2 * pad - 2
        ctx.side_in = min(x.shape[-2:])
        kernel = _conv_kernel(ci, co, side)
        if kernel != "f43":
            ctx.save_for_backward(x, w, None)
            return _conv(kernel, x, w, b, pad)
        u = _f43_weight(w)
        # the input gradient reuses the transformed weights (flipped tile transforms), the
        # weight gradient the transformed input tiles (kept instead of the input)
        keep_u = ctx.needs_input_grad[0] and _conv_kernel(co, ci, ctx.side_in) == "f43"
        tiles: list[Tensor] | None = None
        if ctx.needs_input_grad[1] and _weight_grad_kernel(ci, co, side) == "f43":
            tiles = []
        out = _f43_conv(x, w, b, pad, u, keep_tiles=tiles)
        ctx.save_for_backward(x if tiles is None else None, w, u if keep_u else None, *tiles or ())
        return out

    @staticmethod
    def backward(ctx, go: Tensor):  # type: ignore[override]
        x, w, u, *tiles = ctx.saved_tensors
        go = go.contiguous()
        pad = ctx.pad
        co, ci = w.shape[:2]
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # full correlation with the flipped, transposed kernel
            kernel = _conv_kernel(co, ci, ctx.side_in)
            if kernel == "f43":
                u = _f43_weight(w) if u is None else u
                gx = _f43_conv(go, w, None, 2 - pad, u.transpose(1, 2), flipped=True)
            else:
                wt = w.flip(2, 3).transpose(0, 1).contiguous()
                gx = _conv(kernel, go, wt, None, 2 - pad)
        if ctx.needs_input_grad[1]:
            if tiles:
                gw = _f43_weight_grad(None, go, pad, tiles)
            elif _weight_grad_kernel(ci, co, min(go.shape[-2:])) == "f43":
                gw = _f43_weight_grad(x, go, pad)
            else:
                gw = torch.ops.aten.convolution_backward(
                    go, x, w, None, [1, 1], [pad] * 2, [1, 1], False, [0, 0], 1,
                    [False, True, False],
                )[1]  # fmt: skip
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = go.sum((0, 2, 3))
        return gx, gw, gb, None


def winograd_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int = 0) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` for a 3x3 kernel, stride 1, on the
    CPU in float32, each of the output, input gradient and weight gradient computed by the
    fastest kernel for its shape (NNPACK needs :func:`available`); ``padding`` is 0 or 1
    (zeros)."""
    return _WinogradConv.apply(x, weight, bias, padding)


def _eligible_module(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and isinstance(conv.padding, tuple)
        and conv.padding[0] == conv.padding[1]
        and conv.padding[0] in (0, 1)
    )


def _autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # pragma: no cover - torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _tracing() -> bool:
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    compiling = getattr(torch.compiler, "is_compiling", None)
    if compiling is not None and compiling():
        return True
    onnx = getattr(torch, "onnx", None)
    return bool(onnx is not None and onnx.is_in_onnx_export())


class WinogradConv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs Winograd kernels where they are faster (see the module
    docstring); ``min_size`` is the smallest output side that uses them."""

    min_size: int = MIN_SIZE

    def _pays_off(self, x: Tensor, pad: int) -> bool:
        """Whether a Winograd kernel is the faster one for the output or, in training, for
        the weight gradient (the input gradient's size matches the output's)."""
        ci, co, side = self.in_channels, self.out_channels, min(x.shape[-2:]) + 2 * pad - 2
        if _conv_kernel(ci, co, side) != "direct":
            return True
        grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        return grad and _weight_grad_kernel(ci, co, side) != "direct"

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        pad = self.padding[0]  # type: ignore[index]
        if (
            not _STATE.get("off", False)
            and not _tracing()
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and w.dtype == torch.float32
            and x.dim() == 4
            and min(x.shape[-2:]) + 2 * pad - 2 >= self.min_size
            and not _autocast()
            and self._pays_off(x, pad)
        ):
            if self.padding_mode != "zeros" and pad:
                x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
                pad = 0
            return winograd_conv3x3(x, w, self.bias, pad)
        # not super().forward(x): that would read self.weight again, and a parametrized
        # weight (spectral norm) takes a power-iteration step on every read in training
        return self._conv_forward(x, w, self.bias)


def _swap_class(sub: nn.Module, base: type[nn.Conv2d]) -> None:
    """Give ``sub`` the class ``base``; a parametrized module (spectral norm) keeps its
    parametrization: it gets a ``Parametrized<base>`` class carrying the same properties,
    as ``torch.nn.utils.parametrize`` builds them (removing the parametrization later
    leaves a plain ``base``)."""
    if not parametrize.is_parametrized(sub):
        sub.__class__ = base
        return
    members = {k: v for k, v in vars(type(sub)).items() if k not in ("__dict__", "__weakref__")}
    sub.__class__ = type(f"Parametrized{base.__name__}", (base,), members)


def _plain_class(sub: nn.Module) -> type | None:
    """``nn.Conv2d`` or ``WinogradConv2d`` for such a module, plain or parametrized (a
    parametrized module's class is a subclass made for it, whose only base is the original)."""
    cls = type(sub)
    if parametrize.is_parametrized(sub):
        cls = cls.__bases__[0]
    return cls if cls in (nn.Conv2d, WinogradConv2d) else None


def use_winograd(module: nn.Module, min_size: int = MIN_SIZE) -> int:
    """Turn every eligible ``nn.Conv2d`` below ``module`` (spectrally normalised ones
    included) into :class:`WinogradConv2d`, in place, parameters and parametrizations
    untouched. Returns how many."""
    n = 0
    for sub in module.modules():
        if _plain_class(sub) is nn.Conv2d and _eligible_module(sub):  # type: ignore[arg-type]
            _swap_class(sub, WinogradConv2d)
            sub.min_size = min_size
            n += 1
    return n


def use_direct(module: nn.Module) -> int:
    """Turn every :class:`WinogradConv2d` below ``module`` back into a plain ``nn.Conv2d``
    (in place). Returns how many."""
    n = 0
    for sub in module.modules():
        if _plain_class(sub) is WinogradConv2d:
            _swap_class(sub, nn.Conv2d)
            n += 1
    return n
