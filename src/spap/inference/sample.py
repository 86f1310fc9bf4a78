"""Sampling from a trained GAN: tensors in Python, PNG files on disk.

>>> sampler = Sampler.from_checkpoint("runs/celeba_spap")        # EMA weights by default
>>> images = sampler.sample(16, seed=0)                           # (16, 3, R, R) in [-1, 1]
>>> sampler.write("samples/", num=50_000, seed=0, grid=True)     # resumable

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
import torch.nn.functional as F

from spap.errors import CheckpointError, SpapError
from spap.models.sngan import SNGANGenerator, build_generator, latents

__all__ = [
    "Sampler",
    "attention_overlays",
    "overlay",
    "spatial_maps",
]

log = logging.getLogger(__name__)

_META = "sample.json"


# ----------------------------------------------------------------------------- attention pictures


def overlay(images: torch.Tensor, maps: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blend the colour map of ``maps`` (N, h, w), values in [0, 1] shown as they are, onto
    ``images`` (N, 3, H, W) in [-1, 1]; returns (N, 3, H, W) in [-1, 1]."""
    from spap.viz.overlay import colorize

    size = images.shape[-2:]
    m = F.interpolate(maps.float().unsqueeze(1), size=size, mode="bilinear", align_corners=False)
    heat = colorize(m) * 2 - 1
    return (1 - alpha) * images.detach().float().clamp(-1, 1) + alpha * heat


