"""Datasets for the three folder layouts: image folder, unaligned A/B, aligned A|B.

Every dataset takes an ``int`` index (epoch 0) or an ``(epoch, index)`` pair (as yielded by
:class:`~spap.data.sampler.EpochSampler`) and draws all of an item's randomness (crop, flip,
the unaligned B image) from :func:`~spap.data.sampler.item_generator` ``(seed, epoch,
index)``: results do not depend on the number of DataLoader workers, on global RNG state,
or on a resume.

Robustness: at construction each folder is listed (:func:`~spap.data.io.scan_images`; zero
byte files and broken links are excluded with a warning) and must hold at least one image
that decodes, else :class:`~spap.errors.DataError` names the folder. When an item's file
fails to decode later, it is skipped with a warning (once per file and process) and replaced
by the next file of the same folder (index + 1, wrapping); the sample's ``"skipped"`` field
counts the files skipped to produce it, so a training loop can sum it over an epoch.
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from spap.data.io import DEFAULT_MAX_PIXELS, UnreadableImage, read_image, scan_images
from spap.data.sampler import item_generator
from spap.data.transforms import ImageTransform
from spap.errors import ConfigError, DataError

__all__ = [
    "DATASET_LAYOUTS",
    "AlignedDataset",
    "ImageFolderDataset",
    "ImageList",
    "UnalignedDataset",
    "build_dataset",
    "detect_layout",
]

log = logging.getLogger(__name__)

#: Layout names accepted by :func:`build_dataset`.
DATASET_LAYOUTS: tuple[str, ...] = ("auto", "unaligned", "aligned", "folder")

Key = int | tuple[int, int]


def _split_key(key: Key, length: int) -> tuple[int, int]:
    if isinstance(key, (tuple, list)):
        epoch, index = (operator.index(k) for k in key)
    else:
        epoch, index = 0, operator.index(key)
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for a dataset of length {length}")
    return epoch, index


class ImageList:
    """The decodable images of one folder, with skip-and-replace reading.

    Args:
        root: the folder (searched recursively unless ``recursive=False``).
        check: optional callable run on each decoded image; raising
            :class:`~spap.data.io.UnreadableImage` marks the file unusable.
        max_pixels: decompression-bomb limit passed to :func:`~spap.data.io.read_image`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        recursive: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        check: Callable[[Path, Image.Image], None] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder not found: {self.root}")
        self.files, self.excluded = scan_images(self.root, recursive)
        self.max_pixels = max_pixels
        self.check = check
        self._bad: set[int] = set()
        for path, reason in self.excluded:
            log.warning("skipping %s: %s", path, reason)
        if not self.files:
            extra = f" ({len(self.excluded)} unusable files excluded)" if self.excluded else ""
            raise DataError(f"no image files in {self.root}{extra}")
        self._probe()

    def _probe(self) -> None:
        """Fail now, naming the folder, unless at least one file decodes."""
        first_error = ""
        for i in range(len(self.files)):
            try:
                self._load(i)
                return
            except UnreadableImage as exc:
                self._mark_bad(i, exc)
                first_error = first_error or exc.reason
        raise DataError(
            f"no readable image in {self.root}: all {len(self.files)} image files failed to "
            f"decode (first: {self.files[0].name}: {first_error})"
        )

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, i: int) -> Image.Image:
        img = read_image(self.files[i], max_pixels=self.max_pixels)
        if self.check is not None:
            self.check(self.files[i], img)
        return img

    def _mark_bad(self, i: int, exc: UnreadableImage) -> None:
        if i not in self._bad:
            self._bad.add(i)
            log.warning("skipping unreadable image %s: %s", self.files[i], exc.reason)

    def read(self, index: int) -> tuple[Image.Image, Path, int]:
        """Image ``index``, or the next readable one: (image, its path, files skipped)."""
        n = len(self.files)
        for skipped in range(n):
            i = (index + skipped) % n
            if i in self._bad:
                continue
            try:
                return self._load(i), self.files[i], skipped
            except UnreadableImage as exc:
                self._mark_bad(i, exc)
        raise DataError(f"no readable image left in {self.root}: all {n} files failed to decode")


