"""Aligned ``A|B`` pairs: label image, photo, ground-truth ids (training and scoring).

An aligned folder (pix2pix layout) holds images with two halves side by side. Which half
holds the labels is a setting: ``labels_domain="A"`` (left, the built-in scenes' layout) or
``"B"`` (right; pix2pix's Cityscapes has the photo left). Ground-truth class ids come from
an ids folder when there is one (``<split>_ids/<stem>.png``, one id per pixel; the built-in
scenes write it), else from the label half mapped to the nearest palette colour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from spap.data.io import list_images, read_image
from spap.data.labels import LabelSpace, cityscapes_label_to_train_ids
from spap.errors import DataError

__all__ = [
    "AlignedPairs",
    "read_ids",
    "resize_ids",
    "resize_rgb",
    "split_dir",
    "to_tensor",
]


def split_dir(root: str | Path, phase: str) -> Path:
    """``root/phase`` if it exists, else ``root`` itself (a split folder given directly)."""
    root = Path(root)
    if (root / phase).is_dir():
        return root / phase
    if root.is_dir():
        return root
    raise DataError(f"aligned data folder not found: {root}")


def read_ids(path: str | Path) -> np.ndarray:
    """An id map (``L``, ``P`` or 16-bit PNG; one id per pixel) as int64 ``(H, W)``."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise DataError(
                    f"{path}: expected a one-channel id map, got a {im.mode} image "
                    "(colour label images are mapped with the palette instead)"
                )
            return np.array(im).astype(np.int64)
    except OSError as exc:
        raise DataError(f"cannot read id map {path}: {exc}") from None


def resize_rgb(arr: np.ndarray, size: int | tuple[int, int] | None) -> np.ndarray:
    """Bicubic resize of an ``(H, W, 3)`` uint8 image to ``size`` (square int or (W, H))."""
    if size is None:
        return arr
    wh = (size, size) if isinstance(size, int) else size
    if (arr.shape[1], arr.shape[0]) == wh:
        return arr
    return np.asarray(Image.fromarray(arr).resize(wh, Image.BICUBIC))


def resize_ids(ids: np.ndarray, size: int | tuple[int, int] | None) -> np.ndarray:
    """Nearest-neighbour resize of an ``(H, W)`` id map (ids 0..255) to ``size``."""
    if size is None:
        return ids
    wh = (size, size) if isinstance(size, int) else size
    if (ids.shape[1], ids.shape[0]) == wh:
        return ids
    im = Image.fromarray(np.clip(ids, 0, 255).astype(np.uint8), mode="L")
    return np.asarray(im.resize(wh, Image.NEAREST)).astype(np.int64)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float in [-1, 1], the training data's values
    (the reference's ``(x / 255 - 0.5) / 0.5`` in float32)."""
    t = torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1).float()
    return t.div_(255.0).sub_(0.5).div_(0.5)


class AlignedPairs:
    """The pairs of one split of an aligned folder, read on demand.

    Args:
        root: the aligned folder (holding ``<phase>/``) or the split folder itself.
        phase: split name (``test``, ``train``, ``val``).
        labels_domain: ``"A"`` if the labels are the left half, ``"B"`` if the right half.
        space: label space used to map colour labels to ids.
        gt_ids: folder of id maps named like the images; default ``<split>_ids`` next to the
            split folder when it exists.
        ids_format: ``"train"`` (ids already in ``0..K-1`` / 255) or ``"cityscapes-label"``
            (Cityscapes ``labelIds``, converted to train ids).
    """

    def __init__(
        self,
        root: str | Path,
        space: LabelSpace,
        phase: str = "test",
        labels_domain: str = "A",
        gt_ids: str | Path | None = None,
        ids_format: str = "train",
    ) -> None:
        if labels_domain not in ("A", "B"):
            raise DataError(f"labels_domain must be 'A' or 'B', got {labels_domain!r}")
        if ids_format not in ("train", "cityscapes-label"):
            raise DataError(f"ids_format must be 'train' or 'cityscapes-label', got {ids_format!r}")
        self.dir = split_dir(root, phase)
        self.files = list_images(self.dir, recursive=False)
        if not self.files:
            raise DataError(f"no images in {self.dir}")
        self.space = space
        self.labels_domain = labels_domain
        self.ids_format = ids_format
        ids_dir = Path(gt_ids) if gt_ids is not None else self.dir.parent / f"{self.dir.name}_ids"
        if gt_ids is not None and not ids_dir.is_dir():
            raise DataError(f"ground-truth id folder not found: {ids_dir}")
        self.ids_files: dict[str, Path] = {}
        if ids_dir.is_dir():
            self.ids_files = {p.stem: p for p in list_images(ids_dir, recursive=False)}
            missing = [p.name for p in self.files if p.stem not in self.ids_files]
            if missing:
                raise DataError(
                    f"{len(missing)} images of {self.dir} have no id map in {ids_dir} "
                    f"(first: {missing[0]})"
                )
        self.ids_dir = ids_dir if self.ids_files else None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """``{"name", "label": (H,W,3) uint8, "photo": (H,W,3) uint8, "ids": (H,W) int64}``."""
        path = self.files[i]
        im = np.asarray(read_image(path))
        w = im.shape[1] // 2
        if w == 0:
            raise DataError(f"{path}: too narrow to be an aligned A|B pair")
        a, b = im[:, :w], im[:, w : 2 * w]
        label, photo = (a, b) if self.labels_domain == "A" else (b, a)
        if self.ids_files:
            ids = read_ids(self.ids_files[path.stem])
            if self.ids_format == "cityscapes-label":
                ids = cityscapes_label_to_train_ids(ids)
        else:
            ids = self.space.to_ids(np.ascontiguousarray(label))
        return {"name": path.stem, "label": label, "photo": photo, "ids": ids}
