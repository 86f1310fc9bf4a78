"""Segmentation scores (FCN-score): confusion matrix, accuracies, IoU, score tables.

Scores follow the FCN-score of pix2pix / CycleGAN (``scripts/eval_cityscapes`` of pix2pix):
one confusion matrix is accumulated over the whole test set (rows = ground truth, columns =
prediction), then

- per-pixel accuracy = correct pixels / labelled pixels,
- per-class accuracy = mean over classes of (correct pixels of c / ground-truth pixels of c),
- class IoU = mean over classes of TP / (TP + FP + FN),

where classes absent from the ground truth (and, for IoU, also never predicted) are left
out of the means (``nanmean``). Ground-truth pixels equal to ``ignore_index`` (255) are not
counted. A prediction outside ``0..K-1`` (e.g. a generated label colour of a void class) is
counted as wrong: it is kept in an extra "unknown" column of the matrix.

The classes, colours and ids of a task (:class:`~spap.data.labels.LabelSpace`,
:func:`~spap.data.labels.get_label_space`, :func:`~spap.data.labels.nearest_palette`) are
data: they live in :mod:`spap.data.labels`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from spap.data.labels import IGNORE_INDEX

__all__ = [
    "ConfusionMatrix",
    "format_scores_table",
    "score_labels",
    "scores_from_confusion",
]

# ----------------------------------------------------------------------------- confusion


def _as_numpy_ids(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(np.int64, copy=False)


class ConfusionMatrix:
    """A ``(K, K + 1)`` pixel confusion matrix accumulated over images.

    ``matrix[g, p]`` counts pixels of ground-truth class ``g`` predicted as ``p``; the last
    column counts predictions outside ``0..K-1`` (always wrong). Ground-truth pixels equal
    to ``ignore_index`` or outside ``0..K-1`` are skipped.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def update(self, pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> None:
        """Add one image (or a batch) of predicted and ground-truth ids of the same shape."""
        p, g = _as_numpy_ids(pred), _as_numpy_ids(gt)
        if p.shape != g.shape:
            raise ValueError(f"prediction shape {p.shape} != ground-truth shape {g.shape}")
        k = self.num_classes
        keep = (g >= 0) & (g < k) & (g != self.ignore_index)
        g, p = g[keep], p[keep]
        p = np.where((p >= 0) & (p < k), p, k)
        self.matrix += np.bincount(g * (k + 1) + p, minlength=k * (k + 1)).reshape(k, k + 1)

    def scores(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """See :func:`scores_from_confusion`."""
        return scores_from_confusion(self.matrix, class_names)


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def scores_from_confusion(
    matrix: np.ndarray, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Scores of a ``(K, K)`` or ``(K, K + 1)`` confusion matrix (rows = ground truth).

    Returns ``{"pixel_acc", "class_acc", "class_iou", "num_pixels", "per_class"}`` where
    ``per_class`` is a list of ``{"id", "name", "acc", "iou", "gt_pixels", "pred_pixels"}``;
    undefined values (a class absent from ground truth and predictions) are NaN.
    """
    m = np.asarray(matrix, dtype=np.float64)
    k = m.shape[0]
    if m.ndim != 2 or m.shape[1] not in (k, k + 1):
        raise ValueError(f"expected a (K, K) or (K, K+1) matrix, got {m.shape}")
    tp = np.diag(m[:, :k])
    gt = m.sum(1)
    pred = m[:, :k].sum(0)
    total = m.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(gt > 0, tp / gt, np.nan)
        union = gt + pred - tp
        iou = np.where(union > 0, tp / union, np.nan)
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    return {
        "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
        "class_acc": _nanmean(acc),
        "class_iou": _nanmean(iou),
        "num_pixels": int(total),
        "per_class": [
            {
                "id": i,
                "name": names[i],
                "acc": float(acc[i]),
                "iou": float(iou[i]),
                "gt_pixels": int(gt[i]),
                "pred_pixels": int(pred[i]),
            }
            for i in range(k)
        ],
    }


def score_labels(
    pred_ids: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
    gt_ids: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Scores of predicted vs ground-truth id maps (one array, or lists of per-image arrays)."""
    cm = ConfusionMatrix(num_classes, ignore_index)
    if isinstance(pred_ids, (list, tuple)):
        if not isinstance(gt_ids, (list, tuple)) or len(pred_ids) != len(gt_ids):
            raise ValueError("pred_ids and gt_ids must be lists of the same length")
        for p, g in zip(pred_ids, gt_ids):
            cm.update(p, g)
    else:
        cm.update(pred_ids, gt_ids)  # type: ignore[arg-type]
    return cm.scores(class_names)


# ----------------------------------------------------------------------------- printing


def _fmt(v: float) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def format_scores_table(results: dict[str, dict[str, Any]], per_class: bool = False) -> str:
    """A text table: one row per entry of ``results`` (name -> scores dict)."""
    width = max([len("setting")] + [len(n) for n in results])
    lines = [
        f"{'setting':<{width}}  per-pixel acc  per-class acc  class IoU",
    ]
    for name, s in results.items():
        lines.append(
            f"{name:<{width}}  {_fmt(s['pixel_acc']):>13}  {_fmt(s['class_acc']):>13}"
            f"  {_fmt(s['class_iou']):>9}"
        )
    if per_class:
        for name, s in results.items():
            cw = max([len("class")] + [len(c["name"]) for c in s["per_class"]])
            lines += ["", f"{name}: per class", f"{'class':<{cw}}     acc     IoU   gt pixels"]
            for c in s["per_class"]:
                lines.append(
                    f"{c['name']:<{cw}}  {_fmt(c['acc']):>6}  {_fmt(c['iou']):>6}"
                    f"  {c['gt_pixels']:>10}"
                )
    return "\n".join(lines)
