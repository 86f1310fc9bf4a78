"""Label spaces: the classes of a segmentation task, their colours and ids.

A :class:`LabelSpace` holds the evaluation classes, their colours, and the colours that may
appear in label images (mapped to a class id or to the ignore label). Built in:
``"cityscapes"`` (the 19 train ids of the official label table, void = 255) and
``"scenes"`` (the classes of the built-in street scenes, :mod:`spap.data.scenes`).
:func:`nearest_palette` maps RGB pixels to the nearest palette colour.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.datasets import Cityscapes

from spap.data.scenes import SCENE_CLASSES, SCENE_PALETTE
from spap.errors import SpapError

__all__ = [
    "IGNORE_INDEX",
    "LabelSpace",
    "cityscapes_label_to_train_ids",
    "get_label_space",
    "nearest_palette",
]

#: Ground-truth value that is never scored (Cityscapes' ``trainId`` of void classes).
IGNORE_INDEX = 255


def nearest_palette(
    image: np.ndarray | torch.Tensor,
    palette: np.ndarray | torch.Tensor | Sequence[Sequence[int]],
    ids: np.ndarray | torch.Tensor | Sequence[int] | None = None,
) -> np.ndarray | torch.Tensor:
    """Map every pixel to the index of the nearest palette colour (squared RGB distance).

    Args:
        image: RGB values on the 0..255 scale (uint8 or float). A numpy array is
            channels-last ``(..., H, W, 3)``; a tensor is channels-first ``(..., 3, H, W)``.
        palette: ``(M, 3)`` colours on the 0..255 scale.
        ids: optional ``(M,)`` value returned for each palette entry (e.g. the class id of
            each colour, or the ignore label); default: the palette index.

    Returns:
        int64 ids of shape ``(..., H, W)``, numpy in / numpy out, tensor in / tensor out.
        Ties go to the first palette entry.
    """
    as_numpy = isinstance(image, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(image)) if as_numpy else image
    if not as_numpy:
        if x.dim() < 3 or x.shape[-3] != 3:
            raise ValueError(f"expected a (..., 3, H, W) tensor, got shape {tuple(x.shape)}")
        x = x.movedim(-3, -1)
    elif x.shape[-1] != 3:
        raise ValueError(f"expected a (..., H, W, 3) array, got shape {tuple(x.shape)}")
    pal = torch.as_tensor(
        np.array(palette, dtype=np.float32), dtype=torch.float32, device=x.device
    ).reshape(-1, 3)
    shape = x.shape[:-1]
    flat = x.reshape(-1, 3).to(torch.float32)
    out = torch.empty(flat.shape[0], dtype=torch.int64, device=x.device)
    p2 = (pal * pal).sum(1)
    chunk = 1 << 18
    for i in range(0, flat.shape[0], chunk):
        v = flat[i : i + chunk]
        # |v - p|^2 = |v|^2 - 2 v.p + |p|^2; |v|^2 is constant per pixel
        out[i : i + chunk] = (p2 - 2.0 * v @ pal.T).argmin(1)
    if ids is not None:
        lut = torch.as_tensor(np.asarray(ids), dtype=torch.int64, device=x.device).reshape(-1)
        if lut.numel() != pal.shape[0]:
            raise ValueError(f"ids has {lut.numel()} entries for {pal.shape[0]} palette colours")
        out = lut[out]
    out = out.reshape(shape)
    return out.cpu().numpy() if as_numpy else out


@dataclass(frozen=True)
class LabelSpace:
    """The classes of a segmentation task and the colours of its label images.

    Attributes:
        name: short name (``"cityscapes"``, ``"scenes"``, ...).
        class_names: the K evaluation classes; class ``i`` has id ``i``.
        colors: ``(K, 3)`` uint8 colour of each class (for rendering id maps).
        lookup_colors: ``(M, 3)`` uint8 colours recognised in label images.
        lookup_ids: ``(M,)`` class id of each lookup colour (``ignore_index`` for void).
        ignore_index: ground-truth value that is not scored.
    """

    name: str
    class_names: tuple[str, ...]
    colors: np.ndarray
    lookup_colors: np.ndarray
    lookup_ids: np.ndarray
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_palette(
        cls, name: str, class_names: Sequence[str], palette: np.ndarray | Sequence[Sequence[int]]
    ) -> LabelSpace:
        """A label space whose label images use exactly one colour per class."""
        colors = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        if len(colors) != len(class_names):
            raise ValueError(f"{len(class_names)} class names for {len(colors)} palette colours")
        return cls(
            name=name,
            class_names=tuple(class_names),
            colors=colors,
            lookup_colors=colors,
            lookup_ids=np.arange(len(colors), dtype=np.int64),
        )

    def to_ids(self, image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Class ids of a colour label image (nearest lookup colour, see :func:`nearest_palette`)."""
        return nearest_palette(image, self.lookup_colors, self.lookup_ids)

    def colorize(self, ids: np.ndarray) -> np.ndarray:
        """``(..., H, W)`` ids -> ``(..., H, W, 3)`` uint8 colours (ignored/unknown ids: black)."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = self.colors
        return lut[np.clip(np.asarray(ids), 0, 255).astype(np.int64)]


@functools.lru_cache(maxsize=1)
def _cityscapes_classes() -> tuple[Any, ...]:
    # The official Cityscapes label table (cityscapesScripts labels.py), as torchvision ships it.
    return tuple(Cityscapes.classes)


def cityscapes_label_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes label ids (0..33, ``*_labelIds.png``) -> train ids (0..18, void = 255)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for c in _cityscapes_classes():
        if c.id >= 0:
            lut[c.id] = c.train_id if 0 <= c.train_id < 255 else IGNORE_INDEX
    return lut[np.clip(np.asarray(label_ids), 0, 255).astype(np.int64)]


@functools.lru_cache(maxsize=1)
def _cityscapes_space() -> LabelSpace:
    classes = [c for c in _cityscapes_classes() if c.id >= 0]
    train = sorted((c for c in classes if 0 <= c.train_id < 255), key=lambda c: c.train_id)
    # Every colour of the label table; a colour shared by a scored and a void class
    # (pole / polegroup) maps to the scored class.
    lookup: dict[tuple[int, int, int], int] = {}
    for c in classes:
        tid = c.train_id if 0 <= c.train_id < 255 else IGNORE_INDEX
        if tuple(c.color) not in lookup or lookup[tuple(c.color)] == IGNORE_INDEX:
            lookup[tuple(c.color)] = tid
    return LabelSpace(
        name="cityscapes",
        class_names=tuple(c.name for c in train),
        colors=np.array([c.color for c in train], dtype=np.uint8),
        lookup_colors=np.array(list(lookup), dtype=np.uint8),
        lookup_ids=np.array(list(lookup.values()), dtype=np.int64),
    )


def _scenes_space() -> LabelSpace:
    return LabelSpace.from_palette("scenes", tuple(SCENE_CLASSES), SCENE_PALETTE)


_SPACES = {"cityscapes": _cityscapes_space, "scenes": _scenes_space}


def get_label_space(space: str | LabelSpace) -> LabelSpace:
    """A built-in label space by name (``"cityscapes"``: 19 train ids; ``"scenes"``), or ``space``."""
    if isinstance(space, LabelSpace):
        return space
    try:
        return _SPACES[space]()
    except KeyError:
        raise SpapError(
            f"unknown palette {space!r}; choose one of {', '.join(sorted(_SPACES))}"
        ) from None
