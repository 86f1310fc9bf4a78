"""Sampling from a trained GAN: tensors in Python, PNG files on disk.

>>> sampler = Sampler.from_checkpoint("runs/celeba_spap")        # EMA weights by default
>>> images = sampler.sample(16, seed=0)                           # (16, 3, R, R) in [-1, 1]
>>> sampler.write("samples/", num=50_000, seed=0, grid=True)     # resumable
>>> sampler.save_pretrained("celeba-spap")                        # the Hugging Face layout
>>> sampler = Sampler.from_pretrained("user/celeba-spap")         # a folder or a Hub id

Image ``i`` of seed ``s`` is made from the latent :func:`spap.models.sngan.latents` ``(s, i)``
alone, with the generator in eval mode (BatchNorm running statistics), so it does not
depend on the batch size or on which images were written before: an interrupted
:meth:`Sampler.write` continues where it stopped and ends with the same files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.utils import make_grid

from spap.data.transforms import tensor_to_pil, to_tensor_image
from spap.devices import pick_device
from spap.errors import SpapError
from spap.files import atomic_write
from spap.inference.loading import load_generators
from spap.inference.pretrained import (
    PretrainedResult,
    load_pretrained,
    push_to_hub,
    save_pretrained,
)
from spap.inference.runtime import choose_runtime, onnx_generator
from spap.layers import record_attention
from spap.models.sngan import SNGANGenerator, latents
from spap.viz.attention import attention_maps, attention_overlays

__all__ = ["Sampler"]

log = logging.getLogger(__name__)

_META = "sample.json"


# ----------------------------------------------------------------------------- files


def _is_complete_png(path: Path) -> bool:
    """A PNG that was fully written (ends with the IEND chunk)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() < 20:
                return False
            fh.seek(-12, os.SEEK_END)
            return fh.read(12)[4:8] == b"IEND"
    except OSError:
        return False


def _atomic_png(image: torch.Tensor, path: Path) -> None:
    """Write an image in [-1, 1] as PNG atomically (never a half file; a failed write is
    one :class:`~spap.errors.WriteError` line naming the file)."""
    pil = tensor_to_pil(image)
    atomic_write(path, lambda fh: pil.save(fh, format="PNG"), fsync=False)


def _read_png(path: Path) -> torch.Tensor:
    with Image.open(path) as img:
        return to_tensor_image(img.convert("RGB"))


# ----------------------------------------------------------------------------- sampler


