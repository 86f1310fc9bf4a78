"""Training the segmentation net of the FCN-score on real photo/label pairs.

:func:`train_segnet` trains one of :data:`spap.models.segnet.ARCHS` on an aligned folder and
writes a weights-only checkpoint with :func:`save_segnet` (read back with
:func:`spap.models.segnet.load_segnet`). Scoring the trained net on the test split is the
caller's choice: pass ``score`` (``spap seg train`` passes
:func:`spap.eval.fcn.evaluate_segnet`) and its numbers are stored in the checkpoint's config
as ``test_scores``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from spap.data.labels import get_label_space
from spap.data.pairs import AlignedPairs, resize_ids, resize_rgb
from spap.devices import pick_device
from spap.errors import DataError, SpapError
from spap.files import atomic_write
from spap.models.segnet import FORMAT, build_segnet, fit_size

__all__ = ["SCORE_KEYS", "ScoreFn", "save_segnet", "train_segnet"]

log = logging.getLogger(__name__)

#: A scoring function: ``score(model, pairs, net_size=, batch_size=, device=, max_images=)``
#: -> scores with at least :data:`SCORE_KEYS` (e.g. :func:`spap.eval.fcn.evaluate_segnet`).
ScoreFn = Callable[..., Mapping[str, Any]]
#: The scores kept in the checkpoint's ``test_scores``.
SCORE_KEYS = ("pixel_acc", "class_acc", "class_iou")


def save_segnet(path: str | Path, model: nn.Module, config: dict[str, Any]) -> Path:
    """Write a weights-only checkpoint (``config`` must hold plain values) atomically: the
    file gets the user's umask, and a failed write leaves the previous file (or none)."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    obj = {"format": FORMAT, "version": 1, "config": dict(config), "state_dict": state}
    atomic_write(path, lambda fh: torch.save(obj, fh))
    return path


def _load_pairs(
    pairs: AlignedPairs, size: int, max_images: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(pairs) if max_images is None else min(len(pairs), max_images)
    photos = torch.empty(n, 3, size, size, dtype=torch.uint8)
    ids = torch.empty(n, size, size, dtype=torch.uint8)
    for i in range(n):
        s = pairs[i]
        photos[i] = torch.from_numpy(resize_rgb(s["photo"], size).copy()).permute(2, 0, 1)
        ids[i] = torch.from_numpy(resize_ids(s["ids"], size).astype(np.uint8))
    return photos, ids


def train_segnet(
    data: str | Path,
    out: str | Path,
    arch: str = "small",
    palette: str = "cityscapes",
    size: int = 64,
    steps: int = 2000,
    batch_size: int = 16,
    lr: float | None = None,
    width: int = 32,
    labels_domain: str = "A",
    phase: str = "train",
    gt_ids: str | Path | None = None,
    ids_format: str = "train",
    device: str | torch.device | None = None,
    seed: int = 0,
    max_images: int | None = None,
    eval_phase: str | None = "test",
    log_every: int = 100,
    progress: Callable[[int, float], None] | None = None,
    score: ScoreFn | None = None,
) -> Path:
    """Train a segmentation net on the real photo/label pairs of an aligned folder.

    Photos are resized to ``size x size`` (bicubic), ids with nearest neighbour; the only
    augmentation is a horizontal flip. Loss: cross-entropy ignoring void pixels; Adam
    (lr 1e-3 for ``small``, 1e-4 for the ResNet-50 nets). The whole split is held in memory
    as uint8. Writes ``out/segnet.pt`` and returns its path. With ``score`` given and an
    ``eval_phase`` split in ``data`` (other than the training split), the trained net is
    scored on it first and ``test_scores`` / ``test_images`` are stored in the config.
    """
    if steps < 1 or size < 8 or batch_size < 1:
        raise SpapError("steps and batch size must be >= 1 and size >= 8")
    space = get_label_space(palette)
    pairs = AlignedPairs(data, space, phase, labels_domain, gt_ids, ids_format)
    dev = pick_device("auto" if device is None else device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    photos, ids = _load_pairs(pairs, fit_size(size, arch), max_images)
    if not (ids < space.num_classes).any():
        raise DataError(f"no labelled pixel in {pairs.dir} for the {space.name} palette")
    model = build_segnet(arch, space.num_classes, width).to(dev).train()
    lr = lr if lr is not None else (1e-3 if arch == "small" else 1e-4)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = photos.shape[0]
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        x = photos[idx].float().div_(127.5).sub_(1.0)
        y = ids[idx].long()
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        x, y = x.to(dev), y.to(dev)
        logits = model(x)
        loss = F.cross_entropy(logits, y, ignore_index=space.ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = loss.item()
        if progress is not None:
            progress(step, loss_value)
        if step % log_every == 0 or step == steps:
            log.info(
                "seg step %d/%d  loss %.4f  (%.1fs)",
                step,
                steps,
                loss_value,
                time.perf_counter() - t0,
            )
    model.eval()
    config: dict[str, Any] = {
        "arch": arch,
        "num_classes": space.num_classes,
        "width": width,
        "size": fit_size(size, arch),
        "palette": space.name,
        "class_names": list(space.class_names),
        "ignore_index": space.ignore_index,
        "steps": steps,
        "train_images": n,
        "data": str(Path(data).resolve()),
        "labels_domain": labels_domain,
        "seed": seed,
    }
    if score is not None and eval_phase is not None:
        try:
            test = AlignedPairs(data, space, eval_phase, labels_domain, None, ids_format)
        except DataError:
            test = None
        if test is not None and test.dir != pairs.dir:
            s = score(
                model,
                test,
                net_size=config["size"],
                batch_size=batch_size,
                device=dev,
                max_images=max_images,
            )
            config["test_scores"] = {k: float(s[k]) for k in SCORE_KEYS}
            config["test_images"] = len(test) if max_images is None else min(len(test), max_images)
    return save_segnet(Path(out) / "segnet.pt", model, config)
