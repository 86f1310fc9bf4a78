"""Translating images with a trained CycleGAN: tensors and PIL images in Python, folders on disk.

>>> t = Translator.from_checkpoint("runs/facades_spap")        # or a step_*.pt / .safetensors
>>> photo = t.translate(pil_image, direction="AtoB")           # PIL in -> PIL out
>>> array = t.translate(np.asarray(pil_image), "AtoB")          # (H, W, 3) uint8 in and out
>>> out, maps = t.translate_with_attention(tensor)             # maps: {unit: (N, 1, H, W)}
>>> t.translate_folder("testA/", "out/", attention=True)       # one PNG per input image
>>> big = t.translate(huge_pil_image, tile=1024)                 # bounded memory, no seams
>>> t = Translator.from_pretrained("user/facades-spap")         # a Hugging Face folder / Hub id

The generators are rebuilt from the configuration stored in the checkpoint. ``"AtoB"``
means from the checkpoint's domain A (``trainA`` / the left half of aligned images) to
domain B, whatever ``data.direction`` the run used. Any image size works: images are
padded (reflection) to a multiple of 4 and the output is cropped back.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from spap.data.io import UnreadableImage, read_pixels, scan_images
from spap.data.transforms import (
    BIT_DEPTHS,
    check_value_range,
    check_values,
    save_image,
    tensor_to_pil,
    to_tensor_image,
)
from spap.devices import pick_device
from spap.errors import DataError, SpapError
from spap.files import write_error_reason
from spap.inference.loading import load_generators
from spap.inference.pretrained import (
    PretrainedResult,
    load_pretrained,
    push_to_hub,
    save_pretrained,
)
from spap.inference.runtime import choose_runtime, onnx_generator
from spap.inference.tiling import translate_tiled, write_array
from spap.layers import attention_units, record_attention
from spap.viz.attention import attention_maps, overlay

__all__ = ["FolderResult", "Translator", "pad_to_multiple"]

log = logging.getLogger(__name__)

DIRECTIONS = ("AtoB", "BtoA")


# ----------------------------------------------------------------------------- padding


def pad_to_multiple(
    x: Tensor, multiple: int = 4, minimum: int = 8
) -> tuple[Tensor, tuple[int, int]]:
    """Pad (N, C, H, W) at the bottom/right to multiples of ``multiple``, at least
    ``minimum`` (the generator's reflection pads need 2x2 features after two
    downsamplings); reflection, or edge replication where the image is too small to reflect.
    Returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    th = max(minimum, h + (-h) % multiple)
    tw = max(minimum, w + (-w) % multiple)
    ph, pw = th - h, tw - w
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


# ----------------------------------------------------------------------------- PIL <-> tensor


def _pil_to_tensor(img: Image.Image, channels: int = 3) -> Tensor:
    return to_tensor_image(_pil_mode(img, channels))


def _pil_mode(img: Image.Image, channels: int = 3) -> Image.Image:
    """``img`` as L (one channel) or RGB, alpha composited onto white."""
    mode = "L" if channels == 1 else "RGB"
    if img.mode != mode:
        if "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba)
        img = img.convert(mode)
    return img


def _in_channels(g: nn.Module) -> int:
    """Input channel count of a generator (``input_nc``, else its first convolution's)."""
    n = getattr(g, "input_nc", None)
    if isinstance(n, int):
        return n
    for m in g.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def _array_to_tensor(a: np.ndarray) -> tuple[Tensor, bool]:
    """(H, W, C) or (N, H, W, C) array, uint8 or float in [0, 1] -> (N, C, H, W) in [-1, 1]
    (float32), and whether it was one image."""
    if a.ndim not in (3, 4) or a.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected a NumPy array (H, W, C) or (N, H, W, C) with C 1 or 3, got shape "
            f"{a.shape} (a (C, H, W) array: array.transpose(1, 2, 0))"
        )
    if a.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(a)).float().div_(127.5).sub_(1.0)
    elif np.issubdtype(a.dtype, np.floating):
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"a float array must hold values in [0, 1], got [{lo:g}, {hi:g}] (for [-1, 1] "
                "pass a tensor; for 0..255 pass uint8)"
            )
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).mul(2.0).sub_(1.0)
    else:
        raise TypeError(f"expected a uint8 or float NumPy array, got dtype {a.dtype}")
    single = a.ndim == 3
    t = t.permute(2, 0, 1) if single else t.permute(0, 3, 1, 2)
    return (t.unsqueeze(0) if single else t), single