class Sampler:
    """A generator in eval mode, ready to sample; see :meth:`from_checkpoint`.

    ``runtime="onnxruntime"`` runs the generator through ONNX Runtime on the CPU (exported
    once, cached beside ``source``: :mod:`spap.inference.runtime`); PyTorch where ONNX
    Runtime is not installed, and for attention maps. ``info``: what the file said besides
    the weights (metrics, in-training validation; kept by :meth:`save_pretrained`)."""

    def __init__(
        self,
        generator: SNGANGenerator,
        device: str | torch.device | None = None,
        *,
        step: int = 0,
        ema: bool = True,
        source: str = "",
        runtime: str = "torch",
        info: Mapping[str, Any] | None = None,
    ) -> None:
        where = device if device is not None else next(generator.parameters()).device
        self.runtime = choose_runtime(runtime, where)
        if self.runtime == "onnxruntime":
            device = "cpu"
        if device is not None:
            generator = generator.to(pick_device(device))
        self.generator = generator.eval().requires_grad_(False)
        self.device = next(generator.parameters()).device
        self.step = step
        self.ema = ema
        self.source = source
        self.info = {**(info or {}), "step": step, "ema": ema}
        self._engine: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._attention_noted = False

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.generator.parameters())
        units = len(self.generator.attention_units())
        src = f", source={self.source!r}" if self.source else ""
        rt = f", runtime={self.runtime}" if self.runtime != "torch" else ""
        return (
            f"Sampler({self.resolution}px, z_dim={self.generator.z_dim}, {n / 1e6:.2f}M "
            f"parameters, {units} attention units, {'EMA' if self.ema else 'raw'} weights, "
            f"step {self.step}; device={self.device}{rt}{src})"
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        ema: bool = True,
        runtime: str = "torch",
    ) -> Sampler:
        """From a GAN checkpoint (file or run folder; the generator is rebuilt from the
        model section of its stored config) or a ``.safetensors`` export.
        ``ema=False`` takes a checkpoint's raw instead of its averaged generator;
        ``runtime`` as for the constructor."""
        loaded = load_generators(path, kind="gan", ema=ema)
        return cls.from_loaded(loaded, device, runtime)

    @classmethod
    def from_loaded(
        cls, loaded: Any, device: str | torch.device = "auto", runtime: str = "torch"
    ) -> Sampler:
        """From what :func:`spap.inference.loading.load_generators` (or
        :func:`~spap.inference.pretrained.load_pretrained`) returned for a GAN."""
        return cls(
            loaded.generators["G"],
            device,
            step=int(loaded.info.get("step", 0)),
            ema=bool(loaded.info.get("ema", True)),
            source=loaded.source,
            runtime=runtime,
            info=loaded.info,
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
    ) -> Sampler:
        """From a folder written by :meth:`save_pretrained` (or any file
        :meth:`from_checkpoint` takes), or from a Hugging Face Hub repository ``user/name``
        (``hf://user/name``; downloaded with ``huggingface_hub.snapshot_download``, the
        keywords from ``revision`` on are its own): :func:`spap.inference.pretrained.load_pretrained`.
        A folder holds the one generator it was saved with (EMA by default); ``runtime`` as
        for the constructor."""
        loaded = load_pretrained(
            pretrained_model_name_or_path,
            kind="gan",
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            local_files_only=local_files_only,
        )
        return cls.from_loaded(loaded, device, runtime)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> PretrainedResult:
        """Write the generator in the Hugging Face layout (``config.json``,
        ``model.safetensors``, ``README.md`` model card, sample and attention grids of
        images 0-15 of seed 0); see :func:`spap.inference.pretrained.save_pretrained` for
        ``kwargs``."""
        return save_pretrained(self, save_directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload the generator to the Hub repository ``repo_id`` (``user/name``, created if
        needed) in the Hugging Face layout; returns the commit URL. See
        :func:`spap.inference.pretrained.push_to_hub` for ``kwargs``."""
        return push_to_hub(self, repo_id, **kwargs)

    @property
    def resolution(self) -> int:
        return self.generator.resolution

    def _batches(self, indices: list[int], batch_size: int) -> Iterable[list[int]]:
        if batch_size < 1:
            raise SpapError(f"batch size must be at least 1, got {batch_size}")
        for i in range(0, len(indices), batch_size):
            yield indices[i : i + batch_size]

    @torch.no_grad()
    def _generate(
        self, seed: int, indices: list[int], attention: bool = False
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        z = latents(seed, indices, self.generator.z_dim).to(self.device)
        if not attention:
            return self._forward(z).float().cpu(), {}
        if self.runtime != "torch" and not self._attention_noted:
            log.info("attention maps come from PyTorch: ONNX Runtime does not expose them")
            self._attention_noted = True
        with record_attention(self.generator) as maps:
            images = self.generator(z).float().cpu()
        return images, {k: [m.float().cpu() for m in v] for k, v in maps.items()}

    def _forward(self, z: torch.Tensor) -> torch.Tensor:
        """The generator's images for latents ``z`` by this sampler's runtime (an ONNX
        Runtime session exported on first use, or the PyTorch module)."""
        if self.runtime == "torch":
            return self.generator(z)
        if self._engine is None:
            name = "G_ema" if self.ema else "G"
            self._engine = onnx_generator(self.generator, name, self.source)
        return self._engine(z)

    def sample(self, n: int, seed: int = 0, batch_size: int = 16, start: int = 0) -> torch.Tensor:
        """Images ``start .. start + n - 1`` of ``seed``: (n, 3, R, R) in [-1, 1] on the CPU."""
        out = [
            self._generate(seed, b)[0]
            for b in self._batches(list(range(start, start + n)), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, 3, self.resolution, self.resolution)

    def sample_with_attention(
        self, n: int, seed: int = 0, batch_size: int = 16, start: int = 0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Images as :meth:`sample` plus ``{unit map name: (n, 1, h, w) in [0, 1]}``, the
        generator's attention maps as :meth:`Translator.translate_with_attention
        <spap.inference.translate.Translator.translate_with_attention>` gives them (see
        :func:`spap.viz.attention.attention_maps`), at the maps' own resolution."""
        images, maps = [], {}
        size = (self.resolution, self.resolution)
        for b in self._batches(list(range(start, start + n)), batch_size):
            imgs, raw = self._generate(seed, b, attention=True)
            images.append(imgs)
            for k, v in attention_maps(raw, size).items():
                maps.setdefault(k, []).append(v)
        return torch.cat(images), {k: torch.cat(v) for k, v in maps.items()}

    def _fingerprint(self) -> str:
        h = hashlib.sha1()
        for _, p in sorted(self.generator.state_dict().items())[:4]:
            h.update(p.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def write(
        self,
        output_dir: str | os.PathLike,
        num: int,
        seed: int = 0,
        batch_size: int = 16,
        grid: bool = False,
        attention: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Write images ``000000.png .. {num-1}.png`` into ``output_dir``; resumable.

        Files already complete are kept (an interrupted run continues where it stopped);
        each file is written to a temporary name and renamed, so a half-written file never
        counts as done. ``attention`` also writes ``attention/NNNNNN.png`` strips (sample,
        then one overlay per map); ``grid`` writes ``grid.png`` of the first (up to 64)
        images. ``progress(k)`` is called with the number of images done: first with the
        number of files kept, then after each batch.
        Returns ``{"written", "kept", "dir"}``.
        """
        if num < 1:
            raise SpapError(f"--num must be at least 1, got {num}")
        out = Path(output_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            if attention:
                (out / "attention").mkdir(exist_ok=True)
        except OSError as exc:
            raise SpapError(f"cannot create {out}: {exc.strerror or exc}") from None
        self._check_meta(out, seed)
        if attention and not self.generator.attention_units():
            log.warning(
                "the generator has no attention unit: the attention strips show the samples only"
            )
        for folder in (out, out / "attention"):
            for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
                with contextlib.suppress(OSError):
                    tmp.unlink()

        width = max(6, len(str(num - 1)))
        names = [f"{i:0{width}d}.png" for i in range(num)]

        def done(i: int) -> bool:
            if not _is_complete_png(out / names[i]):
                return False
            return not attention or _is_complete_png(out / "attention" / names[i])

        todo = [i for i in range(num) if not done(i)]
        if progress is not None and num - len(todo):
            progress(num - len(todo))
        for chunk in self._batches(todo, batch_size):
            images, maps = self._generate(seed, chunk, attention=attention)
            rows = attention_overlays(images, maps) if attention else {}
            for k, i in enumerate(chunk):
                if attention:
                    strip = torch.stack([images[k], *(r[k] for r in rows.values())])
                    _atomic_png(_strip(strip), out / "attention" / names[i])
                _atomic_png(images[k], out / names[i])
            if progress is not None:
                progress(len(chunk))
        if grid:
            first = [_read_png(out / n) for n in names[:64]]
            g = make_grid(
                torch.stack(first), nrow=math.ceil(math.sqrt(len(first))), padding=2, pad_value=-1.0
            )
            _atomic_png(g, out / "grid.png")
        extra = [
            p.name for p in out.glob("*.png") if p.name not in set(names) and p.name != "grid.png"
        ]
        if extra:
            log.warning(
                "%s also holds %d other PNG files (e.g. %s)", out, len(extra), sorted(extra)[0]
            )
        return {"written": len(todo), "kept": num - len(todo), "dir": str(out)}

    def _check_meta(self, out: Path, seed: int) -> None:
        """Refuse to continue a folder written by another checkpoint / seed / weights."""
        meta = {
            "step": self.step,
            "ema": self.ema,
            "seed": seed,
            "resolution": self.resolution,
            "weights": self._fingerprint(),
        }
        path = out / _META
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError):
                old = None
            if isinstance(old, dict):
                diff = [k for k in meta if old.get(k) != meta[k]]
                if diff:
                    raise SpapError(
                        f"{out} holds samples made with other settings ({', '.join(diff)} differ); "
                        "choose another --output or delete it"
                    )
                return
        tmp = out / f".{_META}.tmp"
        tmp.write_text(json.dumps({**meta, "checkpoint": self.source}, indent=1))
        os.replace(tmp, path)


def _strip(images: torch.Tensor) -> torch.Tensor:
    return make_grid(images, nrow=images.shape[0], padding=2, pad_value=-1.0)
