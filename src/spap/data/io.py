"""Robust image reading for folders of users' files.

:func:`list_images` finds the candidate files of a dataset folder (deterministic order).
:func:`read_pixels` decodes one file fully into an ``(H, W, C)`` array with the channel
count asked for, keeping the file's precision (uint8, uint16 or float32; 16-bit PNGs of any
colour type through :func:`torchvision.io.decode_png`, ``.npy`` arrays through
:func:`numpy.load` without pickles); :func:`read_image` decodes into an 8-bit RGB (or L)
:class:`PIL.Image.Image`. Both raise :class:`UnreadableImage` naming the file and the reason.
Conversions of :func:`read_image`:

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

:func:`read_pixels` converts the same way for 1 and 3 channels (alpha composited onto
white, grayscale by Pillow's luma ``(19595 R + 38470 G + 7471 B + 32768) >> 16``, also at
16 bit), keeps 16-bit and float data as they are, and for any other channel count takes the
file's own bands (RGBA, CMYK, gray + alpha, or an array's channels): a file with another
number of channels is refused. Files Pillow would silently read at 8 bits although they
hold more (16-bit RGB TIFF and PPM) are refused with a hint instead.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from spap.errors import DataError

try:  # torchvision >= 0.29 deprecates its image codecs (for TorchCodec) but still has them
    from torchvision.io import ImageReadMode, decode_png
except ImportError:  # pragma: no cover - a torchvision without them
    decode_png = None

__all__ = [
    "ARRAY_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageTooLarge",
    "UnreadableImage",
    "is_image_file",
    "list_images",
    "read_image",
    "read_pixels",
    "scan_images",
    "to_channels",
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

#: File name suffixes of arrays (``numpy.save`` files), listed with ``arrays=True``.
ARRAY_EXTENSIONS: tuple[str, ...] = (".npy",)

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


def is_image_file(path: str | os.PathLike, arrays: bool = False) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive), or with
    ``arrays`` one of :data:`ARRAY_EXTENSIONS`."""
    suffixes = IMAGE_EXTENSIONS + ARRAY_EXTENSIONS if arrays else IMAGE_EXTENSIONS
    return os.fspath(path).lower().endswith(suffixes)


def _check(path: Path, arrays: bool = False) -> str | None:
    """``None`` for a candidate image file, else why it is excluded ("" = silently ignored)."""
    if not is_image_file(path.name, arrays) or path.name.startswith("."):
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
    root: str | os.PathLike, recursive: bool = True, *, arrays: bool = False
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
        reason = _check(path, arrays)
        if reason is None:
            files.append(path)
        elif reason:
            excluded.append((path, reason))

    def key(p: Path) -> str:
        return p.relative_to(root).as_posix()

    files.sort(key=key)
    excluded.sort(key=lambda item: key(item[0]))
    return files, excluded


def list_images(
    root: str | os.PathLike, recursive: bool = True, *, arrays: bool = False
) -> list[Path]:
    """Image files under ``root`` (and ``.npy`` arrays with ``arrays``), sorted by their
    path relative to ``root``.

    Skips hidden files (``.name``), files without an image suffix, zero-byte files and broken
    symlinks (their content is never read here; :func:`read_image` decides if they decode).
    Hidden sub-folders are not entered; directory links are followed once (no cycles).
    Raises :class:`~spap.errors.DataError` if ``root`` is not a folder.
    """
    return scan_images(root, recursive, arrays=arrays)[0]


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
    im = _unpacked(im)
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        im = Image.alpha_composite(background, rgba)
    return im.convert(mode) if im.mode != mode else im


def _unpacked(im: Image.Image) -> Image.Image:
    """Palette images (``P``, ``PA``) as RGB or RGBA (RGBA where the palette has a
    transparency entry), bilevel ones (``1``) as ``L``; other modes as they are."""
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode == "PA":
        return im.convert("RGBA")
    if im.mode == "1":
        return im.convert("L")
    return im