def _transform(preprocess: str, load_size: int, crop_size: int, flip: bool, interpolation: str):
    return ImageTransform(preprocess, load_size, crop_size, flip, interpolation)


class ImageFolderDataset(Dataset):
    """All images below ``root`` (recursive), for unconditional GANs.

    Args:
        root: image folder.
        size: output side (the crop size); ``load_size`` defaults to it, so the default
            ``preprocess="resize_and_crop"`` resizes every image to ``size`` x ``size``.
        preprocess: see :mod:`spap.data.transforms`.
        flip: random horizontal flip.
        seed: randomness seed (with epoch and index).
        load_size: resize target (defaults to ``size``).
        recursive: include sub-folders.
        max_pixels: decompression-bomb limit per file.
        interpolation: "bicubic", "bilinear" or "nearest".

    Items: ``{"image": float32 (3, H, W) in [-1, 1], "path": str, "skipped": int}``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int = 64,
        preprocess: str = "resize_and_crop",
        flip: bool = True,
        seed: int = 0,
        *,
        load_size: int | None = None,
        recursive: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        interpolation: str = "bicubic",
    ) -> None:
        self.transform = _transform(preprocess, load_size or size, size, flip, interpolation)
        self.seed = seed
        self.images = ImageList(root, recursive=recursive, max_pixels=max_pixels)
        self.root = self.images.root

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: Key) -> dict[str, Any]:
        epoch, index = _split_key(key, len(self))
        g = item_generator(self.seed, epoch, index)
        img, path, skipped = self.images.read(index)
        return {"image": self.transform(img, g), "path": str(path), "skipped": skipped}

    def __repr__(self) -> str:
        return f"ImageFolderDataset({str(self.root)!r}, n={len(self)}, {self.transform})"


def _check_direction(direction: str) -> None:
    if direction not in ("AtoB", "BtoA"):
        raise ConfigError(f"direction must be 'AtoB' or 'BtoA', got {direction!r}")


class UnalignedDataset(Dataset):
    """CycleGAN layout: unpaired ``root/{phase}A`` and ``root/{phase}B``.

    Item ``index`` takes A image ``index % len(A)`` and B image ``index % len(B)`` with
    ``serial_batches``, else a B image drawn at random from (seed, epoch, index), like the
    reference implementation. ``len`` is ``max(len(A), len(B))``. A and B get independent
    crops and flips. With ``direction="BtoA"`` the folders swap roles: ``"A"`` is always the
    source domain of the translation.

    Items: ``{"A", "B": float32 (3, H, W) in [-1, 1], "A_path", "B_path": str,
    "skipped": int}``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        phase: str = "train",
        direction: str = "AtoB",
        load_size: int = 286,
        crop_size: int = 256,
        preprocess: str = "resize_and_crop",
        flip: bool = True,
        seed: int = 0,
        *,
        serial_batches: bool = False,
        recursive: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        interpolation: str = "bicubic",
    ) -> None:
        _check_direction(direction)
        self.transform = _transform(preprocess, load_size, crop_size, flip, interpolation)
        self.root = Path(root)
        self.phase = phase
        self.direction = direction
        self.seed = seed
        self.serial_batches = serial_batches
        src, dst = ("A", "B") if direction == "AtoB" else ("B", "A")
        kw: dict[str, Any] = {"recursive": recursive, "max_pixels": max_pixels}
        self.images_A = ImageList(self.root / f"{phase}{src}", **kw)
        self.images_B = ImageList(self.root / f"{phase}{dst}", **kw)

    def __len__(self) -> int:
        return max(len(self.images_A), len(self.images_B))

    def __getitem__(self, key: Key) -> dict[str, Any]:
        epoch, index = _split_key(key, len(self))
        g = item_generator(self.seed, epoch, index)
        n_b = len(self.images_B)
        if self.serial_batches:
            index_b = index % n_b
        else:
            index_b = int(torch.randint(0, n_b, (1,), generator=g))
        img_a, path_a, skip_a = self.images_A.read(index % len(self.images_A))
        img_b, path_b, skip_b = self.images_B.read(index_b)
        return {
            "A": self.transform(img_a, g),
            "B": self.transform(img_b, g),
            "A_path": str(path_a),
            "B_path": str(path_b),
            "skipped": skip_a + skip_b,
        }

    def __repr__(self) -> str:
        return (
            f"UnalignedDataset({str(self.root)!r}, phase={self.phase!r}, "
            f"direction={self.direction!r}, n_A={len(self.images_A)}, "
            f"n_B={len(self.images_B)}, {self.transform})"
        )


