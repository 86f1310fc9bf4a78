"""Winograd 3x3 convolutions on the CPU (NNPACK), for large feature maps.

A 3x3 convolution computed with Winograd's minimal filtering algorithm needs several times
fewer multiplications than the direct one, at the price of input/output transforms and a
rounding error of a few 1e-6 (relative, fp32) instead of ~1e-7. PyTorch's CPU convolutions
are direct (oneDNN); its build also carries NNPACK, whose Winograd kernel is reachable as
``torch._nnpack_spatial_convolution`` (forward only, one image at a time is its fast path).

:class:`WinogradConv2d` is an ``nn.Conv2d`` (same parameters, same state dict) whose
forward uses NNPACK for the output and for the input gradient (a full correlation of the
output gradient with the flipped, transposed weights), and oneDNN for the weight gradient,
when all of these hold, and ``nn.Conv2d``'s own forward otherwise:

- CPU, float32 input and weight (no autocast), NNPACK available in this torch build;
- 3x3 kernel, stride 1, dilation 1, one group, padding of at most 1 (any padding mode);
- the output is at least ``min_size`` pixels on each side (at 32x32 and below the
  transforms cost more than they save in training, see ``benchmarks/perf_ceiling.py``);
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
    "INFERENCE_MIN_SIZE",
    "WinogradConv2d",
    "available",
    "direct_convolutions",
    "use_direct",
    "use_winograd",
    "winograd_conv3x3",
]

#: Smallest output side that uses Winograd kernels for inference (forward only), where
#: they were faster from 32x32 on (``python benchmarks/perf_ceiling.py --winograd``);
#: training (forward + backward, weight gradient direct) gains only from 64x64 on.
INFERENCE_MIN_SIZE = 32

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


class _WinogradConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, pad: int) -> Tensor:  # type: ignore[override]
        x, w = x.contiguous(), w.contiguous()
        ctx.save_for_backward(x, w)
        ctx.pad, ctx.has_bias = pad, b is not None
        return _nnpack(x, w, b, pad)

    @staticmethod
    def backward(ctx, go: Tensor):  # type: ignore[override]
        x, w = ctx.saved_tensors
        go = go.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # full correlation with the flipped, transposed kernel
            wt = w.flip(2, 3).transpose(0, 1).contiguous()
            gx = _nnpack(go, wt, None, 2 - ctx.pad)
        if ctx.needs_input_grad[1]:
            gw = torch.ops.aten.convolution_backward(
                go, x, w, None, [1, 1], [ctx.pad] * 2, [1, 1], False, [0, 0], 1,
                [False, True, False],
            )[1]  # fmt: skip
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = go.sum((0, 2, 3))
        return gx, gw, gb, None


def winograd_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int = 0) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` for a 3x3 kernel, stride 1, computed
    with NNPACK's Winograd kernel (output and input gradient) on the CPU in float32;
    ``padding`` is 0 or 1 (zeros). Check :func:`available` first."""
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
    """``nn.Conv2d`` that runs Winograd (NNPACK) kernels where they are faster (see the
    module docstring); ``min_size`` is the smallest output side that uses them."""

    min_size: int = 64

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
            and available()
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


def use_winograd(module: nn.Module, min_size: int = 64) -> int:
    """Turn every eligible ``nn.Conv2d`` below ``module`` (spectrally normalised ones
    included) into :class:`WinogradConv2d`, in place, parameters and parametrizations
    untouched. Returns how many; 0 when NNPACK is unavailable."""
    if not available():
        return 0
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