#: The EXIF orientation tag.
_ORIENTATION = 0x0112


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF (or XMP) orientation; a broken EXIF block leaves the image as stored.
    An upright image is returned as it is (``exif_transpose`` would copy every pixel)."""
    try:
        if im.getexif().get(_ORIENTATION, 1) in (None, 1):
            return im
        return ImageOps.exif_transpose(im) or im
    except Exception:  # malformed EXIF must not reject otherwise good pixels
        return im


def _check_pixels(path: str | os.PathLike, w: int, h: int, max_pixels: int | None) -> None:
    """Refuse a ``w`` x ``h`` image over ``max_pixels`` (:class:`ImageTooLarge`)."""
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLarge(path, f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")


@contextlib.contextmanager
def _opened(path: str | os.PathLike, max_pixels: int | None) -> Iterator[Image.Image]:
    """``Image.open(path)``, for decoding in the ``with`` body: a truncated file raises
    instead of half-decoding, an image over ``max_pixels`` or Pillow's decompression-bomb
    limit raises :class:`ImageTooLarge` before its pixels are decoded, and any other
    failure, the body's included (corrupt file, unknown format), becomes
    :class:`UnreadableImage` naming the file."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must raise, never half-decode
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_pixels(path, *im.size, max_pixels)
                yield im
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(path, f"decompression-bomb guard: {exc}") from exc
    except Exception as exc:  # any decoder failure: corrupt, truncated, unknown format
        raise UnreadableImage(path, f"{type(exc).__name__}: {exc}") from exc


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
    with _opened(path, max_pixels) as im:
        im.load()  # the first frame of an animated file; raises if truncated
        out = _convert(_upright(im), mode)
        if out is im and getattr(im, "map", None) is not None:
            out = out.copy()  # pixels memory-mapped from the file: detach them
    return out


# ----------------------------------------------------------------------------- full precision

#: Pillow modes holding more than 8 bits per pixel (one band each).
_DEEP_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")
#: Raw modes of 16-bit PNGs Pillow would reduce to 8 bits: decoded by torchvision instead.
_PNG16_RAWMODES = ("RGB;16B", "RGBA;16B", "LA;16B")


def _rawmode(im: Image.Image) -> str:
    if not im.tile:
        return ""
    args = im.tile[0].args
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return ""


def _reduced_by_pillow(im: Image.Image) -> str | None:
    """Why Pillow would read ``im`` at 8 bits although the file holds more, or None."""
    if im.mode in _DEEP_MODES:
        return None
    if im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258)
        bits = max(bits) if isinstance(bits, tuple) and bits else bits
        if isinstance(bits, int) and bits > 8:
            return f"a {bits}-bit {im.mode} TIFF"
    if im.format == "PPM" and im.tile:
        args = im.tile[0].args
        maxval = args[1] if isinstance(args, tuple) and len(args) > 1 else None
        if isinstance(maxval, int) and maxval > 255:
            return f"a 16-bit {im.mode} PPM"
    if ";16" in _rawmode(im):
        return f"a 16-bit {im.mode} {im.format}"
    return None


def _orient(arr: np.ndarray, orientation: int | None) -> np.ndarray:
    """Apply an EXIF orientation (as :func:`PIL.ImageOps.exif_transpose`) to (H, W, C)."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr.transpose(1, 0, 2)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def _decode_png16(path: str | os.PathLike) -> np.ndarray:
    """A 16-bit colour / gray + alpha PNG, which Pillow reads only at 8 bits, by libpng
    through :func:`torchvision.io.decode_png` (uint16, or int32 before torchvision 0.18)."""
    if decode_png is None:  # pragma: no cover - a torchvision without image codecs
        raise UnreadableImage(
            path, "a 16-bit colour PNG needs torchvision's PNG decoder, absent from this install"
        )
    data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        t = decode_png(data, mode=ImageReadMode.UNCHANGED)
    if t.dtype != torch.uint16:
        t = t.to(torch.int32)
    return t.permute(1, 2, 0).contiguous().numpy().astype(np.uint16)


def _pillow_pixels(im: Image.Image, channels: int) -> np.ndarray:
    """(H, W, C) array of a decoded Pillow image: 8-bit images converted to ``channels``
    (1 or 3) like :func:`read_image`, else their own bands; deep modes as one band."""
    if im.mode in _DEEP_MODES:
        arr = np.asarray(im)
        if im.mode == "F":
            arr = arr.astype(np.float32)
        elif im.mode == "I":  # Pillow opens some 16-bit PNG/TIFF/PGM files as 32-bit I
            arr = np.clip(arr, 0, 65535).astype(np.uint16)
        else:
            arr = arr.astype(np.uint16)
        return arr[..., None]
    if channels in (1, 3):
        arr = np.asarray(_convert(im, "L" if channels == 1 else "RGB"))
    else:
        arr = np.asarray(_unpacked(im))
    return arr[..., None] if arr.ndim == 2 else arr


def _read_npy(path: str | os.PathLike, channels: int, max_pixels: int | None) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # truncated, not an array file, pickled objects
        raise UnreadableImage(path, f"not a readable .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim not in (2, 3):
        shape = getattr(arr, "shape", "?")
        raise UnreadableImage(
            path, f"expected an array (H, W), (C, H, W) or (H, W, C), got {shape}"
        )
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.shape[2] != channels and (
        arr.shape[0] == channels or (arr.shape[0] == 1 and arr.shape[2] != 1)
    ):
        arr = arr.transpose(1, 2, 0)  # channels first
    h, w, c = arr.shape
    _check_pixels(path, w, h, max_pixels)
    kind = arr.dtype.kind
    if kind not in "buif":
        raise UnreadableImage(path, f"unsupported array dtype {arr.dtype}")
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        out = np.array(arr, dtype=arr.dtype.newbyteorder("="))
    else:
        out = np.array(arr, dtype=np.float32)
        if not np.isfinite(out).all():
            raise UnreadableImage(path, "the array holds NaN or infinite values")
    if c != channels and not (c == 1 and channels == 3):
        raise UnreadableImage(
            path, f"an array of shape {tuple(arr.shape)} has {c} channels, {channels} expected"
        )
    return out


def _white(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def _composite_on_white(arr: np.ndarray) -> np.ndarray:
    """(H, W, 2|4) with alpha last -> (H, W, 1|3) composited onto white."""
    white = _white(arr.dtype)
    color = arr[..., :-1].astype(np.float64)
    alpha = arr[..., -1:].astype(np.float64) / white
    out = color * alpha + white * (1.0 - alpha)
    if arr.dtype.kind in "ui":
        return np.clip(np.rint(out), 0, white).astype(arr.dtype)
    return out.astype(arr.dtype)


def _luma(arr: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W, 1) with Pillow's RGB -> L weights (exactly Pillow's at 8 bit)."""
    if arr.dtype.kind in "ui":
        r, g, b = (arr[..., i].astype(np.int64) for i in range(3))
        out = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
        return out.astype(arr.dtype)[..., None]
    w = np.array([19595, 38470, 7471], dtype=np.float64) / 65536.0
    return (arr.astype(np.float64) @ w).astype(arr.dtype)[..., None]


