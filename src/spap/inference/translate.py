"""Translating images with a trained CycleGAN: tensors and PIL images in Python, folders on disk.

>>> t = Translator.from_checkpoint("runs/facades_spap")        # or a step_*.pt / .safetensors
>>> photo = t.translate(pil_image, direction="AtoB")           # PIL in -> PIL out
>>> out, maps = t.translate_with_attention(tensor)             # maps: {unit: (N, 1, H, W)}
>>> t.translate_folder("testA/", "out/", attention=True)       # one PNG per input image

The generators are rebuilt from the configuration stored in the checkpoint. ``"AtoB"``
means from the checkpoint's domain A (``trainA`` / the left half of aligned images) to
domain B, whatever ``data.direction`` the run used. Any image size works: images are
padded (reflection) to a multiple of 4 and the output is cropped back.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from spap.data.io import UnreadableImage, list_images, read_image
from spap.data.transforms import save_image, tensor_to_pil, to_tensor_image
from spap.devices import pick_device
from spap.errors import DataError, SpapError
from spap.inference.loading import load_generators
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


def _pil_to_tensor(img: Image.Image) -> Tensor:
    if img.mode != "RGB":
        if "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba)
        img = img.convert("RGB")
    return to_tensor_image(img)


# ----------------------------------------------------------------------------- folders


@dataclass
class FolderResult:
    """What :meth:`Translator.translate_folder` wrote."""

    output: Path
    written: int = 0
    attention_written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _output_names(files: list[Path], root: Path) -> list[Path]:
    """Relative output name per input: same path with ``.png``; clashes (``a.jpg`` and
    ``a.png``) keep the old suffix in the name (``a_jpg.png``)."""
    rel = [f.relative_to(root) if f != root else Path(f.name) for f in files]
    plain = [r.with_suffix(".png") for r in rel]
    counts: dict[Path, int] = {}
    for p in plain:
        counts[p] = counts.get(p, 0) + 1
    out = []
    for r, p in zip(rel, plain):
        if counts[p] > 1:
            p = r.with_name(f"{r.stem}_{r.suffix.lstrip('.').lower()}.png")
        out.append(p)
    return out


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
    """Decodes images in loader workers; an unreadable file yields its error instead."""

    def __init__(self, files: list[Path], half: str | None = None) -> None:
        self.files = files
        self.half = half

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            img = read_image(self.files[i])
        except UnreadableImage as exc:
            return {"index": i, "error": exc.reason}
        if self.half is not None:
            w2 = img.width // 2
            if w2 < 1:
                return {"index": i, "error": f"{img.width}x{img.height} is too narrow to split"}
            box = (0, 0, w2, img.height) if self.half == "A" else (w2, 0, 2 * w2, img.height)
            img = img.crop(box)
        return {"index": i, "image": to_tensor_image(img)}


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
        source: the file the generators came from (shown by ``repr``).

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
    ) -> None:
        self.device = pick_device(device)
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
        return f"Translator({gens}; device={self.device}{src})"

    # -- construction
    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device = "auto"
    ) -> Translator:
        """From a CycleGAN checkpoint file, a run folder (its latest checkpoint) or a
        ``.safetensors`` file written by ``spap export --format safetensors``."""
        loaded = load_generators(path, kind="cyclegan")
        return cls(loaded.generators, device, info=loaded.info, source=loaded.source)

    # -- tensors and PIL images
    def generator(self, direction: str = "AtoB") -> nn.Module:
        """The generator translating in ``direction`` ("AtoB" or "BtoA")."""
        if direction not in DIRECTIONS:
            raise SpapError(f"direction must be AtoB or BtoA, got {direction!r}")
        if direction not in self.generators:
            raise SpapError(f"this model only translates {', '.join(self.generators)}")
        return self.generators[direction]

    def _prepare(self, x: Tensor | Image.Image) -> tuple[Tensor, bool, bool]:
        is_pil = isinstance(x, Image.Image)
        t = _pil_to_tensor(x) if is_pil else x
        if not isinstance(t, Tensor):
            raise TypeError(
                f"expected a tensor or a PIL image, got {type(x).__name__} (for a NumPy "
                "array (H, W, C) of uint8: Image.fromarray(array))"
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
            with record_attention(g) as raw:
                y = g(padded)
            maps = attention_maps(raw, tuple(padded.shape[-2:]))
            full = {}
            for k, m in maps.items():
                # maps cover the padded image: bring them to its size, then crop like y
                m = F.interpolate(m, size=padded.shape[-2:], mode="bilinear", align_corners=False)
                full[k] = m[..., :h, :w].clamp(0, 1)
            return y[..., :h, :w], full
        return g(padded)[..., :h, :w], {}

    def translate(self, x: Tensor | Image.Image, direction: str = "AtoB") -> Tensor | Image.Image:
        """Translate a PIL image (-> PIL image) or a tensor (C, H, W) / (N, C, H, W) in
        [-1, 1] (-> the same shape, on the translator's device)."""
        t, single, is_pil = self._prepare(x)
        y, _ = self._run(t, direction, attention=False)
        if is_pil:
            return tensor_to_pil(y[0])
        return y[0] if single else y

    def translate_with_attention(
        self, x: Tensor | Image.Image, direction: str = "AtoB"
    ) -> tuple[Tensor | Image.Image, dict[str, Tensor]]:
        """Like :meth:`translate`, plus ``{unit map name: (N, 1, H, W) in [0, 1]}`` at the
        image's size (empty without attention units; see
        :func:`spap.viz.attention.attention_maps`)."""
        t, single, is_pil = self._prepare(x)
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
        """
        if half not in (None, "A", "B"):
            raise SpapError(f"half must be A or B, got {half!r}")

        self.generator(direction)  # fail early on a bad direction
        src = Path(input)
        if src.is_file():
            files, root = [src], src
        elif src.is_dir():
            files, root = list_images(src), src
        else:
            raise DataError(f"no such input file or folder: {src}")
        if not files:
            raise DataError(f"no images found in {src}")
        out = Path(output)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpapError(
                f"cannot create the output folder {out}: {exc.strerror or exc}"
            ) from None
        if not os.access(out, os.W_OK):
            raise SpapError(f"the output folder {out} is not writable")
        names = _output_names(files, root)
        result = FolderResult(output=out)
        sizes = [_image_size(f, half) for f in files]
        batches = _size_batches(sizes, max(1, batch_size))
        if num_workers is None:
            num_workers = 2 if self.device.type == "cuda" else 0
        loader = torch.utils.data.DataLoader(
            _Files(files, half),
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
            save_image(image, path)
            with lock:
                if is_attention:
                    result.attention_written += 1
                else:
                    result.written += 1

        with ThreadPoolExecutor(max_workers=2) as pool:
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
                            target = out / "attention" / f"{name.with_suffix('')}_{key}.png"
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