def _tensor_to_array(y: Tensor, dtype: np.dtype, single: bool) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) or (H, W, C) array of ``dtype`` (uint8:
    rounded like :func:`tensor_to_pil`; float: in [0, 1])."""
    y = y.detach().float().cpu().clamp(-1.0, 1.0).add(1.0)
    if dtype == np.uint8:
        a = y.mul_(127.5).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    else:
        a = y.div_(2.0).permute(0, 2, 3, 1).numpy().astype(dtype)
    return a[0] if single else a


# ----------------------------------------------------------------------------- folders


@dataclass
class FolderResult:
    """What :meth:`Translator.translate_folder` wrote."""

    output: Path
    written: int = 0
    attention_written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _output_names(files: list[Path], root: Path, suffix: str = ".png") -> list[Path]:
    """Relative output name per input: same path with ``suffix``; clashes (``a.jpg`` and
    ``a.png``) keep the old suffix in the name (``a_jpg.png``)."""
    rel = [f.relative_to(root) if f != root else Path(f.name) for f in files]
    plain = [r.with_suffix(suffix) for r in rel]
    counts: dict[Path, int] = {}
    for p in plain:
        counts[p] = counts.get(p, 0) + 1
    out = []
    for r, p in zip(rel, plain):
        if counts[p] > 1:
            p = r.with_name(f"{r.stem}_{r.suffix.lstrip('.').lower()}{suffix}")
        out.append(_fit_name(p))
    return out


#: Longest output file name (bytes): file systems accept 255, and the atomic writer's
#: temporary file (``.<name>.<8 random>.tmp``) needs 14 more.
_NAME_MAX = 255 - 14


def _fit_name(p: Path) -> Path:
    """``p`` with a file name of at most :data:`_NAME_MAX` bytes: a longer one (a clash
    suffix added to an already long name) keeps its suffix and the start of its stem, plus
    ``~`` and 8 hex digits of the full name's SHA-1, so it stays unique and the same on
    every run."""
    name = p.name
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= _NAME_MAX:
        return p
    suffix = p.suffix.encode("utf-8", "surrogateescape")
    tag = "~" + hashlib.sha1(raw).hexdigest()[:8]
    keep = _NAME_MAX - len(suffix) - len(tag)
    stem = raw[: len(raw) - len(suffix)][:keep].decode("utf-8", "ignore")
    return p.with_name(stem + tag + p.suffix)


def _image_size(path: Path, half: str | None = None) -> tuple[int, int] | None:
    """(H, W) from the file header (EXIF rotation applied), or None if unreadable."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):
                w, h = h, w
            return h, (w // 2 if half else w)
    except Exception:
        return None


class _Files(torch.utils.data.Dataset):
    """Decodes images in loader workers; an unreadable file yields its error instead.
    Images are read with ``channels`` channels at full precision and scaled to [-1, 1] by
    ``value_range`` (as the training data: :func:`spap.data.transforms.to_tensor_image`)."""

    def __init__(
        self,
        files: list[Path],
        half: str | None = None,
        channels: int = 3,
        value_range: Any = "auto",
    ) -> None:
        self.files = files
        self.half = half
        self.channels = channels
        self.value_range = value_range

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            img = read_pixels(self.files[i], self.channels)
            check_values(self.files[i], img, self.value_range)
        except UnreadableImage as exc:
            return {"index": i, "error": exc.reason}
        if self.half is not None:
            h, w = img.shape[:2]
            w2 = w // 2
            if w2 < 1:
                return {"index": i, "error": f"{w}x{h} is too narrow to split"}
            img = img[:, :w2] if self.half == "A" else img[:, w2 : 2 * w2]
        return {"index": i, "image": to_tensor_image(img, self.value_range)}


def _size_batches(sizes: list[tuple[int, int] | None], batch_size: int) -> list[list[int]]:
    groups: dict[Any, list[int]] = {}
    for i, s in enumerate(sizes):
        groups.setdefault(s, []).append(i)
    batches = []
    for idx in groups.values():
        batches += [idx[j : j + batch_size] for j in range(0, len(idx), batch_size)]
    batches.sort(key=lambda b: b[0])  # roughly input order
    return batches


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


# ----------------------------------------------------------------------------- translator


class Translator:
    """Generators of a trained CycleGAN, ready for inference (eval mode, no gradients).

    Args:
        generators: ``{"AtoB": G_A, "BtoA": G_B}`` (either may be missing).
        device: where to run (``auto``: CUDA when available).
        info: what the file said besides the weights (``step``, ``crop_size``).
        source: the file the generators came from (shown by ``repr``; ONNX exports are
            cached beside it).
        runtime: ``"torch"`` (default) or ``"onnxruntime"``: each generator exported once
            and run by ONNX Runtime on the CPU (:mod:`spap.inference.runtime`); PyTorch
            where ONNX Runtime is not installed, and for attention maps.

    The generators are used as given (moved to ``device``, eval mode, no gradients): nothing
    rewrites or converts a module passed in.
    """

    def __init__(
        self,
        generators: Mapping[str, nn.Module],
        device: str | torch.device = "cpu",
        *,
        info: Mapping[str, Any] | None = None,
        source: str = "",
        runtime: str = "torch",
    ) -> None:
        self.runtime = choose_runtime(runtime, device)
        self.device = pick_device("cpu" if self.runtime == "onnxruntime" else device)
        self._engines: dict[str, Callable[[Tensor], Tensor]] = {}
        self._attention_noted = False
        self.generators = {d: g.to(self.device).eval() for d, g in generators.items()}
        for g in self.generators.values():
            g.requires_grad_(False)
        self.info = dict(info or {})
        self.source = source

    def __repr__(self) -> str:
        def describe(g: nn.Module) -> str:
            units = sum(1 for _ in _units(g))
            n = sum(p.numel() for p in g.parameters())
            return f"{type(g).__name__}({n / 1e6:.2f}M parameters, {units} attention units)"

        gens = ", ".join(f"{d}: {describe(g)}" for d, g in self.generators.items())
        src = f", source={self.source!r}" if self.source else ""
        rt = f", runtime={self.runtime}" if self.runtime != "torch" else ""
        return f"Translator({gens}; device={self.device}{rt}{src})"

    # -- construction
    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device = "auto", runtime: str = "torch"
    ) -> Translator:
        """From a CycleGAN checkpoint file, a run folder (its latest checkpoint) or a
        ``.safetensors`` file written by ``spap export --format safetensors``; ``runtime``
        as for the constructor."""
        loaded = load_generators(path, kind="cyclegan")
        return cls.from_loaded(loaded, device, runtime)

    @classmethod
    def from_loaded(
        cls, loaded: Any, device: str | torch.device = "auto", runtime: str = "torch"
    ) -> Translator:
        """From what :func:`spap.inference.loading.load_generators` (or
        :func:`~spap.inference.pretrained.load_pretrained`) returned for a CycleGAN."""
        return cls(
            loaded.generators, device, info=loaded.info, source=loaded.source, runtime=runtime
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        device: str | torch.device = "auto",
        runtime: str = "torch",
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        token: str | bool | None = None,
        local_files_only: bool = False,
    ) -> Translator:
        """From a folder written by :meth:`save_pretrained` (or any file
        :meth:`from_checkpoint` takes), or from a Hugging Face Hub repository ``user/name``
        (``hf://user/name``; downloaded with ``huggingface_hub.snapshot_download``, the
        keywords from ``revision`` on are its own): :func:`spap.inference.pretrained.load_pretrained`.
        ``runtime`` as for the constructor."""
        loaded = load_pretrained(
            pretrained_model_name_or_path,
            kind="cyclegan",
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            local_files_only=local_files_only,
        )
        return cls.from_loaded(loaded, device, runtime)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> PretrainedResult:
        """Write the generators in the Hugging Face layout (``config.json``,
        ``model.safetensors``, ``README.md`` model card, sample and attention grids); see
        :func:`spap.inference.pretrained.save_pretrained` for ``kwargs``."""
        return save_pretrained(self, save_directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload the generators to the Hub repository ``repo_id`` (``user/name``, created if
        needed) in the Hugging Face layout; returns the commit URL. See
        :func:`spap.inference.pretrained.push_to_hub` for ``kwargs`` (``private``, ``token``,
        ``commit_message``, and those of :meth:`save_pretrained`)."""
        return push_to_hub(self, repo_id, **kwargs)

    # -- tensors and PIL images
    def generator(self, direction: str = "AtoB") -> nn.Module:
        """The generator translating in ``direction`` ("AtoB" or "BtoA")."""
        if direction not in DIRECTIONS:
            raise SpapError(f"direction must be AtoB or BtoA, got {direction!r}")
        if direction not in self.generators:
            raise SpapError(f"this model only translates {', '.join(self.generators)}")
        return self.generators[direction]

    def _prepare(self, x: Tensor | Image.Image, direction: str) -> tuple[Tensor, bool, bool]:
        is_pil = isinstance(x, Image.Image)
        t = _pil_to_tensor(x, _in_channels(self.generator(direction))) if is_pil else x
        if not isinstance(t, Tensor):
            raise TypeError(
                f"expected a tensor, a PIL image or a NumPy array, got {type(x).__name__}"
            )
        single = t.dim() == 3
        if single:
            t = t.unsqueeze(0)
        if t.dim() != 4:
            raise ValueError(f"expected (C, H, W) or (N, C, H, W), got {tuple(t.shape)}")
        return t, single, is_pil

    @torch.no_grad()
    def _run(self, x: Tensor, direction: str, attention: bool) -> tuple[Tensor, dict[str, Tensor]]:
        g = self.generator(direction)
        x = x.to(self.device, torch.float32)
        padded, (h, w) = pad_to_multiple(x, 4)
        if attention:
            if self.runtime != "torch" and not self._attention_noted:
                log.info("attention maps come from PyTorch: ONNX Runtime does not expose them")
                self._attention_noted = True
            with record_attention(g) as raw:
                y = g(padded)
            maps = attention_maps(raw, tuple(padded.shape[-2:]))
            full = {}
            for k, m in maps.items():
                # maps cover the padded image: bring them to its size, then crop like y
                m = F.interpolate(m, size=padded.shape[-2:], mode="bilinear", align_corners=False)
                full[k] = m[..., :h, :w].clamp(0, 1)
            return y[..., :h, :w], full
        return self._forward(direction, padded)[..., :h, :w], {}

    def _forward(self, direction: str, x: Tensor) -> Tensor:
        """The ``direction`` generator's output for ``x`` by this translator's runtime (an
        ONNX Runtime session exported on first use, or the PyTorch module)."""
        if self.runtime == "torch":
            return self.generator(direction)(x)
        engine = self._engines.get(direction)
        if engine is None:
            engine = onnx_generator(self.generator(direction), direction, self.source)
            self._engines[direction] = engine
        return engine(x)

    def translate(
        self,
        x: Tensor | Image.Image | np.ndarray,
        direction: str = "AtoB",
        *,
        tile: int | None = None,
        overlap: int | str = "auto",
        tile_stats: str = "exact",
    ) -> Tensor | Image.Image | np.ndarray:
        """Translate a PIL image (-> PIL image), a NumPy array (H, W, C) / (N, H, W, C) of
        uint8 or of floats in [0, 1] (-> the same shape and dtype, on the CPU) or a tensor
        (C, H, W) / (N, C, H, W) in [-1, 1] (-> the same shape, on the translator's device).

        ``tile=N`` translates in tiles of N pixels with ``overlap`` pixels of context and
        whole-image normalisation statistics (``tile_stats``), equal to the whole-image
        output (``overlap="auto"``) in bounded memory: :mod:`spap.inference.tiling`. It takes
        PIL images, (H, W, C) uint8 arrays and tensors."""
        if tile is not None:
            return self._translate_tiled(x, direction, tile, overlap, tile_stats)
        if isinstance(x, np.ndarray):
            t, single = _array_to_tensor(x)
            return _tensor_to_array(self._run(t, direction, attention=False)[0], x.dtype, single)
        t, single, is_pil = self._prepare(x, direction)
        y, _ = self._run(t, direction, attention=False)
        if is_pil:
            return tensor_to_pil(y[0])
        return y[0] if single else y

    def _translate_tiled(
        self, x: Any, direction: str, tile: int, overlap: int | str, stats: str
    ) -> Tensor | Image.Image | np.ndarray:
        g = self.generator(direction)
        kw = {"tile": tile, "overlap": overlap, "stats": stats, "device": self.device}
        if isinstance(x, Image.Image):
            return translate_tiled(g, _pil_mode(x, _in_channels(g)), **kw)
        if isinstance(x, np.ndarray):
            if x.dtype != np.uint8 or x.ndim != 3:
                raise SpapError(f"tile= takes (H, W, C) uint8 arrays, got {x.dtype} {x.shape}")
            return translate_tiled(g, x, **kw)
        t, single, _ = self._prepare(x, direction)
        y = translate_tiled(g, t, **kw).to(self.device)
        return y[0] if single else y

    def translate_with_attention(
        self, x: Tensor | Image.Image | np.ndarray, direction: str = "AtoB"
    ) -> tuple[Tensor | Image.Image | np.ndarray, dict[str, Tensor]]:
        """Like :meth:`translate`, plus ``{unit map name: (N, 1, H, W) in [0, 1]}`` at the
        image's size (empty without attention units; see
        :func:`spap.viz.attention.attention_maps`)."""
        if isinstance(x, np.ndarray):
            t, single = _array_to_tensor(x)
            y, maps = self._run(t, direction, attention=True)
            return _tensor_to_array(y, x.dtype, single), maps
        t, single, is_pil = self._prepare(x, direction)
        y, maps = self._run(t, direction, attention=True)
        if is_pil:
            return tensor_to_pil(y[0]), maps
        return (y[0] if single else y), maps

    # -- folders
    def translate_folder(
        self,
        input: str | os.PathLike,
        output: str | os.PathLike,
        direction: str = "AtoB",
        batch_size: int = 4,
        attention: bool = False,
        num_workers: int | None = None,
        progress: bool = False,
        half: str | None = None,
        bit_depth: int = 8,
        value_range: Any = None,
        tile: int | None = None,
        overlap: int | str = "auto",
        tile_stats: str = "exact",
    ) -> FolderResult:
        """Translate every image below ``input`` (a folder, searched recursively, or one
        file) into ``output``: ``<same relative path>.png`` per input image and, with
        ``attention``, ``attention/<relative path>_<unit map>.png`` overlays on the input.

        Decoding runs ahead of the generator, in ``num_workers`` loader processes or, with
        0, in a background thread (decoding releases the GIL; on a CPU the generator needs
        every core, and worker processes only compete with it); PNG encoding runs in
        background threads. ``None`` picks 0 on the CPU and 2 on CUDA. Batches hold images
        of equal size. Unreadable
        files are skipped with a warning (listed in the result). ``half="A"`` / ``"B"``
        translates the left / right half of aligned ``A|B`` images.

        Inputs (images and ``.npy`` arrays) are read with the generator's input channel
        count at full precision (:func:`spap.data.io.read_pixels`) and scaled to [-1, 1] by
        ``value_range`` (default: ``info["value_range"]``, else ``"auto"``; use the
        training run's ``data.value_range``). Outputs with one channel are grayscale PNGs,
        with three RGB PNGs, with another count ``.npy`` arrays (H, W, C); ``bit_depth=16``
        writes 16-bit PNGs (``I;16`` grayscale) or uint16 arrays, mapping [-1, 1] to
        0..65535 (8: 0..255), rounded.

        ``tile=N`` translates each image in tiles (``overlap``, ``tile_stats``: as
        :meth:`translate`), one image at a time, never holding it in float: memory stays
        bounded for any image size. Attention overlays are not written with tiles.
        """
        if tile is not None and attention:
            raise SpapError("attention overlays are not written with --tile; translate without it")
        if half not in (None, "A", "B"):
            raise SpapError(f"half must be A or B, got {half!r}")
        if bit_depth not in BIT_DEPTHS:
            raise SpapError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
        if value_range is None:
            value_range = self.info.get("value_range") or "auto"
        check_value_range(value_range, key="value_range")

        g = self.generator(direction)  # fail early on a bad direction
        in_nc = _in_channels(g)
        out_nc = getattr(g, "output_nc", 3)
        suffix = ".png" if out_nc in (1, 3) else ".npy"
        src = Path(input)
        excluded: list[tuple[Path, str]] = []
        if src.is_file():
            files, root = [src], src
        elif src.is_dir():
            files, excluded = scan_images(src, arrays=True)
            root = src
        else:
            raise DataError(f"no such input file or folder: {src}")
        if not files:
            raise DataError(f"no images found in {src}")
        out = Path(output)
        if out.exists() and not out.is_dir():
            raise SpapError(f"the output folder {out} is a file; name a folder (new or existing)")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpapError(
                f"cannot create the output folder {out}: {exc.strerror or exc}"
            ) from None
        if not os.access(out, os.W_OK):
            raise SpapError(f"the output folder {out} is not writable")
        names = _output_names(files, root, suffix)
        result = FolderResult(output=out)
        for path, reason in excluded:  # zero bytes, broken links: never candidates
            log.warning("skipping %s: %s", path, reason)
            result.skipped.append((str(path), reason))
        if tile is not None:
            tiling = {"tile": tile, "overlap": overlap, "stats": tile_stats}
            for i, f in enumerate(tqdm(files, unit="img", disable=not progress)):
                try:
                    img = read_pixels(f, in_nc)
                except UnreadableImage as exc:
                    log.warning("skipping %s: %s", f, exc.reason)
                    result.skipped.append((str(f), exc.reason))
                    continue
                if half is not None:
                    w2 = img.shape[1] // 2
                    img = img[:, :w2] if half == "A" else img[:, w2 : 2 * w2]
                y = translate_tiled(
                    g,
                    img,
                    value_range=value_range,
                    bit_depth=bit_depth,
                    device=self.device,
                    progress=progress and len(files) == 1,  # one big image: a bar of tiles
                    **tiling,
                )
                del img
                write_array(y, out / names[i])
                result.written += 1
            return result
        sizes = [_image_size(f, half) for f in files]
        batches = _size_batches(sizes, max(1, batch_size))
        if num_workers is None:
            num_workers = 2 if self.device.type == "cuda" else 0
        loader = torch.utils.data.DataLoader(
            _Files(files, half, in_nc, value_range),
            batch_sampler=batches,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )
        lock = threading.Lock()
        pending: list[Future] = []
        bar = None
        if progress:
            bar = tqdm(total=len(files), unit="img", desc=f"translate {direction}")

        def save(image: Tensor, path: Path, is_attention: bool) -> None:
            try:
                save_image(image, path, 8 if is_attention else bit_depth)
            except OSError as exc:  # a full disk: one line naming the file (none is left half)
                raise SpapError(f"could not write {path}: {write_error_reason(exc)}") from None
            with lock:
                if is_attention:
                    result.attention_written += 1
                else:
                    result.written += 1

        with ThreadPoolExecutor(max_workers=2) as pool, _closing(bar):
            for items in loader if num_workers else _prefetched(loader):
                good = []
                for it in items:
                    if "error" in it:
                        path = str(files[it["index"]])
                        log.warning("skipping %s: %s", path, it["error"])
                        result.skipped.append((path, it["error"]))
                    else:
                        good.append(it)
                for group in _same_size(good):
                    x = torch.stack([it["image"] for it in group])
                    y, maps = self._run(x, direction, attention)
                    y = y.float().cpu()
                    for j, it in enumerate(group):
                        name = names[it["index"]]
                        pending.append(pool.submit(save, y[j], out / name, False))
                        for key, m in maps.items():
                            over = overlay(x[j : j + 1], m[j : j + 1])[0]
                            stem = name.with_suffix("")
                            target = out / "attention" / _fit_name(Path(f"{stem}_{key}.png"))
                            pending.append(pool.submit(save, over, target, True))
                if bar is not None:
                    bar.update(len(items))
                # bound the queue of images waiting to be written
                while len(pending) > 8 * max(1, batch_size):
                    pending.pop(0).result()
            for f in pending:
                f.result()
        if bar is not None:
            bar.close()
        return result


@contextlib.contextmanager
def _closing(bar: Any) -> Iterator[None]:
    """Close the progress bar however the block ends (an error then prints on a line of
    its own, not glued to the bar)."""
    try:
        yield
    finally:
        if bar is not None:
            bar.close()


def _prefetched(iterable: Any, depth: int = 2) -> Iterator[Any]:
    """The items of ``iterable``, produced by a background thread up to ``depth`` ahead.
    An exception in the thread is raised here; leaving the loop early stops the thread."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterable:
                if not put((None, item)):
                    return
        except BaseException as exc:  # handed to the consumer
            put((exc, None))
            return
        put((None, end))

    thread = threading.Thread(target=produce, name="spap-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            exc, item = items.get()
            if exc is not None:
                raise exc
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _units(g: nn.Module) -> Iterator[Any]:
    return (unit for _, unit in attention_units(g))


def _same_size(items: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    groups: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    for it in items:
        groups.setdefault(tuple(it["image"].shape), []).append(it)
    yield from groups.values()
