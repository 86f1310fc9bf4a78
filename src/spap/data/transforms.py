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

[ours] Differences from the reference: an image smaller than the crop is first scaled up
(keeping its aspect ratio) so the crop fits instead of failing; ``scale_width`` rounds the
height and width to multiples of 4 so the CycleGAN generator accepts them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from spap.errors import ConfigError

__all__ = [
    "PREPROCESS_OPTIONS",
    "ImageTransform",
    "TransformParams",
    "check_transform_options",
    "save_image",
    "tensor_to_pil",
    "to_tensor_image",
]

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


@dataclass(frozen=True)
class TransformParams:
    """One draw of the random parts of :class:`ImageTransform` for an image size."""

    resize: tuple[int, int]  # (height, width) after the resize step
    crop: tuple[int, int, int, int] | None  # (top, left, height, width), or no crop
    flip: bool


def _multiple_of_4(v: int) -> int:
    return max(4, int(round(v / 4)) * 4)


class ImageTransform:
    """PIL image -> float tensor (C, H, W) in [-1, 1], reference CycleGAN preprocessing.

    Args:
        preprocess: one of :data:`PREPROCESS_OPTIONS`.
        load_size: resize target (``resize_*``) or target width (``scale_width*``).
        crop_size: side of the square random crop (``*crop``); minimum height for
            ``scale_width``.
        flip: random horizontal flip with probability 0.5.
        interpolation: "bicubic" (the reference's), "bilinear" or "nearest" (label maps).
    """

    def __init__(
        self,
        preprocess: str = "resize_and_crop",
        load_size: int = 286,
        crop_size: int = 256,
        flip: bool = True,
        interpolation: str = "bicubic",
    ) -> None:
        check_transform_options(preprocess, load_size, crop_size)
        if interpolation not in _INTERPOLATIONS:
            raise ConfigError(
                f"interpolation: unknown option {interpolation!r}; "
                f"choose one of {', '.join(_INTERPOLATIONS)}"
            )
        self.preprocess = preprocess
        self.load_size = load_size
        self.crop_size = crop_size
        self.flip = flip
        self.interpolation = interpolation

    def __repr__(self) -> str:
        return (
            f"ImageTransform(preprocess={self.preprocess!r}, load_size={self.load_size}, "
            f"crop_size={self.crop_size}, flip={self.flip}, "
            f"interpolation={self.interpolation!r})"
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

    def apply(self, img: Image.Image, params: TransformParams) -> torch.Tensor:
        """Apply a given draw to ``img``; returns float32 (C, H, W) in [-1, 1]."""
        if (img.height, img.width) != params.resize:
            img = F.resize(
                img, list(params.resize), interpolation=_INTERPOLATIONS[self.interpolation]
            )
        if params.crop is not None:
            img = F.crop(img, *params.crop)
        if params.flip:
            img = F.horizontal_flip(img)
        return to_tensor_image(img)

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(img, self.get_params(img.size, generator))


def to_tensor_image(img: Image.Image) -> torch.Tensor:
    """PIL image -> float32 tensor (C, H, W) in [-1, 1]."""
    t = F.to_dtype(F.to_image(img), torch.float32, scale=True).as_subclass(torch.Tensor)
    return t.mul_(2.0).sub_(1.0)


def tensor_to_pil(t: torch.Tensor) -> Image.Image:
    """Tensor (3|1, H, W), (1, C, H, W) or (H, W) in [-1, 1] -> 8-bit PIL image (clamped)."""
    t = t.detach().float().cpu()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"expected an image tensor (C, H, W) with C 1 or 3, got {tuple(t.shape)}")
    u8 = ((t.clamp(-1.0, 1.0) + 1.0) * 127.5).round_().to(torch.uint8)
    return F.to_pil_image(u8)


def save_image(t: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write an image tensor in [-1, 1] (see :func:`tensor_to_pil`); creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor_to_pil(t).save(path)
    return path