def spatial_maps(name: str, maps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """One displayable (N, h, w) map in [0, 1] per attention map of a unit.

    - SPAP (one (N, 2, ...) tensor per fuse block): the weight of the branch brought in at
      that step (``maps[k][:, 1]``, channel attention averaged over channels), unscaled;
      rows ``attn_<unit>_<k>``.
    - SAGAN (``[attn]`` of shape (N, H*W, H'*W')): where the centre query position looks,
      scaled to a maximum of 1 per image; row ``attn_<unit>``.
    """
    from spap.layers import spatial_attention

    short = name.rsplit(".", 1)[-1] or "unit"
    out: dict[str, torch.Tensor] = {}
    if len(maps) == 1 and maps[0].dim() == 3:  # SAGAN
        attn = maps[0].float()
        hw, keys = attn.shape[1], attn.shape[2]
        h, kh = math.isqrt(hw), math.isqrt(keys)
        if h * h != hw or kh * kh != keys:
            return out
        row = attn[:, (h // 2) * h + h // 2].reshape(-1, kh, kh)
        row = row / row.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        out[f"attn_{short}"] = row
        return out
    for k, m in enumerate(maps):
        a = spatial_attention(m.float())[:, 1]  # (N, h, w)
        out[f"attn_{short}_{k}"] = a
    return out


def attention_overlays(
    images: torch.Tensor, recorded: Mapping[str, list[torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Overlays (N, 3, H, W) in [-1, 1] of every recorded map on ``images``, by row name."""
    rows: dict[str, torch.Tensor] = {}
    for name, maps in sorted(recorded.items()):
        for row, m in spatial_maps(name, maps).items():
            rows[row] = overlay(images.cpu(), m.cpu())
    return rows


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
    """Write an image in [-1, 1] as PNG: temporary file + rename (never a half file)."""
    from spap.data.transforms import tensor_to_pil

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            tensor_to_pil(image).save(fh, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _read_png(path: Path) -> torch.Tensor:
    from PIL import Image

    from spap.data.transforms import to_tensor_image

    with Image.open(path) as img:
        return to_tensor_image(img.convert("RGB"))


# ----------------------------------------------------------------------------- sampler


class Sampler:
    """A generator in eval mode, ready to sample; see :meth:`from_checkpoint`."""

    def __init__(
        self,
        generator: SNGANGenerator,
        *,
        step: int = 0,
        ema: bool = True,
        source: str = "",
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.generator = generator.eval().requires_grad_(False)
        self.device = next(generator.parameters()).device
        #: The run's resolved config (plain dict), as stored in the checkpoint.
        self.config = dict(config or {})
        self.step = step
        self.ema = ema
        self.source = source

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device = "auto", ema: bool = True
    ) -> Sampler:
        """Load a GAN checkpoint (file or run folder; the generator is rebuilt from the
        checkpoint's own config). ``ema=False`` takes the raw instead of the averaged G."""
        from spap.train.checkpoint import load_checkpoint

        return cls.from_state(load_checkpoint(path, kind="gan"), device=device, ema=ema)

    @classmethod
    def from_state(
        cls, ckpt: Mapping[str, Any], device: str | torch.device = "auto", ema: bool = True
    ) -> Sampler:
        """Build from a loaded checkpoint dict (see :func:`spap.train.checkpoint.load_checkpoint`)."""
        from spap.config import from_dict
        from spap.train.distributed import pick_device
        from spap.train.gan import GANConfig

        file = ckpt.get("path", "checkpoint")
        if ckpt.get("kind") != "gan":
            raise CheckpointError(
                f"{file} is a {ckpt.get('kind')!r} checkpoint, but a 'gan' checkpoint is needed"
            )
        try:
            cfg = from_dict(GANConfig, ckpt["config"])
            models = ckpt["task"]["models"]
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{file}: not a GAN checkpoint of this version ({exc})") from None
        name = "G_ema" if ema else "G"
        if name not in models:
            raise CheckpointError(f"{file}: holds no {name} weights")
        generator = build_generator(cfg.model)
        try:
            generator.load_state_dict(models[name])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(
                f"{file}: {name} weights do not fit its config ({first})"
            ) from None
        device = pick_device(str(device)) if not isinstance(device, torch.device) else device
        generator.to(device)
        return cls(
            generator, step=int(ckpt.get("step", 0)), ema=ema, source=str(file),
            config=ckpt["config"],
        )  # fmt: skip

    @classmethod
    def from_safetensors(
        cls, path: str | os.PathLike, device: str | torch.device = "auto"
    ) -> Sampler:
        """From a generator exported with ``spap export --format safetensors``."""
        import json

        from safetensors import safe_open

        from spap.config import from_dict
        from spap.train.distributed import pick_device
        from spap.train.gan import GANConfig

        try:
            with safe_open(os.fspath(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except Exception as exc:  # noqa: BLE001 - any failure: not a usable file
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
        if meta.get("format") != "spap-gan-generator":
            raise CheckpointError(f"{path}: not a GAN generator exported by spap export")
        config = json.loads(meta["config"])
        generator = build_generator(from_dict(GANConfig, config).model)
        generator.load_state_dict(tensors)
        device = pick_device(str(device)) if not isinstance(device, torch.device) else device
        return cls(generator.to(device), source=str(path), config=config)

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
        from spap.layers import record_attention

        z = latents(seed, indices, self.generator.z_dim).to(self.device)
        if not attention:
            return self.generator(z).float().cpu(), {}
        with record_attention(self.generator) as maps:
            images = self.generator(z).float().cpu()
        return images, {k: [m.float().cpu() for m in v] for k, v in maps.items()}

    def sample(self, n: int, seed: int = 0, batch_size: int = 16, start: int = 0) -> torch.Tensor:
        """Images ``start .. start + n - 1`` of ``seed``: (n, 3, R, R) in [-1, 1] on the CPU."""
        out = [
            self._generate(seed, b)[0]
            for b in self._batches(list(range(start, start + n)), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, 3, self.resolution, self.resolution)

    def sample_with_attention(
        self, n: int, seed: int = 0, batch_size: int = 16, start: int = 0
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Images as :meth:`sample` plus the generator's attention maps: unit name -> list
        of maps (as :func:`spap.layers.record_attention` gives them, batched over all n)."""
        images, maps = [], {}
        for b in self._batches(list(range(start, start + n)), batch_size):
            imgs, m = self._generate(seed, b, attention=True)
            images.append(imgs)
            for k, v in m.items():
                maps.setdefault(k, []).append(v)
        joined = {k: [torch.cat(parts) for parts in zip(*v)] for k, v in maps.items()}
        return torch.cat(images), joined

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
            from torchvision.utils import make_grid

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
    from torchvision.utils import make_grid

    return make_grid(images, nrow=images.shape[0], padding=2, pad_value=-1.0)