def to_channels(
    arr: np.ndarray, channels: int, path: str | os.PathLike = "", *, alpha: bool = True
) -> np.ndarray:
    """Convert an ``(H, W, C)`` array to ``channels`` channels, or raise
    :class:`UnreadableImage`.

    For 1 and 3 channels: a last alpha band (C = 2 or 4, with ``alpha``) is composited onto
    white, gray is repeated to RGB and RGB becomes gray by Pillow's luma weights. Any other
    count must match C exactly.
    """
    c = arr.shape[2]
    if c == channels:
        return arr
    if channels in (1, 3):
        if alpha and c in (2, 4):
            arr = _composite_on_white(arr)
            c = arr.shape[2]
        if c == channels:
            return arr
        if channels == 3 and c == 1:
            return np.repeat(arr, 3, axis=2)
        if channels == 1 and c == 3:
            return _luma(arr)
    raise UnreadableImage(path, f"has {c} channels, {channels} expected")


def read_pixels(
    path: str | os.PathLike,
    channels: int = 3,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode ``path`` fully into an ``(H, W, channels)`` array keeping its precision.

    The dtype follows the file: uint8 (8-bit images), uint16 (16-bit PNG of any colour
    type, 16-bit gray TIFF / PGM, 32-bit integer images clipped to 0..65535), float32
    (float TIFFs, float ``.npy`` arrays and integer arrays other than uint8 / uint16).
    Channels as :func:`to_channels` (``.npy`` arrays: no alpha; ``(H, W)``, ``(C, H, W)``
    or ``(H, W, C)``, channels-last when the last axis has ``channels`` entries). The EXIF
    orientation is applied, animated files give their first frame.

    Raises:
        UnreadableImage: missing, empty, truncated, not an image, too large, another
            channel count, NaN in a float array, or more bits than Pillow can read (a
            16-bit RGB TIFF: save it as a 16-bit PNG or a ``.npy`` array).
    """
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    if os.fspath(path).lower().endswith(ARRAY_EXTENSIONS):
        return to_channels(_read_npy(path, channels, max_pixels), channels, path, alpha=False)
    with _opened(path, max_pixels) as im:
        if im.format == "PNG" and _rawmode(im) in _PNG16_RAWMODES:
            arr = _orient(_decode_png16(path), _orientation(im))
        else:
            reduced = _reduced_by_pillow(im)
            if reduced:
                raise UnreadableImage(
                    path,
                    f"{reduced}: Pillow reads only 8 of its bits per channel; save it as a "
                    "16-bit PNG or a .npy array",
                )
            im.load()
            arr = _pillow_pixels(_upright(im), channels)
    if arr.dtype == np.float32 and not np.isfinite(arr).all():
        raise UnreadableImage(path, "the image holds NaN or infinite values")
    return np.ascontiguousarray(to_channels(arr, channels, path))


def _orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(_ORIENTATION)
    except Exception:  # malformed EXIF: keep the image as stored
        return None
