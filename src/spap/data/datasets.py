"""Datasets for the three folder layouts: image folder, unaligned A/B, aligned A|B.

Every dataset takes an ``int`` index (epoch 0) or an ``(epoch, index)`` pair (as yielded by
:class:`~spap.data.sampler.EpochSampler`) and draws all of an item's randomness (crop, flip,
the unaligned B image) from :func:`~spap.data.sampler.item_generator` ``(seed, epoch,
index)``: results do not depend on the number of DataLoader workers, on global RNG state,
or on a resume.

Channels and precision: each dataset reads its files with the channel count it is given
(``channels``; ``channels_A`` / ``channels_B``, the reference's ``input_nc`` / ``output_nc``)
through :func:`~spap.data.io.read_pixels`, keeping 16-bit and float data, and scales them to
[-1, 1] by ``value_range`` (:func:`~spap.data.transforms.value_bounds`). Folders are listed
with ``.npy`` arrays included.

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

import numpy as np
import torch
from torch.utils.data import Dataset

from spap.data.io import DEFAULT_MAX_PIXELS, UnreadableImage, read_pixels, scan_images, to_channels
from spap.data.sampler import item_generator
from spap.data.transforms import ImageTransform, check_values
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
        max_pixels: decompression-bomb limit passed to :func:`~spap.data.io.read_pixels`.
        channels: channel count every image is read with (files that cannot give it are
            unusable).
        value_range: as :class:`~spap.data.transforms.ImageTransform`; float files outside
            0..1 under ``"auto"`` are unusable.

    Images are (H, W, channels) arrays of :func:`~spap.data.io.read_pixels`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        recursive: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        check: Callable[[Path, np.ndarray], None] | None = None,
        channels: int = 3,
        value_range: Any = "auto",
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder not found: {self.root}")
        self.files, self.excluded = scan_images(self.root, recursive, arrays=True)
        self.max_pixels = max_pixels
        self.check = check
        self.channels = channels
        self.value_range = value_range
        self._bad: set[int] = set()
        for path, reason in self.excluded:
            log.warning("skipping %s: %s", path, reason)
        if not self.files:
            extra = f" ({len(self.excluded)} unusable files excluded)" if self.excluded else ""
            raise DataError(f"no image files in {self.root}{extra}")
        self._probe()
        total, usable = len(self.files) + len(self.excluded), len(self.files) - len(self._bad)
        log.info(
            "%s: %d usable of %d image files%s",
            self.root,
            usable,
            total,
            "" if usable == total else " (the others are skipped, each with a warning)",
        )

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

    def _load(self, i: int) -> np.ndarray:
        img = read_pixels(self.files[i], self.channels, max_pixels=self.max_pixels)
        check_values(self.files[i], img, self.value_range)
        if self.check is not None:
            self.check(self.files[i], img)
        return img

    def _mark_bad(self, i: int, exc: UnreadableImage) -> None:
        if i not in self._bad:
            self._bad.add(i)
            log.warning("skipping unreadable image %s: %s", self.files[i], exc.reason)

    def read(self, index: int) -> tuple[np.ndarray, Path, int]:
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


def _transform(
    preprocess: str,
    load_size: int,
    crop_size: int,
    flip: bool,
    interpolation: str,
    value_range: Any = "auto",
) -> ImageTransform:
    return ImageTransform(preprocess, load_size, crop_size, flip, interpolation, value_range)


def _check_channels(**counts: int) -> None:
    for key, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")


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
        channels: channels of the images (1 = grayscale, 3 = RGB, other counts from
            multi-band files or ``.npy`` arrays).
        value_range: ``"auto"`` or ``(lo, hi)``, see :func:`~spap.data.transforms.value_bounds`.

    Items: ``{"image": float32 (channels, H, W) in [-1, 1], "path": str, "skipped": int}``.
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
        channels: int = 3,
        value_range: Any = "auto",
    ) -> None:
        _check_channels(channels=channels)
        self.transform = _transform(
            preprocess, load_size or size, size, flip, interpolation, value_range
        )
        self.seed = seed
        self.images = ImageList(
            root,
            recursive=recursive,
            max_pixels=max_pixels,
            channels=channels,
            value_range=value_range,
        )
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
    source domain of the translation. ``channels_A`` / ``channels_B`` are the channel
    counts of the source and target domains (the reference's ``input_nc`` / ``output_nc``:
    with ``BtoA``, ``channels_A`` is that of ``{phase}B/``).

    Items: ``{"A": float32 (channels_A, H, W), "B": float32 (channels_B, H, W), in [-1, 1];
    "A_path", "B_path": str, "skipped": int}``.
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
        channels_A: int = 3,
        channels_B: int = 3,
        value_range: Any = "auto",
    ) -> None:
        _check_direction(direction)
        _check_channels(channels_A=channels_A, channels_B=channels_B)
        self.transform = _transform(
            preprocess, load_size, crop_size, flip, interpolation, value_range
        )
        self.root = Path(root)
        self.phase = phase
        self.direction = direction
        self.seed = seed
        self.serial_batches = serial_batches
        src, dst = ("A", "B") if direction == "AtoB" else ("B", "A")
        kw: dict[str, Any] = {
            "recursive": recursive,
            "max_pixels": max_pixels,
            "value_range": value_range,
        }
        self.images_A = ImageList(self.root / f"{phase}{src}", channels=channels_A, **kw)
        self.images_B = ImageList(self.root / f"{phase}{dst}", channels=channels_B, **kw)

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


def _check_splittable(path: Path, img: np.ndarray) -> None:
    h, w = img.shape[:2]
    if w < 2:
        raise UnreadableImage(path, f"{w}x{h} is too narrow to split into A|B")


class AlignedDataset(Dataset):
    """pix2pix layout: ``root/{phase}/*`` images holding A (left half) | B (right half).

    Both halves get the same resize, crop and flip. ``direction="BtoA"`` swaps them.
    An odd width drops the last column. One file holds both domains, so ``channels_A`` and
    ``channels_B`` (after the swap) are equal, or 1 and 3 (the file is read as RGB and the
    one-channel half made grayscale, as the reference does).

    Items: ``{"A": float32 (channels_A, H, W), "B": float32 (channels_B, H, W), in [-1, 1];
    "A_path", "B_path": str (the same file), "skipped": int}``.
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
        channels_A: int = 3,
        channels_B: int = 3,
        value_range: Any = "auto",
    ) -> None:
        _check_direction(direction)
        _check_channels(channels_A=channels_A, channels_B=channels_B)
        if channels_A != channels_B and {channels_A, channels_B} != {1, 3}:
            raise ConfigError(
                f"aligned A|B images hold both domains in one file: their channel counts must "
                f"be equal, or 1 and 3; got {channels_A} and {channels_B}"
            )
        self.transform = _transform(
            preprocess, load_size, crop_size, flip, interpolation, value_range
        )
        self.root = Path(root)
        self.phase = phase
        self.direction = direction
        self.seed = seed
        self.channels_A, self.channels_B = channels_A, channels_B
        self.images = ImageList(
            self.root / phase,
            recursive=recursive,
            max_pixels=max_pixels,
            check=_check_splittable,
            channels=max(channels_A, channels_B),
            value_range=value_range,
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: Key) -> dict[str, Any]:
        epoch, index = _split_key(key, len(self))
        g = item_generator(self.seed, epoch, index)
        img, path, skipped = self.images.read(index)
        w2 = img.shape[1] // 2
        left, right = img[:, :w2], img[:, w2 : 2 * w2]
        if self.direction == "BtoA":
            left, right = right, left
        left = to_channels(left, self.channels_A, path)
        right = to_channels(right, self.channels_B, path)
        params = self.transform.get_params((w2, img.shape[0]), g)
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
