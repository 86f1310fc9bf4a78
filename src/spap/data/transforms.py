"""Preprocessing like the CycleGAN reference, with randomness from a passed generator.

Options (``preprocess``), as in the reference implementation's ``--preprocess``:

======================== ================================================================
``resize_and_crop``      resize to ``load_size`` x ``load_size``, random ``crop_size`` crop
``crop``                 random ``crop_size`` crop of the image as it is
``scale_width``          scale so the width is ``load_size`` (height keeps the aspect ratio,
                         at least ``crop_size``); no crop
``scale_width_and_crop`` ``scale_width``, then a random ``crop_size`` crop
``none``                 no resize or crop, except rounding H and W to multiples of 4
======================== ================================================================

then an optional horizontal flip (probability 0.5) and scaling to [-1, 1]. The crop position
and the flip are drawn from the ``torch.Generator`` given to :meth:`ImageTransform.__call__`
(or :meth:`ImageTransform.get_params`), never from global state, so a dataset can make them a
function of (seed, epoch, index). Two images can share one draw (aligned A|B pairs) through
:meth:`ImageTransform.get_params` + :meth:`ImageTransform.apply`.

Inputs are 8-bit PIL images or ``(H, W, C)`` arrays of :func:`spap.data.io.read_pixels`.
8-bit grayscale and RGB images go through Pillow's resize and then exactly the reference's
``ToTensor()`` + ``Normalize(0.5, 0.5)`` arithmetic (:func:`to_tensor_image`, the same
float32 values); 16-bit, float and other channel counts are scaled to [0, 1] by the value
range (:func:`value_bounds`, ``data.value_range``), resized in float32 by torchvision
(antialiased like Pillow), clipped to [0, 1] and normalised the same way.

[ours] Differences from the reference: an image smaller than the crop is first scaled up
(keeping its aspect ratio) so the crop fits instead of failing; ``scale_width`` rounds the
height and width to multiples of 4 so the CycleGAN generator accepts them. Written images
round to the nearest level (the reference truncates).
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from spap.data.io import UnreadableImage
from spap.errors import ConfigError
from spap.files import atomic_write

__all__ = [
    "BIT_DEPTHS",
    "PREPROCESS_OPTIONS",
    "ImageTransform",
    "TransformParams",
    "check_transform_options",
    "check_value_range",
    "check_values",
    "encode_png16",
    "image_size",
    "save_image",
    "tensor_to_array",
    "tensor_to_pil",
    "to_tensor_image",
    "value_bounds",
]

#: Bit depths :func:`save_image` writes.
BIT_DEPTHS: tuple[int, ...] = (8, 16)

#: An image as the transforms take it: an 8-bit PIL image or an (H, W, C) array.
Pixels = Any

#: The accepted ``preprocess`` values.
PREPROCESS_OPTIONS: tuple[str, ...] = (
    "resize_and_crop",
    "crop",
    "scale_width",
    "scale_width_and_crop",
    "none",
)

_INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


def check_transform_options(
    preprocess: str,
    load_size: int,
    crop_size: int,
    *,
    prefix: str = "",
    crop_key: str = "crop_size",
) -> None:
    """Raise :class:`~spap.errors.ConfigError` for impossible preprocessing settings.

    ``prefix`` is prepended to the key names in messages (e.g. ``"data."``); ``crop_key``
    is the name of the crop-size key in the caller's config.
    """
    if preprocess not in PREPROCESS_OPTIONS:
        raise ConfigError(
            f"{prefix}preprocess: unknown option {preprocess!r}; "
            f"choose one of {', '.join(PREPROCESS_OPTIONS)}"
        )
    for key, value in (("load_size", load_size), (crop_key, crop_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{prefix}{key} must be a positive integer, got {value!r}")
    if preprocess in ("resize_and_crop", "scale_width_and_crop") and crop_size > load_size:
        raise ConfigError(
            f"{prefix}{crop_key} ({crop_size}) is larger than {prefix}load_size ({load_size}): "
            f"with preprocess={preprocess} the crop must fit in the resized image"
        )


def check_value_range(value: Any, prefix: str = "", key: str = "value_range") -> None:
    """Raise :class:`~spap.errors.ConfigError` unless ``value`` is ``"auto"`` or ``[lo, hi]``
    with finite ``lo < hi``."""
    if value == "auto":
        return
    ok = (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) for v in value)
        and value[0] < value[1]
    )
    if not ok:
        raise ConfigError(
            f"{prefix}{key} must be auto or [lo, hi] with lo < hi (the values mapped to -1 and "
            f"1), got {value!r}"
        )


def value_bounds(value_range: Any, dtype: np.dtype) -> tuple[float, float]:
    """The (lo, hi) mapped to (-1, 1) for pixels of ``dtype``: ``[lo, hi]`` as given, or
    ``"auto"``: 0..255 (uint8), 0..65535 (uint16), 0..1 (float and other dtypes)."""
    if value_range != "auto":
        lo, hi = value_range
        return float(lo), float(hi)
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 0.0, 255.0
    if dtype == np.uint16:
        return 0.0, 65535.0
    return 0.0, 1.0


def check_values(path: str | os.PathLike, pixels: Pixels, value_range: Any = "auto") -> None:
    """Raise :class:`~spap.data.io.UnreadableImage` for float data outside 0..1 under
    ``value_range="auto"`` (they need an explicit ``[lo, hi]``); other data always fits."""
    if value_range != "auto" or not isinstance(pixels, np.ndarray):
        return
    if pixels.dtype in (np.uint8, np.uint16) or not pixels.size:
        return
    lo, hi = float(pixels.min()), float(pixels.max())
    if lo < 0.0 or hi > 1.0:
        raise UnreadableImage(
            path,
            f"its values span {lo:g}..{hi:g}, outside 0..1 (value_range auto, for "
            f"{pixels.dtype} data): set data.value_range=[lo, hi]",
        )


def image_size(img: Pixels) -> tuple[int, int]:
    """(width, height) of a PIL image or an (H, W, C) array."""
    if isinstance(img, np.ndarray):
        return int(img.shape[1]), int(img.shape[0])
    return img.size


def _as_pil(img: Pixels, value_range: Any) -> Pixels:
    """8-bit gray / RGB arrays under the auto range -> PIL (the reference's path)."""
    if (
        isinstance(img, np.ndarray)
        and img.dtype == np.uint8
        and img.shape[2] in (1, 3)
        and value_range == "auto"
    ):
        return Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
    return img


@dataclass(frozen=True)
class TransformParams:
    """One draw of the random parts of :class:`ImageTransform` for an image size."""

    resize: tuple[int, int]  # (height, width) after the resize step
    crop: tuple[int, int, int, int] | None  # (top, left, height, width), or no crop
    flip: bool


def _multiple_of_4(v: int) -> int:
    return max(4, int(round(v / 4)) * 4)


class ImageTransform:
    """Image -> float tensor (C, H, W) in [-1, 1], reference CycleGAN preprocessing.

    Args:
        preprocess: one of :data:`PREPROCESS_OPTIONS`.
        load_size: resize target (``resize_*``) or target width (``scale_width*``).
        crop_size: side of the square random crop (``*crop``); minimum height for
            ``scale_width``.
        flip: random horizontal flip with probability 0.5.
        interpolation: "bicubic" (the reference's), "bilinear" or "nearest" (label maps).
        value_range: ``"auto"`` or ``(lo, hi)``, the pixel values mapped to -1 and 1 (see
            :func:`value_bounds`; values outside are clipped).

    Images are 8-bit PIL images or (H, W, C) arrays (:func:`spap.data.io.read_pixels`).
    """

    def __init__(
        self,
        preprocess: str = "resize_and_crop",
        load_size: int = 286,
        crop_size: int = 256,
        flip: bool = True,
        interpolation: str = "bicubic",
        value_range: Any = "auto",
    ) -> None:
        check_transform_options(preprocess, load_size, crop_size)
        if interpolation not in _INTERPOLATIONS:
            raise ConfigError(
                f"interpolation: unknown option {interpolation!r}; "
                f"choose one of {', '.join(_INTERPOLATIONS)}"
            )
        check_value_range(value_range)
        self.preprocess = preprocess
        self.load_size = load_size
        self.crop_size = crop_size
        self.flip = flip
        self.interpolation = interpolation
        self.value_range = value_range if value_range == "auto" else tuple(value_range)

    def __repr__(self) -> str:
        vr = "" if self.value_range == "auto" else f", value_range={list(self.value_range)}"
        return (
            f"ImageTransform(preprocess={self.preprocess!r}, load_size={self.load_size}, "
            f"crop_size={self.crop_size}, flip={self.flip}, "
            f"interpolation={self.interpolation!r}{vr})"
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) of an image of ``width`` x ``height`` after the resize step."""
        p, load, crop = self.preprocess, self.load_size, self.crop_size
        if p == "resize_and_crop":
            return load, load
        if p == "none":
            return _multiple_of_4(height), _multiple_of_4(width)
        if p.startswith("scale_width"):
            h = max(int(load * height / width), crop)
            if p.endswith("crop"):
                return h, load
            return _multiple_of_4(h), _multiple_of_4(load)
        # "crop": as it is, scaled up (keeping the aspect ratio) if smaller than the crop
        scale = max(crop / width, crop / height, 1.0)
        if scale == 1.0:
            return height, width
        return max(crop, math.ceil(height * scale)), max(crop, math.ceil(width * scale))

    def get_params(
        self, size: tuple[int, int], generator: torch.Generator | None = None
    ) -> TransformParams:
        """Draw crop position and flip for an input of ``size`` = (width, height)."""
        h, w = self.resized_size(*size)
        crop = None
        if self.preprocess.endswith("crop"):
            c = self.crop_size
            top = int(torch.randint(0, h - c + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - c + 1, (1,), generator=generator))
            crop = (top, left, c, c)
        flip = self.flip and bool(torch.rand((), generator=generator) < 0.5)
        return TransformParams(resize=(h, w), crop=crop, flip=flip)

    def apply(self, img: Pixels, params: TransformParams) -> torch.Tensor:
        """Apply a given draw to ``img``; returns float32 (C, H, W) in [-1, 1]."""
        img = _as_pil(img, self.value_range)
        interpolation = _INTERPOLATIONS[self.interpolation]
        if isinstance(img, np.ndarray):
            x = _unit_tensor(img, self.value_range)
            if tuple(x.shape[-2:]) != params.resize:
                x = F.resize(
                    x,
                    list(params.resize),
                    interpolation=interpolation,
                    antialias=interpolation != InterpolationMode.NEAREST,
                )
            if params.crop is not None:
                x = F.crop(x, *params.crop)
            if params.flip:
                x = F.horizontal_flip(x)
            return _normalize(x.clamp_(0.0, 1.0))
        if (img.height, img.width) != params.resize:
            img = F.resize(img, list(params.resize), interpolation=interpolation)
        if params.crop is not None:
            img = F.crop(img, *params.crop)
        if params.flip:
            img = F.horizontal_flip(img)
        return to_tensor_image(img)

    def __call__(self, img: Pixels, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(img, self.get_params(image_size(img), generator))


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] as the reference's ``Normalize((0.5,) * C, (0.5,) * C)``."""
    return x.sub_(0.5).div_(0.5)


def _unit_tensor(arr: np.ndarray, value_range: Any) -> torch.Tensor:
    """(H, W, C) array -> float32 (C, H, W), ``lo..hi`` scaled to 0..1 (not clipped)."""
    lo, hi = value_bounds(value_range, arr.dtype)
    # a copy (never the caller's array), channels first
    x = torch.from_numpy(np.array(arr, dtype=np.float32)).permute(2, 0, 1).contiguous()
    if lo:
        x.sub_(lo)
    return x.div_(hi - lo)


def to_tensor_image(img: Pixels, value_range: Any = "auto") -> torch.Tensor:
    """Image -> float32 tensor (C, H, W) in [-1, 1].

    An 8-bit image (PIL, or a uint8 array under ``"auto"``) gives exactly the reference's
    ``Normalize((0.5,) * C, (0.5,) * C)(ToTensor()(img))``: ``(x / 255 - 0.5) / 0.5`` in
    float32. Other arrays are scaled by :func:`value_bounds` and clipped to [-1, 1].
    """
    img = _as_pil(img, value_range)
    if isinstance(img, np.ndarray):
        return _normalize(_unit_tensor(img, value_range).clamp_(0.0, 1.0))
    if img.mode not in ("L", "RGB"):
        if img.mode in ("I", "F", "RGBA", "LA", "CMYK") or img.mode.startswith("I;"):
            arr = np.asarray(img)  # its own bands and precision
            if img.mode == "I":
                arr = np.clip(arr, 0, 65535).astype(np.uint16)
            return to_tensor_image(arr[..., None] if arr.ndim == 2 else arr, value_range)
        img = img.convert("RGB")
    t = F.pil_to_tensor(img).to(torch.float32).div_(255.0)
    return _normalize(t)


def _as_chw(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().float().cpu()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3:
        raise ValueError(f"expected an image tensor (C, H, W), got {tuple(t.shape)}")
    return t


def tensor_to_array(t: torch.Tensor, bit_depth: int = 8) -> np.ndarray:
    """Tensor (C, H, W), (1, C, H, W) or (H, W) in [-1, 1] -> (H, W, C) uint8 (``bit_depth``
    8: ``round((x + 1) * 127.5)``) or uint16 (16: ``round((x + 1) * 32767.5)``), clamped."""
    if bit_depth not in BIT_DEPTHS:
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    t = _as_chw(t).clamp(-1.0, 1.0)
    if bit_depth == 8:
        out = ((t + 1.0) * 127.5).round_().to(torch.uint8).numpy()
    else:
        out = ((t.double() + 1.0) * 32767.5).round_().to(torch.int32).numpy().astype(np.uint16)
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def tensor_to_pil(t: torch.Tensor, bit_depth: int = 8) -> Image.Image:
    """Tensor (3|1, H, W), (1, C, H, W) or (H, W) in [-1, 1] -> PIL image (clamped): 8-bit
    RGB or L, or with ``bit_depth=16`` a one-channel ``I;16`` image."""
    t = _as_chw(t)
    if t.shape[0] not in (1, 3):
        raise ValueError(f"expected an image tensor (C, H, W) with C 1 or 3, got {tuple(t.shape)}")
    if bit_depth == 16 and t.shape[0] != 1:
        raise ValueError("PIL has no 16-bit RGB images: use tensor_to_array or save_image")
    arr = tensor_to_array(t, bit_depth)  # uint16 (H, W) -> I;16, uint8 -> L or RGB
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)


def encode_png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (gray, gray + alpha, RGB or RGBA by the channel count) of an (H, W, C)
    uint16 array: no filter, zlib level 6 (Pillow writes 16-bit gray only)."""
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected (H, W, 1|2|3|4), got {arr.shape}")
    h, w, c = arr.shape
    rows = np.ascontiguousarray(arr, dtype=">u2").view(np.uint8).reshape(h, w * c * 2)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def _encode(t: torch.Tensor, suffix: str, bit_depth: int) -> bytes:
    arr = tensor_to_array(t, bit_depth)
    if suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return buf.getvalue()
    c = arr.shape[2]
    if c not in (1, 3):
        raise ValueError(f"a {c}-channel image can only be written as .npy, not {suffix}")
    if bit_depth == 16 and c == 3:
        if suffix != ".png":
            raise ValueError(f"16-bit RGB images are written as .png or .npy, not {suffix}")
        return encode_png16(arr)
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise ValueError(f"unknown image suffix {suffix!r}")
    im = Image.fromarray(arr[..., 0] if c == 1 else arr)  # L, I;16 or RGB by the dtype
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def save_image(t: torch.Tensor, path: str | os.PathLike, bit_depth: int = 8) -> Path:
    """Write an image tensor in [-1, 1] (rounded, see :func:`tensor_to_array`).

    One channel: a grayscale image (``L``, or 16-bit with ``bit_depth=16``); three: RGB
    (16-bit RGB as PNG); any channel count as a ``.npy`` array (H, W, C) of uint8 / uint16.
    The format follows the suffix. The file is written atomically (a temporary file in the
    same folder, then renamed): a full disk leaves no truncated image, and an earlier file
    of that name intact. Parent folders are created.
    """
    path = Path(path)
    data = _encode(t, path.suffix.lower(), bit_depth)
    return atomic_write(path, lambda fh: fh.write(data), fsync=False)
