"""Robust image reading for folders of users' files.

:func:`list_images` finds the candidate files of a dataset folder (deterministic order) and
:func:`read_image` decodes one file fully into an 8-bit RGB (or L) :class:`PIL.Image.Image`,
or raises :class:`UnreadableImage` naming the file and the reason. Conversions:

- grayscale (``L``, ``1``), ``YCbCr``, ``LAB``, ``HSV``, ``CMYK`` (including Adobe JPEGs) ->
  RGB through Pillow's converters;
- 16-bit grayscale (``I;16*``, ``I``) -> 8 bit by ``round(v / 257)`` (full 0..65535 range
  maps to 0..255); 32-bit float (``F``) is taken as 0..1 when its maximum is <= 1, else as
  0..255, and clipped;
- alpha (``RGBA``, ``LA``, ``PA``, ``P`` with a transparency entry) is composited onto a white
  background, so transparent pixels become white rather than arbitrary colours;
- animated images (GIF, APNG, WebP) -> their first frame;
- the EXIF orientation tag is applied (camera photos come out upright).

Truncated files raise instead of being silently half-decoded (Pillow's
``ImageFile.LOAD_TRUNCATED_IMAGES`` is forced off and the pixels are decoded eagerly), and
images with more than ``max_pixels`` pixels are refused before their pixels are decoded
(decompression-bomb guard).
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from spap.errors import DataError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageTooLarge",
    "UnreadableImage",
    "is_image_file",
    "list_images",
    "read_image",
    "scan_images",
]

#: File name suffixes (lower case) considered images.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
)

#: Default decompression-bomb limit of :func:`read_image`: 64 megapixels (an 8000x8000 image).
DEFAULT_MAX_PIXELS: int = 64 * 1024 * 1024

_WHITE = (255, 255, 255)


class UnreadableImage(DataError):
    """A file that cannot be decoded into an image (corrupt, truncated, not an image)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class ImageTooLarge(UnreadableImage):
    """An image whose pixel count exceeds the decompression-bomb limit."""


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def _check(path: Path) -> str | None:
    """``None`` for a candidate image file, else why it is excluded ("" = silently ignored)."""
    if not is_image_file(path.name) or path.name.startswith("."):
        return ""
    try:
        st = path.stat()  # follows symlinks: a broken link raises here
    except OSError as exc:
        return "broken symlink" if path.is_symlink() else f"cannot stat: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return ""
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


def _walk(root: Path) -> Iterable[Path]:
    """All entries below ``root``, following directory links once (no cycles)."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:  # a directory link pointing back up the tree
            dirnames[:] = []
            continue
        seen.add(key)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            yield Path(dirpath) / name


def scan_images(
    root: str | os.PathLike, recursive: bool = True
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Like :func:`list_images`, also returning the excluded image-named files and why.

    The second list holds ``(path, reason)`` for files with an image suffix that cannot be
    images at all (zero bytes, broken symlink), sorted like the first.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    entries = _walk(root) if recursive else root.iterdir()
    files: list[Path] = []
    excluded: list[tuple[Path, str]] = []
    for path in entries:
        reason = _check(path)
        if reason is None:
            files.append(path)
        elif reason:
            excluded.append((path, reason))

    def key(p: Path) -> str:
        return p.relative_to(root).as_posix()

    files.sort(key=key)
    excluded.sort(key=lambda item: key(item[0]))
    return files, excluded


def list_images(root: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``root``, sorted by their path relative to ``root``.

    Skips hidden files (``.name``), files without an image suffix, zero-byte files and broken
    symlinks (their content is never read here; :func:`read_image` decides if they decode).
    Hidden sub-folders are not entered; directory links are followed once (no cycles).
    Raises :class:`~spap.errors.DataError` if ``root`` is not a folder.
    """
    return scan_images(root, recursive)[0]


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":
        arr = arr.astype(np.float64)
        finite = arr[np.isfinite(arr)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        arr = np.nan_to_num(arr * scale, nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    # 16-bit (I;16, I;16B, I;16L) and 32-bit integer (I, as Pillow opens some 16-bit PNG/TIFF)
    arr = arr.astype(np.int64)
    return np.clip((arr * 255 + 32767) // 65535, 0, 255).astype(np.uint8)


def _convert(im: Image.Image, mode: str) -> Image.Image:
    """Decoded image of any Pillow mode -> ``mode`` ("RGB" or "L"), 8 bit, no alpha."""
    if im.mode in ("I", "F") or im.mode.startswith("I;"):
        im = Image.fromarray(_to_uint8(np.asarray(im), im.mode), mode="L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "PA":
        im = im.convert("RGBA")
    elif im.mode == "1":
        im = im.convert("L")
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        im = Image.alpha_composite(background, rgba)
    return im.convert(mode) if im.mode != mode else im


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:  # malformed EXIF must not reject otherwise good pixels
        return im


def read_image(
    path: str | os.PathLike,
    mode: str = "RGB",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode ``path`` fully into an 8-bit image of ``mode`` ("RGB" or "L").

    Args:
        path: the image file.
        mode: "RGB" (default) or "L" (grayscale).
        max_pixels: refuse images with more pixels than this (:class:`ImageTooLarge`) before
            decoding them; ``None`` disables this guard (Pillow's own
            ``Image.MAX_IMAGE_PIXELS`` limit still applies).

    Raises:
        UnreadableImage: the file is missing, empty, truncated, not an image, or too large.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must raise, never half-decode
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if max_pixels is not None and w * h > max_pixels:
                    raise ImageTooLarge(
                        path, f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}"
                    )
                im.load()  # the first frame of an animated file; raises if truncated
                out = _convert(_upright(im), mode)
                if out is im:  # never hand out the image tied to the file being closed
                    out = out.copy()
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(path, f"decompression-bomb guard: {exc}") from exc
    except Exception as exc:  # any decoder failure: corrupt, truncated, unknown format
        raise UnreadableImage(path, f"{type(exc).__name__}: {exc}") from exc
    return out