def _check_splittable(path: Path, img: Image.Image) -> None:
    if img.width < 2:
        raise UnreadableImage(path, f"{img.width}x{img.height} is too narrow to split into A|B")


class AlignedDataset(Dataset):
    """pix2pix layout: ``root/{phase}/*`` images holding A (left half) | B (right half).

    Both halves get the same resize, crop and flip. ``direction="BtoA"`` swaps them.
    An odd width drops the last column.

    Items: ``{"A", "B": float32 (3, H, W) in [-1, 1], "A_path", "B_path": str (the same
    file), "skipped": int}``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        phase: str = "train",
        direction: str = "AtoB",
        load_size: int = 286,
        crop_size: int = 256,
        preprocess: str = "resize_and_crop",
        flip: bool = True,
        seed: int = 0,
        *,
        recursive: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        interpolation: str = "bicubic",
    ) -> None:
        _check_direction(direction)
        self.transform = _transform(preprocess, load_size, crop_size, flip, interpolation)
        self.root = Path(root)
        self.phase = phase
        self.direction = direction
        self.seed = seed
        self.images = ImageList(
            self.root / phase,
            recursive=recursive,
            max_pixels=max_pixels,
            check=_check_splittable,
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: Key) -> dict[str, Any]:
        epoch, index = _split_key(key, len(self))
        g = item_generator(self.seed, epoch, index)
        img, path, skipped = self.images.read(index)
        w2, h = img.width // 2, img.height
        left, right = img.crop((0, 0, w2, h)), img.crop((w2, 0, 2 * w2, h))
        if self.direction == "BtoA":
            left, right = right, left
        params = self.transform.get_params(left.size, g)
        return {
            "A": self.transform.apply(left, params),
            "B": self.transform.apply(right, params),
            "A_path": str(path),
            "B_path": str(path),
            "skipped": skipped,
        }

    def __repr__(self) -> str:
        return (
            f"AlignedDataset({str(self.root)!r}, phase={self.phase!r}, "
            f"direction={self.direction!r}, n={len(self)}, {self.transform})"
        )


def detect_layout(root: str | os.PathLike, phase: str = "train") -> str:
    """ "unaligned" if ``root/{phase}A`` or ``root/{phase}B`` exists, else "aligned" if
    ``root/{phase}`` exists; :class:`~spap.errors.DataError` otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    if (root / f"{phase}A").is_dir() or (root / f"{phase}B").is_dir():
        return "unaligned"
    if (root / phase).is_dir():
        return "aligned"
    raise DataError(
        f"cannot tell the layout of {root}: expected {phase}A/ and {phase}B/ (unaligned, "
        f"CycleGAN) or {phase}/ (aligned A|B images)"
    )


def build_dataset(
    layout: str, root: str | os.PathLike, phase: str = "train", **kwargs: Any
) -> Dataset:
    """Build the dataset for ``layout`` ("auto", "unaligned", "aligned" or "folder").

    "auto" picks "unaligned" when ``root/{phase}A`` exists (so the folder written by
    :func:`spap.data.scenes.write_scenes`, which has both layouts, opens unaligned), else
    "aligned" when ``root/{phase}`` exists. "folder" reads every image below ``root``
    (``phase`` is ignored). ``kwargs`` go to the dataset class.
    """
    if layout not in DATASET_LAYOUTS:
        raise ConfigError(
            f"data layout: unknown option {layout!r}; choose one of {', '.join(DATASET_LAYOUTS)}"
        )
    if layout == "folder":
        return ImageFolderDataset(root, **kwargs)
    if layout == "auto":
        layout = detect_layout(root, phase)
    if layout == "unaligned":
        return UnalignedDataset(root, phase, **kwargs)
    return AlignedDataset(root, phase, **kwargs)
