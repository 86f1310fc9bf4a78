"""FCN-score of a translation model on an aligned test set (CycleGAN paper, Cityscapes),
and of a segmentation net on real photos (:func:`evaluate_segnet`).

- ``labels2photo``: translate the label image to a photo, segment the generated photo with
  the segmentation net, compare with the ground-truth ids.
- ``photo2labels``: translate the photo to a label image, map each generated pixel to the
  nearest palette colour, compare with the ground-truth ids.
- ``real_photo`` (optional): segment the real photos; the segmentation net's own score, the
  ceiling of ``labels2photo``.

Both translator inputs are resized to ``size x size`` (bicubic), as at training time. Scores
are computed at the ground truth's resolution: segmentation logits are resized (bilinear) to
it, generated id maps are resized with nearest neighbour. One confusion matrix is
accumulated over the whole test set.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import spap.inference
from spap.data.labels import get_label_space
from spap.data.pairs import AlignedPairs, resize_ids, resize_rgb, to_tensor
from spap.devices import pick_device
from spap.errors import SpapError
from spap.eval.segmentation import ConfusionMatrix
from spap.models.segnet import load_segnet, predict_ids

__all__ = ["DIRECTIONS", "evaluate_segnet", "fcn_score", "write_json"]

log = logging.getLogger(__name__)

DIRECTIONS = ("labels2photo", "photo2labels", "both")


def evaluate_segnet(
    model: torch.nn.Module,
    pairs: AlignedPairs,
    net_size: int | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    max_images: int | None = None,
) -> dict[str, Any]:
    """FCN-score of real photos (the segmentation net's own accuracy, an upper bound).

    ``pairs``: an :class:`~spap.data.pairs.AlignedPairs` split; photos are resized to
    ``net_size`` (default: their own size), logits back to the ground truth's size.
    Returns scores as :func:`~spap.eval.segmentation.scores_from_confusion`.
    """
    dev = pick_device("auto" if device is None else device)
    model = model.to(dev).eval()
    space = pairs.space
    cm = ConfusionMatrix(space.num_classes, space.ignore_index)
    n = len(pairs) if max_images is None else min(len(pairs), max_images)
    for start in range(0, n, batch_size):
        batch = [pairs[i] for i in range(start, min(n, start + batch_size))]
        for s in batch:  # photos may differ in size: one at a time
            x = to_tensor(resize_rgb(s["photo"], net_size))[None].to(dev)
            pred = predict_ids(model, x, net_size, tuple(s["ids"].shape))
            cm.update(pred[0], s["ids"])
    return cm.scores(space.class_names)


def fcn_score(
    translator: Any,
    data: str | Path,
    segnet: Any = None,
    *,
    direction: str = "both",
    size: int | None = None,
    palette: Any = None,
    labels_domain: str = "A",
    phase: str = "test",
    gt_ids: str | Path | None = None,
    ids_format: str = "train",
    batch_size: int = 8,
    device: str | torch.device | None = None,
    max_images: int | None = None,
    include_real: bool = True,
    save_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Score a translator (``.translate(batch in [-1, 1], direction) -> [-1, 1]``).

    Args:
        translator: a ``Translator``, or a checkpoint path / run folder for
            :func:`spap.inference.load`.
        data: aligned folder (holding ``<phase>/``) or the split folder itself.
        segnet: segmentation net: a checkpoint path / folder, a ``(model, config)`` pair or
            a module; needed for ``labels2photo``.
        direction: ``labels2photo``, ``photo2labels`` or ``both``.
        size: translation size (square); default: the data's own half-image size.
        palette: label space name or :class:`~spap.data.labels.LabelSpace`; default:
            the segnet's, else ``"cityscapes"``.
        labels_domain: ``"A"`` if the labels are the left half / the model's domain A.
        gt_ids, ids_format: ground-truth id maps (see :class:`~spap.data.pairs.AlignedPairs`).
        max_images: score only the first N test pairs.
        include_real: also score the segnet on the real photos (``real_photo``).
        save_dir: if given, write the generated images there, named like the test images
            (``labels2photo/<stem>.png``, ``photo2labels/<stem>.png``).

    Returns:
        ``{"labels2photo": scores, "photo2labels": scores, "real_photo": scores,
        "num_images": n, "size": size, "palette": name}`` (scores as
        :func:`~spap.eval.segmentation.scores_from_confusion`).
    """
    from spap.eval.fidelity import to_uint8  # noqa: PLC0415 - it imports torch-fidelity (spap[eval])

    if direction not in DIRECTIONS:
        raise SpapError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if labels_domain not in ("A", "B"):
        raise SpapError(f"labels_domain must be 'A' or 'B', got {labels_domain!r}")
    do_l2p = direction in ("labels2photo", "both")
    do_p2l = direction in ("photo2labels", "both")
    dev = pick_device("auto" if device is None else device)

    model, seg_cfg = None, {}
    if do_l2p or include_real:
        if segnet is None:
            if do_l2p:
                raise SpapError("labels2photo needs a segmentation net (--segnet CKPT)")
            include_real = False
        elif isinstance(segnet, (str, Path)):
            model, seg_cfg = load_segnet(segnet, dev)
        elif isinstance(segnet, tuple):
            model, seg_cfg = segnet
        else:
            model = segnet
        if model is not None:
            model = model.to(dev).eval()
    space = get_label_space(palette or seg_cfg.get("palette") or "cityscapes")
    if model is not None and seg_cfg.get("num_classes") not in (None, space.num_classes):
        raise SpapError(
            f"the segmentation net predicts {seg_cfg['num_classes']} classes, the {space.name} "
            f"palette has {space.num_classes}"
        )
    net_size = seg_cfg.get("size")

    if isinstance(translator, (str, Path)):
        translator = spap.inference.load(translator, device=str(dev))
    if not hasattr(translator, "translate"):
        raise SpapError("the checkpoint is not a translation model (CycleGAN)")
    tdev = torch.device(getattr(translator, "device", dev))
    to_photo = "AtoB" if labels_domain == "A" else "BtoA"
    to_labels = "BtoA" if labels_domain == "A" else "AtoB"

    pairs = AlignedPairs(data, space, phase, labels_domain, gt_ids, ids_format)
    n = len(pairs) if max_images is None else min(len(pairs), max_images)
    if n == 0:
        raise SpapError(f"no test pairs in {pairs.dir}")
    k, ign = space.num_classes, space.ignore_index
    cms = {
        name: ConfusionMatrix(k, ign)
        for name, on in (
            ("labels2photo", do_l2p),
            ("photo2labels", do_p2l),
            ("real_photo", include_real),
        )
        if on
    }
    out_dir = Path(save_dir) if save_dir else None
    if out_dir:
        for name in ("labels2photo", "photo2labels"):
            if name in cms:
                (out_dir / name).mkdir(parents=True, exist_ok=True)
    first = pairs[0]
    tsize = size or first["label"].shape[0]

    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = [pairs[i] if i else first for i in range(start, min(n, start + batch_size))]
            gts = [b["ids"] for b in batch]
            if do_l2p:
                x = torch.stack([to_tensor(resize_rgb(b["label"], tsize)) for b in batch]).to(tdev)
                fake_photo = translator.translate(x, direction=to_photo)
                for j, b in enumerate(batch):
                    pred = predict_ids(
                        model, fake_photo[j : j + 1].to(dev), net_size, tuple(gts[j].shape)
                    )
                    cms["labels2photo"].update(pred[0], gts[j])
                    if out_dir:
                        img = to_uint8(fake_photo[j]).permute(1, 2, 0).cpu().numpy()
                        Image.fromarray(img).save(out_dir / "labels2photo" / f"{b['name']}.png")
            if do_p2l:
                x = torch.stack([to_tensor(resize_rgb(b["photo"], tsize)) for b in batch]).to(tdev)
                fake_labels = translator.translate(x, direction=to_labels)
                rgb = to_uint8(fake_labels).cpu()
                ids = space.to_ids(rgb).numpy()
                for j, b in enumerate(batch):
                    h, w = gts[j].shape
                    cms["photo2labels"].update(resize_ids(ids[j], (w, h)), gts[j])
                    if out_dir:
                        img = rgb[j].permute(1, 2, 0).numpy()
                        Image.fromarray(np.ascontiguousarray(img)).save(
                            out_dir / "photo2labels" / f"{b['name']}.png"
                        )
            if include_real:
                for j, b in enumerate(batch):
                    x = to_tensor(resize_rgb(b["photo"], tsize))[None].to(dev)
                    pred = predict_ids(model, x, net_size, tuple(gts[j].shape))
                    cms["real_photo"].update(pred[0], gts[j])
            if progress is not None:
                progress(min(n, start + batch_size), n)

    result: dict[str, Any] = {name: cm.scores(space.class_names) for name, cm in cms.items()}
    result.update({"num_images": n, "size": tsize, "palette": space.name})
    return result


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    """Write a result dict as JSON (NaN and infinities -> null)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(_json_safe(result), indent=2) + "\n")
    return p
