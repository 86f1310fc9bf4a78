"""Paired metrics for datasets with ground truth (facades, maps): PSNR and SSIM.

Written here in a few lines (no extra dependency) following the reference definitions:

- PSNR = 10 log10(MAX^2 / MSE), per image, images in [0, 1] (MAX = 1), averaged over images;
  identical images give ``inf`` (reported as such, and left out of nothing: the mean is inf).
- SSIM of Wang et al. (2004): 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
  dynamic range 1, "valid" window positions only (no padding, as in the authors' MATLAB
  ``ssim_index``), computed per RGB channel and averaged, then averaged over images.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import spap.inference
from spap.data.io import list_images, read_image
from spap.data.pairs import resize_rgb, split_dir, to_tensor
from spap.errors import DataError

__all__ = ["gaussian_window", "paired_metrics", "paired_score", "psnr", "ssim"]

log = logging.getLogger(__name__)

# Suffixes of generated file names tried when no file has the real image's exact name.
_FAKE_SUFFIXES = ("_fake_B", "_fake_A", "_fake")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB of ``(N, C, H, W)`` (or ``(C, H, W)``) images -> ``(N,)``."""
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() == 3:
        x, y = x[None], y[None]
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised ``(size, size)`` Gaussian window (float64)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-image SSIM of ``(N, C, H, W)`` (or ``(C, H, W)``) images -> ``(N,)``.

    Images smaller than the window use a window of their smaller side.
    """
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() == 3:
        x, y = x[None], y[None]
    x, y = x.double(), y.double()
    c = x.shape[1]
    size = min(window_size, x.shape[-1], x.shape[-2])
    w = gaussian_window(size, sigma).to(x.device)[None, None].expand(c, 1, size, size)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def _load(path: Path, half: str | None, size: tuple[int, int] | None) -> torch.Tensor:
    im = read_image(path)
    if half is not None:
        w = im.width // 2
        im = im.crop((0, 0, w, im.height)) if half == "A" else im.crop((w, 0, 2 * w, im.height))
    if size is not None and im.size != size:
        im = im.resize(size, Image.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.float64) / 255.0).permute(2, 0, 1)


def paired_metrics(
    real: str | Path,
    fake: str | Path,
    real_half: str | None = None,
    size: int | None = None,
) -> dict[str, Any]:
    """PSNR and SSIM of each fake image against the real image with the same file stem.

    Args:
        real: folder of ground-truth images (or of aligned ``A|B`` images, see ``real_half``);
            both folders are read flat (no sub-folders).
        fake: folder of generated images, named like the real ones (any image suffix;
            ``<name>_fake_B``, ``<name>_fake_A`` and ``<name>_fake`` also match ``<name>``).
        real_half: ``"A"`` / ``"B"`` to take the left / right half of aligned real images.
        size: resize both to ``size x size`` (bicubic); default: the fake image is resized
            to the real image's size when they differ.

    Returns:
        ``{"psnr", "ssim", "num_images", "per_image": {stem: {"psnr", "ssim"}}}``.
    """
    real_files = {p.stem: p for p in list_images(real, recursive=False)}
    fake_list = list_images(fake, recursive=False)
    fake_files = {p.stem: p for p in fake_list}
    by_suffix: dict[str, list[Path]] = {}
    for p in fake_list:  # "<name>_fake_B.png" as the CycleGAN test script writes them
        for suffix in _FAKE_SUFFIXES:
            if p.stem.endswith(suffix) and p.stem[: -len(suffix)] not in fake_files:
                by_suffix.setdefault(p.stem[: -len(suffix)], []).append(p)
    for stem, paths in by_suffix.items():
        if len(paths) > 1:
            raise DataError(
                f"{fake}: several generated images for {stem!r} "
                f"({', '.join(p.name for p in paths)}); put one kind per folder"
            )
        fake_files[stem] = paths[0]
    common = sorted(set(real_files) & set(fake_files))
    if not common:
        raise DataError(
            f"no image of {fake} has the file name (without suffix) of an image of {real}"
        )
    missing = len(real_files) - len(common)
    if missing:
        log.warning(
            "%d real images have no generated counterpart; scoring %d", missing, len(common)
        )
    per_image: dict[str, dict[str, float]] = {}
    for stem in common:
        r = _load(real_files[stem], real_half, (size, size) if size else None)
        f = _load(fake_files[stem], None, (size, size) if size else (r.shape[2], r.shape[1]))
        per_image[stem] = {"psnr": float(psnr(f, r)[0]), "ssim": float(ssim(f, r)[0])}
    p = [v["psnr"] for v in per_image.values()]
    s = [v["ssim"] for v in per_image.values()]
    return {
        "psnr": float(np.mean(p)) if all(math.isfinite(v) for v in p) else math.inf,
        "ssim": float(np.mean(s)),
        "num_images": len(common),
        "per_image": per_image,
    }


def paired_score(
    translator: Any,
    data: str | Path,
    *,
    source_half: str = "A",
    direction: str = "AtoB",
    size: int | None = None,
    phase: str = "test",
    batch_size: int = 8,
    device: str | torch.device | None = None,
    max_images: int | None = None,
    save_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Translate one half of each aligned test image and score it against the other half.

    Args:
        translator: a ``Translator`` or a checkpoint path / run folder.
        data: aligned folder (holding ``<phase>/``) or the split folder itself.
        source_half: ``"A"`` (left) or ``"B"`` (right): the half fed to the translator.
        direction: the translator direction (``AtoB`` / ``BtoA``) that maps that half's domain
            to the other one.
        size: translate and score at ``size x size`` (both halves resized, bicubic);
            default: the data's own size.
        save_dir: if given, write the translated images there (``<stem>.png``).

    Returns:
        ``{"psnr", "ssim", "num_images", "size", "per_image"}`` as :func:`paired_metrics`.
    """
    from spap.eval.fidelity import to_uint8  # noqa: PLC0415 - it imports torch-fidelity (spap[eval])

    if source_half not in ("A", "B") or direction not in ("AtoB", "BtoA"):
        raise DataError("source_half must be A or B and direction AtoB or BtoA")
    if isinstance(translator, (str, Path)):
        translator = spap.inference.load(translator, device=str(device or "auto"))
    if not hasattr(translator, "translate"):
        raise DataError("the checkpoint is not a translation model (CycleGAN)")
    folder = split_dir(data, phase)
    files = list_images(folder, recursive=False)[:max_images]
    if not files:
        raise DataError(f"no images in {folder}")
    out_dir = Path(save_dir) if save_dir else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    per_image: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for start in range(0, len(files), batch_size):
            srcs, tgts, names = [], [], []
            for f in files[start : start + batch_size]:
                im = np.asarray(read_image(f))
                w = im.shape[1] // 2
                a, b = im[:, :w], im[:, w : 2 * w]
                src, tgt = (a, b) if source_half == "A" else (b, a)
                s = size or src.shape[0]
                srcs.append(to_tensor(resize_rgb(src, s)))
                tgts.append(
                    torch.from_numpy(resize_rgb(tgt, s).astype(np.float64) / 255.0).permute(2, 0, 1)
                )
                names.append(f.stem)
            if len({t.shape for t in srcs}) > 1:
                raise DataError(f"the images of {folder} differ in size: pass size=N (--size N)")
            fake = to_uint8(translator.translate(torch.stack(srcs), direction=direction)).cpu()
            for j, name in enumerate(names):
                f01 = fake[j].double() / 255.0
                per_image[name] = {
                    "psnr": float(psnr(f01, tgts[j])[0]),
                    "ssim": float(ssim(f01, tgts[j])[0]),
                }
                if out_dir:
                    Image.fromarray(fake[j].permute(1, 2, 0).numpy()).save(out_dir / f"{name}.png")
    p = [v["psnr"] for v in per_image.values()]
    return {
        "psnr": float(np.mean(p)) if all(math.isfinite(v) for v in p) else math.inf,
        "ssim": float(np.mean([v["ssim"] for v in per_image.values()])),
        "num_images": len(per_image),
        "size": int(srcs[0].shape[-1]),
        "per_image": per_image,
    }
