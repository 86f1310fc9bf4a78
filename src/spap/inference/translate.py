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

import json
import logging
import math
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

from spap.errors import CheckpointError, DataError, SpapError

__all__ = [
    "FolderResult",
    "Translator",
    "attention_maps",
    "attention_overlays",
    "overlay",
    "pad_to_multiple",
]

log = logging.getLogger(__name__)

DIRECTIONS = ("AtoB", "BtoA")


# ----------------------------------------------------------------------------- attention pictures


def attention_maps(
    raw: Mapping[str, list[Tensor]], net: nn.Module, image_size: tuple[int, int]
) -> dict[str, Tensor]:
    """Displayable maps (N, 1, h, w) in [0, 1] of every unit, named ``<slot>_<k>``.

    - SPAP: one map per fuse block ``k``: the weight given to the branch brought in at that
      step (``maps[k][:, 1]``; channel attention averaged over channels), unscaled.
    - SAGAN: how much attention each (pooled) key position receives, averaged over all
      query positions and scaled to a maximum of 1 per image; named ``<slot>``.
    """
    from spap.layers import spatial_attention

    out: dict[str, Tensor] = {}
    for slot, maps in raw.items():
        stride = net.feature_stride(slot) if hasattr(net, "feature_stride") else 1
        h, w = (math.ceil(s / stride) for s in image_size)
        if len(maps) == 1 and maps[0].dim() == 3:  # SAGAN (N, H*W, keys)
            attn = maps[0].float()
            keys = attn.shape[2]
            kh, kw = (h, w) if keys == h * w else (math.ceil(h / 2), math.ceil(w / 2))
            if kh * kw != keys:
                continue
            m = attn.mean(dim=1).reshape(-1, 1, kh, kw)
            out[slot] = m / m.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
            continue
        for k, m in enumerate(maps):
            out[f"{slot}_{k}"] = spatial_attention(m.float())[:, 1:2].clamp(0, 1)
    return out


def overlay(images: Tensor, maps: Tensor, alpha: float = 0.5) -> Tensor:
    """Blend jet-coloured ``maps`` (N, 1, h, w) in [0, 1] onto ``images`` (N, 3, H, W) in
    [-1, 1] (maps upsampled bilinearly); returns [-1, 1]."""
    from spap.viz.overlay import colorize

    images = images.detach().float().cpu()
    m = F.interpolate(
        maps.detach().float().cpu(), size=images.shape[-2:], mode="bilinear", align_corners=False
    )
    heat = colorize(m.clamp(0, 1))
    rgb = images[:, :3] if images.shape[1] >= 3 else images.repeat(1, 3, 1, 1)
    return ((1 - alpha) * (rgb.clamp(-1, 1) + 1) / 2 + alpha * heat) * 2 - 1


def attention_overlays(
    images: Tensor, raw: Mapping[str, list[Tensor]], net: nn.Module, prefix: str = ""
) -> dict[str, Tensor]:
    """``{"<prefix>_attn_<name>": overlay}`` for every map of :func:`attention_maps`."""
    maps = attention_maps(raw, net, tuple(images.shape[-2:]))
    head = f"{prefix}_attn" if prefix else "attn"
    return {f"{head}_{name}": overlay(images, m) for name, m in maps.items()}


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
    from spap.data.transforms import to_tensor_image

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
        from spap.data.io import UnreadableImage, read_image
        from spap.data.transforms import to_tensor_image

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


def _pick_device(device: str | torch.device) -> torch.device:
    from spap.train.distributed import pick_device

    return device if isinstance(device, torch.device) else pick_device(str(device))


