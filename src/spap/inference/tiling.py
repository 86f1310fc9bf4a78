"""Seam-free tiled translation: an image of any size through a CycleGAN generator in bounded
memory, equal to translating it whole.

>>> out = translate_tiled(generator, image_uint8, tile=1024)         # (H, W, 3) uint8 in and out
>>> out = translate_tiled(generator, x, tile=512, overlap=64)         # (N, C, H, W) in [-1, 1]

Why tiles of a CycleGAN show seams: its instance norms normalise each image by its own
statistics, so a tile translated on its own is normalised by the tile's statistics, and its
brightness and contrast jump at the tile borders. In this module the statistics cover the whole
image:

1. **Statistics** (``stats="exact"``, the default): one pass over all tiles per
   normalisation layer, in the order the generator runs them. Pass ``k`` runs each tile up to
   layer ``k`` (layers before it use the whole-image statistics already found), adds the
   mean and variance of layer ``k``'s input over the tile's *core* (the tiles' cores
   partition the image, so nothing is counted twice; Chan's parallel formulas in float64)
   and stops the tile there. The statistics are those the generator computes on the whole
   image, up to rounding. The cost is that of about ``L / 2`` forward passes for ``L``
   normalisation layers (23 for the 9-block generator without units).
   ``stats="downscaled"`` instead runs the whole generator once on a copy of the image
   scaled to at most ``stats_size`` pixels (long side) and takes every layer's statistics
   from it: one cheap pass, but only an approximation (fine textures of the full-size image
   are missing from the copy).
2. **Translation**: every tile runs with all its normalisation layers using those fixed
   statistics (forward hooks on the generator's own modules; nothing is rewritten, and the
   hooks are removed afterwards) and the tiles are cross-faded.

Tiles: the padded image (a multiple of 4, padded like the whole-image path) is cut into
near-equal cores of at most ``tile`` pixels (multiples of 4, so that the generator's two
stride-2 layers see the same sampling grid). Each tile is run on its core plus ``overlap``
pixels of real context on every side (clipped at the image border, where the generator
pads exactly as on the whole image). Neighbouring tiles are cross-faded with a linear ramp
over a band of ``2 * blend`` pixels centred on their common border (``blend = overlap // 4``),
so every output pixel comes from tiles at least ``overlap - blend`` pixels from their cut
edges. The output is therefore **exact** (equal to the whole-image translation up to float
rounding) when the generator's receptive-field radius is at most ``overlap - blend``;
``overlap="auto"`` picks the smallest such overlap from an upper bound of the radius
(:func:`receptive_radius`). A smaller overlap is faster and differs from the whole-image
output only within the receptive field of the cut edges, smoothly (no seam: the statistics
are shared and the tiles are blended).

What is not tiled: SAGAN units (they attend over the whole image) are refused; SPAP units
tile exactly (their dilated convs are local, and the global average of channel attention is
one more whole-image statistic, gathered like the norms). Batch norm in eval mode is local.
Memory: the input and output images (uint8: 3 bytes per pixel each), one tile's activations
and one band of ``tile + 2 * blend`` output rows in float32.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from spap.data.transforms import encode_png16, tensor_to_array, to_tensor_image
from spap.errors import SpapError
from spap.files import atomic_write
from spap.layers.sagan import SelfAttention
from spap.layers.spap import AttentiveFuse

__all__ = [
    "STATS_MODES",
    "TilePlan",
    "auto_overlap",
    "plan_tiles",
    "receptive_radius",
    "translate_tiled",
    "write_array",
]

#: How the whole-image statistics are gathered.
STATS_MODES = ("exact", "downscaled")

# (y0, y1, x0, x1) in padded-image pixels
Box = tuple[int, int, int, int]


# ----------------------------------------------------------------------------- the plan


def _bounds(length: int, tile: int) -> list[int]:
    """Core boundaries ``0 = b_0 < ... < b_n = length``: ``n = ceil(length / tile)`` near-equal
    cores, boundaries on multiples of 4."""
    n = max(1, math.ceil(length / tile))
    out = [0] + [4 * round(k * length / n / 4) for k in range(1, n)] + [length]
    if any(a >= b for a, b in zip(out, out[1:])):  # pragma: no cover - tile >= 8 prevents it
        raise SpapError(f"cannot cut {length} pixels into tiles of {tile}")
    return out


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of a padded ``height`` x ``width`` image lie."""

    height: int
    width: int
    rows: list[int]
    cols: list[int]
    overlap: int
    blend: int

    @property
    def count(self) -> int:
        return (len(self.rows) - 1) * (len(self.cols) - 1)

    def core(self, i: int, j: int) -> Box:
        return self.rows[i], self.rows[i + 1], self.cols[j], self.cols[j + 1]

    def extent(self, i: int, j: int) -> Box:
        """The pixels tile (i, j) is run on: its core plus ``overlap`` context, clipped."""
        y0, y1, x0, x1 = self.core(i, j)
        m = self.overlap
        return max(0, y0 - m), min(self.height, y1 + m), max(0, x0 - m), min(self.width, x1 + m)

    def tiles(self) -> Iterator[tuple[int, int]]:
        for i in range(len(self.rows) - 1):
            for j in range(len(self.cols) - 1):
                yield i, j


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> TilePlan:
    """The tiles of a padded image (``height``, ``width``, ``tile`` and ``overlap``
    multiples of 4)."""
    if tile < 8 or tile % 4:
        raise SpapError(f"--tile must be a multiple of 4 and at least 8, got {tile}")
    if overlap < 0 or overlap % 4:
        raise SpapError(f"--overlap must be a non-negative multiple of 4, got {overlap}")
    rows, cols = _bounds(height, tile), _bounds(width, tile)
    smallest = min(b - a for bs in (rows, cols) for a, b in zip(bs, bs[1:]))
    blend = min(overlap // 4, smallest // 2)
    return TilePlan(height, width, rows, cols, overlap, blend)


# ----------------------------------------------------------------------------- the generator


@dataclass
class _Point:
    """A whole-image statistic the generator computes: the input of an instance / group
    norm, or the global average of a SPAP fuse block's embedding (channel attention)."""

    module: nn.Module  # the norm, or the AttentiveFuse
    kind: str  # "norm" | "group" | "pool"
    name: str
    mean: Tensor | None = None  # (N, C) / (N, G) float64
    var: Tensor | None = None
    count: float = 0.0
    m2: Tensor | None = None

    def add(self, mean: Tensor, m2: Tensor | None, count: float) -> None:
        """Chan's parallel update with a part of ``count`` values."""
        if self.mean is None:
            self.mean, self.m2, self.count = mean, m2, count
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        if m2 is not None:
            self.m2 = self.m2 + m2 + delta * delta * (self.count * count / total)
        self.count = total

    def finish(self) -> None:
        if self.kind != "pool":
            self.var = self.m2 / self.count


def _is_global_norm(m: nn.Module) -> str | None:
    if isinstance(m, nn.InstanceNorm2d) and (m.training or not m.track_running_stats):
        return "norm"
    if isinstance(m, nn.GroupNorm):
        return "group"
    return None


def _check_tileable(g: nn.Module) -> None:
    for name, m in g.named_modules():
        label = name or type(g).__name__
        if isinstance(m, SelfAttention):
            raise SpapError(
                f"tiled translation: the generator's SAGAN unit {label} attends over the "
                "whole image, which tiles cannot reproduce; translate without --tile"
            )
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            raise SpapError(f"tiled translation: {label} pools over the whole image")
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise SpapError(f"tiled translation needs the generator in eval mode ({label})")


def _stat_points(g: nn.Module, probe: Tensor) -> list[_Point]:
    """The whole-image statistics of ``g``, in the order a forward pass needs them."""
    names = {id(m): n for n, m in g.named_modules()}
    order: list[_Point] = []
    seen: set[int] = set()
    handles = []

    def visit(module: nn.Module, kind: str) -> None:
        if id(module) in seen:
            raise SpapError(
                f"tiled translation: {names.get(id(module))} runs twice in one forward pass"
            )
        seen.add(id(module))
        order.append(_Point(module, kind, names.get(id(module), "")))

    for m in g.modules():
        kind = _is_global_norm(m)
        if kind is not None:
            handles.append(m.register_forward_pre_hook(lambda mod, a, kind=kind: visit(mod, kind)))
        elif isinstance(m, AttentiveFuse) and m.use_channel:
            handles.append(
                m.embed.register_forward_hook(lambda mod, a, o, fuse=m: visit(fuse, "pool"))
            )
    try:
        with torch.no_grad():
            g(probe)
    finally:
        for h in handles:
            h.remove()
    return order


def receptive_radius(g: nn.Module, channels: int | None = None, probe: int = 32) -> int:
    """An upper bound, in input pixels, of how far an output pixel of ``g`` sees: the sum
    over every conv the forward pass runs of its reach (kernel extent times the input's
    stride), measured with hooks on a ``probe`` x ``probe`` input. Exact for a chain of
    convs; parallel branches (SPAP's pyramid) are counted as if in a chain, so the bound is
    conservative there."""
    channels = channels or int(getattr(g, "input_nc", 3))
    side = probe
    total = 0.0
    handles = []

    def conv(mod: nn.Module, args: tuple, out: Tensor) -> None:
        nonlocal total
        k = max(mod.kernel_size)
        if isinstance(mod, nn.ConvTranspose2d):  # reach k - 1 output pixels
            total += (k - 1) * side / out.shape[-1]
            return
        d = max(mod.dilation)
        if isinstance(mod.padding, str):
            pad = (k - 1) * d // 2 if mod.padding == "same" else 0
        else:
            pad = max(mod.padding)
        total += max(pad, (k - 1) * d - pad) * side / args[0].shape[-1]

    for m in g.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            handles.append(m.register_forward_hook(conv))
    dev = next((p.device for p in g.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            g(torch.zeros(1, channels, side, side, device=dev))
    finally:
        for h in handles:
            h.remove()
    return math.ceil(total)


def auto_overlap(g: nn.Module, channels: int | None = None) -> int:
    """The smallest overlap (a multiple of 4) that makes tiling exact for ``g``:
    ``overlap - overlap // 4 >= receptive_radius(g)``."""
    r = receptive_radius(g, channels)
    m = 4 * math.ceil(r * 4 / 3 / 4)
    while m - m // 4 < r:
        m += 4
    return m


# ----------------------------------------------------------------------------- hooks


class _Stop(Exception):
    """Ends a tile's forward pass once the statistic being gathered is seen."""


def _core_of(feature: Tensor, ext: Box, core: Box) -> Tensor:
    """The part of a feature map (N, C, h, w) of a tile run on ``ext`` that lies in ``core``."""
    ty0, ty1, tx0, tx1 = ext
    h, w = feature.shape[-2:]
    sy, sx = (ty1 - ty0) / h, (tx1 - tx0) / w
    if sy != sx or sy not in (0.25, 0.5, 1, 2, 4, 8, 16):
        raise SpapError(
            f"tiled translation: a feature map of {h}x{w} for a tile of "
            f"{ty1 - ty0}x{tx1 - tx0} pixels is not on the image's grid"
        )
    y0, y1, x0, x1 = core
    return feature[
        ...,
        int((y0 - ty0) / sy) : int((y1 - ty0) / sy),
        int((x0 - tx0) / sx) : int((x1 - tx0) / sx),
    ]


def _moments(x: Tensor, kind: str, groups: int) -> tuple[Tensor, Tensor | None, float]:
    """(mean, sum of squared deviations, count) per (N, C) / (N, G) in float64."""
    n = x.shape[0]
    flat = x.reshape(n, groups, -1) if kind == "group" else x.flatten(2)
    count = float(flat.shape[-1])
    mean = flat.mean(-1, dtype=torch.float32)
    if kind == "pool":
        return mean.double(), None, count
    m2 = (flat - mean.unsqueeze(-1)).square().sum(-1, dtype=torch.float32)
    return mean.double(), m2.double(), count


def _normalise(x: Tensor, p: _Point) -> Tensor:
    """``x`` normalised by the point's fixed statistics, as its module would on the whole
    image (affine parameters included)."""
    m = p.module
    n, c = x.shape[:2]
    mean, var = p.mean, p.var
    if p.kind == "group":  # one statistic per group -> per channel
        mean = mean.repeat_interleave(c // m.num_groups, dim=1)
        var = var.repeat_interleave(c // m.num_groups, dim=1)
    weight = getattr(m, "weight", None)
    bias = getattr(m, "bias", None)
    y = F.batch_norm(
        x.reshape(1, n * c, *x.shape[2:]),
        mean.reshape(-1).to(x.dtype),
        var.reshape(-1).to(x.dtype),
        weight.repeat(n) if weight is not None else None,
        bias.repeat(n) if bias is not None else None,
        False,
        0.0,
        m.eps,
    )
    return y.reshape(x.shape)


@dataclass
class _Hooks:
    """The hooks of one pass; ``tile`` (extent, core) is set before each tile's forward pass.

    ``points[:fixed]`` use their statistics; ``points[gather]`` is gathered over the tile's
    core, then the tile's pass stops; with ``record_all`` every point is gathered from whole
    maps (the downscaled copy) and the modules normalise as usual."""

    points: list[_Point]
    fixed: int
    gather: int | None = None
    record_all: bool = False
    tile: tuple[Box, Box] | None = None
    handles: list[Any] = field(default_factory=list)

    def __enter__(self) -> _Hooks:
        for k, p in enumerate(self.points):
            if self.record_all:
                self._observe(p, self._recorder(p))
            elif k < self.fixed:
                self._fix(p)
            elif k == self.gather:
                self._observe(p, self._gatherer(p))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _observe(self, p: _Point, observe: Callable[[Tensor], None]) -> None:
        if p.kind == "pool":  # the embedding the fuse block averages
            hook = p.module.embed.register_forward_hook(lambda mod, a, out: observe(out))
        else:  # the norm's input
            hook = p.module.register_forward_pre_hook(lambda mod, a: observe(a[0]))
        self.handles.append(hook)

    def _fix(self, p: _Point) -> None:
        if p.kind == "pool":

            def pooled(mod: nn.Module, args: tuple) -> tuple:
                return (p.mean.to(args[0].dtype).reshape(args[0].shape),)

            hook = p.module.channel_head.register_forward_pre_hook(pooled)
        else:
            hook = p.module.register_forward_hook(lambda mod, a, out: _normalise(a[0], p))
        self.handles.append(hook)

    def _groups(self, p: _Point) -> int:
        return p.module.num_groups if p.kind == "group" else 1

    def _gatherer(self, p: _Point) -> Callable[[Tensor], None]:
        def observe(x: Tensor) -> None:
            ext, core = self.tile
            p.add(*_moments(_core_of(x, ext, core), p.kind, self._groups(p)))
            raise _Stop

        return observe

    def _recorder(self, p: _Point) -> Callable[[Tensor], None]:
        def observe(x: Tensor) -> None:
            p.add(*_moments(x, p.kind, self._groups(p)))

        return observe


# ----------------------------------------------------------------------------- sources


class _Source:
    """Crops of the padded image as float (N, C, h, w) in [-1, 1] on ``device``.

    ``image``: a float tensor (N, C, H, W) in [-1, 1], or an (H, W, C) / (H, W) array of any
    dtype :func:`spap.data.transforms.to_tensor_image` takes, converted crop by crop exactly
    as that function converts a whole image (``value_range`` as there)."""

    def __init__(
        self, image: Tensor | np.ndarray, device: torch.device, value_range: Any = "auto"
    ) -> None:
        self.device = device
        self.value_range = value_range
        if isinstance(image, np.ndarray):
            if image.ndim not in (2, 3):
                raise SpapError(f"tiled translation takes (H, W, C) arrays, got {image.shape}")
            self.array = image if image.ndim == 3 else image[..., None]
            self.tensor = None
            h, w, c = self.array.shape
            self.shape = (1, c, h, w)
        else:
            if image.dim() != 4:
                raise ValueError(f"expected (N, C, H, W), got {tuple(image.shape)}")
            self.tensor, self.array = image, None
            self.shape = tuple(image.shape)
        n, c, h, w = self.shape
        self.height, self.width = h, w
        self.padded_h = max(8, h + (-h) % 4)
        self.padded_w = max(8, w + (-w) % 4)
        ph, pw = self.padded_h - h, self.padded_w - w
        self.reflect = ph < h and pw < w  # as spap.inference.translate.pad_to_multiple

    def _index(self, a: int, b: int, size: int) -> np.ndarray | slice:
        if b <= size:
            return slice(a, b)
        i = np.arange(a, b)
        if self.reflect:
            i = np.where(i < size, i, 2 * (size - 1) - i)
        return np.minimum(i, size - 1)

    def crop(self, box: Box) -> Tensor:
        y0, y1, x0, x1 = box
        ry, rx = self._index(y0, y1, self.height), self._index(x0, x1, self.width)
        if self.array is not None:
            part = np.ascontiguousarray(self.array[ry][:, rx])
            return to_tensor_image(part, self.value_range).unsqueeze(0).to(self.device)
        t = self.tensor
        if isinstance(ry, np.ndarray):
            t = t.index_select(2, torch.as_tensor(ry, device=t.device))
        else:
            t = t[:, :, ry]
        if isinstance(rx, np.ndarray):
            t = t.index_select(3, torch.as_tensor(rx, device=t.device))
        else:
            t = t[..., rx]
        return t.to(self.device, torch.float32)

    def downscaled(self, size: int) -> Tensor:
        """The image scaled to at most ``size`` pixels on its long side (a multiple of 4, at
        least 8), for ``stats="downscaled"``: 8-bit images with Pillow's box reduction and
        bilinear resize, other arrays by striding, tensors by antialiased interpolation."""
        h, w = self.padded_h, self.padded_w
        scale = min(1.0, size / max(h, w))
        th, tw = max(8, 4 * round(h * scale / 4)), max(8, 4 * round(w * scale / 4))
        a = self.array
        if a is not None and a.dtype == np.uint8 and a.shape[2] in (1, 3):
            img = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)
            factor = max(1, int(1 / scale) // 2)
            img = img.reduce(factor) if factor > 1 else img
            small = to_tensor_image(img.resize((tw, th), Image.Resampling.BILINEAR))
            return small.unsqueeze(0).to(self.device)
        if a is not None:
            k = max(1, math.ceil(max(h, w) / size))
            x = to_tensor_image(np.ascontiguousarray(a[::k, ::k]), self.value_range)[None]
        else:
            x = self.tensor.float()
        x = x.to(self.device)
        return F.interpolate(x, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)


def write_array(arr: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, C) uint8 / uint16 array as the image its suffix names (16-bit RGB:
    PNG only) or as ``.npy``, atomically (as :func:`spap.data.transforms.save_image` writes
    tensors), without converting it to a tensor first."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":

        def write(fh: Any) -> None:
            np.save(fh, arr, allow_pickle=False)

    elif arr.dtype == np.uint16 and arr.shape[2] == 3:
        data = encode_png16(arr)

        def write(fh: Any) -> None:
            fh.write(data)

    else:
        img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
        fmt = Image.registered_extensions().get(suffix)
        if fmt is None:
            raise SpapError(f"unknown image suffix {suffix!r}")

        def write(fh: Any) -> None:
            img.save(fh, format=fmt)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
    return path


# ----------------------------------------------------------------------------- the blend


def _ramp(length: int, lo: int, hi: int, start: int, end: int, blend: int) -> Tensor:
    """Weights over output pixels ``[start, end)`` of a tile with core ``[lo, hi)`` on an axis
    of ``length`` pixels: 1 in the core, linear ramps of ``2 * blend`` pixels centred on cuts
    (none at the image border)."""
    p = torch.arange(start, end, dtype=torch.float32) + 0.5
    w = torch.ones(end - start)
    if blend:
        if lo > 0:
            w = w * ((p - (lo - blend)) / (2 * blend)).clamp(0, 1)
        if hi < length:
            w = w * (((hi + blend) - p) / (2 * blend)).clamp(0, 1)
    return w


class _Sink:
    """Collects blended rows; hands each finished band of rows to ``emit(rows, y0)``."""

    def __init__(self, plan: TilePlan, n: int, c: int, emit: Callable[[Tensor, int], None]) -> None:
        self.plan, self.n, self.c, self.emit = plan, n, c, emit
        self.carry: Tensor | None = None
        self.carry_start = 0

    def row(self, i: int, outputs: list[tuple[Box, Tensor]]) -> None:
        plan, b = self.plan, self.plan.blend
        y0, y1 = plan.rows[i], plan.rows[i + 1]
        lo, hi = max(0, y0 - b), min(plan.height, y1 + b)
        band = torch.zeros(self.n, self.c, hi - lo, plan.width)
        if self.carry is not None:
            band[:, :, self.carry_start - lo : self.carry_start - lo + self.carry.shape[2]] += (
                self.carry
            )
        for (cy0, cy1, cx0, cx1), (ey0, ex0, y) in outputs:
            ox0, ox1 = max(0, cx0 - b), min(plan.width, cx1 + b)
            wy = _ramp(plan.height, cy0, cy1, lo, hi, b)
            wx = _ramp(plan.width, cx0, cx1, ox0, ox1, b)
            part = y[..., lo - ey0 : hi - ey0, ox0 - ex0 : ox1 - ex0].float().cpu()
            band[..., ox0:ox1] += part * wy[:, None] * wx
        last = i == len(plan.rows) - 2
        done = hi if last else min(hi, y1 - b)
        self.emit(band[:, :, : done - lo], lo)
        self.carry = None if last else band[:, :, done - lo :].clone()
        self.carry_start = done


# ----------------------------------------------------------------------------- main


def translate_tiled(
    generator: nn.Module,
    image: Tensor | np.ndarray | Image.Image,
    *,
    tile: int = 1024,
    overlap: int | str = "auto",
    stats: str = "exact",
    stats_size: int = 1024,
    value_range: Any = "auto",
    bit_depth: int = 8,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor | np.ndarray | Image.Image:
    """Translate ``image`` with ``generator`` tile by tile (module doc).

    ``image``: a float tensor (N, C, H, W) in [-1, 1] (-> the same, on the CPU); an (H, W, C)
    or (H, W) array (uint8, uint16 or float, scaled by ``value_range`` as
    :func:`spap.data.transforms.to_tensor_image` does; -> an (H, W, C') array of
    ``bit_depth`` 8 or 16 bits, rounded as :func:`spap.data.transforms.tensor_to_array`
    rounds); or a PIL image (-> an 8-bit PIL image).
    ``tile``: core size in pixels (multiple of 4); ``overlap``: context pixels on each side
    (multiple of 4) or ``"auto"`` (exact, :func:`auto_overlap`); ``stats``: ``"exact"`` or
    ``"downscaled"`` (to ``stats_size`` pixels). An image that fits in one tile is
    translated whole. The generator runs on ``device`` (default: where its weights are).
    """
    if stats not in STATS_MODES:
        raise SpapError(f"tile statistics must be one of {', '.join(STATS_MODES)}, got {stats!r}")
    is_pil = isinstance(image, Image.Image)
    if is_pil:
        image = np.asarray(image if image.mode in ("RGB", "L") else image.convert("RGB"))
        bit_depth = 8
    g = generator
    _check_tileable(g)
    dev = torch.device(device) if device is not None else next(g.parameters()).device
    src = _Source(image, dev, value_range)
    n, c, h, w = src.shape
    if overlap == "auto":
        overlap = auto_overlap(g, c)
    if isinstance(overlap, bool) or not isinstance(overlap, int):
        raise SpapError(f"--overlap must be an integer or auto, got {overlap!r}")
    plan = plan_tiles(src.padded_h, src.padded_w, tile, overlap)
    out_c = int(getattr(g, "output_nc", c))
    as_array = src.array is not None
    if as_array:
        result: Any = np.empty((h, w, out_c), dtype=np.uint8 if bit_depth == 8 else np.uint16)
    else:
        result = torch.empty(n, out_c, h, w)

    def emit(rows: Tensor, y0: int) -> None:
        for k in range(0, rows.shape[2], 64):  # small pieces: few temporary copies
            a, b = y0 + k, min(h, y0 + k + 64, y0 + rows.shape[2])
            if a >= b:
                return
            part = rows[:, :, k : k + b - a, :w]
            if as_array:
                result[a:b] = tensor_to_array(part[0], bit_depth)
            else:
                result[:, :, a:b] = part

    with torch.no_grad():
        if plan.count == 1:
            emit(g(src.crop((0, plan.height, 0, plan.width))).float().cpu(), 0)
        else:
            _tiled(g, src, plan, stats, stats_size, out_c, emit, progress)
    if is_pil:
        return Image.fromarray(result[..., 0] if out_c == 1 else result)
    return result


def _tiled(
    g: nn.Module,
    src: _Source,
    plan: TilePlan,
    stats: str,
    stats_size: int,
    out_c: int,
    emit: Callable[[Tensor, int], None],
    progress: bool,
) -> None:
    first = src.crop(plan.extent(0, 0))
    points = _stat_points(g, first)
    del first
    passes = len(points) + 1 if stats == "exact" else 2
    bar = tqdm(total=passes * plan.count, unit="tile", desc="tiles") if progress else None
    try:
        if stats == "exact":
            for k in range(len(points)):
                with _Hooks(points, fixed=k, gather=k) as hooks:
                    for i, j in plan.tiles():
                        hooks.tile = (plan.extent(i, j), plan.core(i, j))
                        with contextlib.suppress(_Stop):
                            g(src.crop(hooks.tile[0]))
                        if bar is not None:
                            bar.update()
                points[k].finish()
        else:
            with _Hooks(points, fixed=0, record_all=True):
                g(src.downscaled(stats_size))
            for p in points:
                p.finish()
            if bar is not None:
                bar.update(plan.count)
        sink = _Sink(plan, src.shape[0], out_c, emit)
        with _Hooks(points, fixed=len(points)):
            for i in range(len(plan.rows) - 1):
                outputs = []
                for j in range(len(plan.cols) - 1):
                    ext = plan.extent(i, j)
                    y = g(src.crop(ext))
                    outputs.append((plan.core(i, j), (ext[0], ext[2], y)))
                    if bar is not None:
                        bar.update()
                sink.row(i, outputs)
    finally:
        if bar is not None:
            bar.close()