class Translator:
    """Generators of a trained CycleGAN, ready for inference (eval mode, no gradients).

    Args:
        generators: ``{"AtoB": G_A, "BtoA": G_B}`` (either may be missing).
        config: the run's configuration dict (as stored in the checkpoint).
        device: where to run.
    """

    def __init__(
        self,
        generators: Mapping[str, nn.Module],
        config: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = _pick_device(device)
        self.generators = {d: g.to(self.device).eval() for d, g in generators.items()}
        for g in self.generators.values():
            g.requires_grad_(False)
        self.config = dict(config or {})

    # -- construction
    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device = "auto"
    ) -> Translator:
        """From a CycleGAN checkpoint file, a run folder (its latest checkpoint) or a
        ``.safetensors`` file written by ``spap export --format safetensors``."""
        if os.fspath(path).endswith(".safetensors"):
            return cls.from_safetensors(path, device)
        from spap.train.checkpoint import load_checkpoint

        return cls.from_state(load_checkpoint(path, kind="cyclegan"), device=device)

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], device: str | torch.device = "auto"
    ) -> Translator:
        """From a loaded checkpoint dict (``spap.train.checkpoint.load_checkpoint``)."""
        from spap.config import from_dict
        from spap.train.cyclegan import CycleGANConfig, build_networks

        where = state.get("path", "checkpoint")
        if state.get("kind") != "cyclegan":
            raise CheckpointError(
                f"{where} is a {state.get('kind')!r} checkpoint, but a 'cyclegan' checkpoint is needed"
            )
        cfg = from_dict(CycleGANConfig, state["config"])
        nets = build_networks(cfg.model)
        models = state["task"]["models"]
        for name in ("G_A", "G_B"):
            try:
                nets[name].load_state_dict(models[name])
            except (KeyError, RuntimeError) as exc:
                raise CheckpointError(
                    f"{where}: cannot load {name}: {str(exc).splitlines()[0]}"
                ) from None
        # AtoB is always from the folder's A domain: a run with data.direction=BtoA trained
        # G_A on B -> A.
        swap = cfg.data.direction == "BtoA"
        gens = {"AtoB": nets["G_B" if swap else "G_A"], "BtoA": nets["G_A" if swap else "G_B"]}
        return cls(gens, state["config"], device=device)

    @classmethod
    def from_safetensors(
        cls, path: str | os.PathLike, device: str | torch.device = "auto"
    ) -> Translator:
        """From a generator exported with ``spap export --format safetensors``."""
        from safetensors import safe_open

        from spap.config import from_dict
        from spap.models.cyclegan import build_generator
        from spap.train.cyclegan import CycleGANConfig

        try:
            with safe_open(os.fspath(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
        if meta.get("format") != "spap-cyclegan-generator":
            raise CheckpointError(f"{path}: not a generator exported by spap export")
        config = json.loads(meta["config"])
        cfg = from_dict(CycleGANConfig, config)
        g = build_generator(cfg.model, int(meta["input_nc"]), int(meta["output_nc"]))
        g.load_state_dict(tensors)
        return cls({meta["direction"]: g}, config, device=device)

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
            raise TypeError(f"expected a tensor or a PIL image, got {type(x).__name__}")
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
            y, raw = g.forward_with_attention(padded)
            maps = attention_maps(raw, g, tuple(padded.shape[-2:]))
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
            from spap.data.transforms import tensor_to_pil

            return tensor_to_pil(y[0])
        return y[0] if single else y

    def translate_with_attention(
        self, x: Tensor | Image.Image, direction: str = "AtoB"
    ) -> tuple[Tensor | Image.Image, dict[str, Tensor]]:
        """Like :meth:`translate`, plus ``{unit map name: (N, 1, H, W) in [0, 1]}`` at the
        image's size (empty without attention units; see :func:`attention_maps`)."""
        t, single, is_pil = self._prepare(x)
        y, maps = self._run(t, direction, attention=True)
        if is_pil:
            from spap.data.transforms import tensor_to_pil

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
        from spap.data.io import list_images

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
            from tqdm.auto import tqdm

            bar = tqdm(total=len(files), unit="img", desc=f"translate {direction}")

        def save(image: Tensor, path: Path, is_attention: bool) -> None:
            from spap.data.transforms import save_image

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


def _same_size(items: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    groups: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    for it in items:
        groups.setdefault(tuple(it["image"].shape), []).append(it)
    yield from groups.values()
