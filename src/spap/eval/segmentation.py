"""Segmentation scores (FCN-score) and label spaces.

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

A :class:`LabelSpace` holds the evaluation classes, their colours, and the colours that may
appear in label images (mapped to a class id or to the ignore label).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spap.errors import SpapError

__all__ = [
    "IGNORE_INDEX",
    "ConfusionMatrix",
    "LabelSpace",
    "cityscapes_label_to_train_ids",
    "format_scores_table",
    "get_label_space",
    "nearest_palette",
    "score_labels",
    "scores_from_confusion",
]

#: Ground-truth value that is never scored (Cityscapes' ``trainId`` of void classes).
IGNORE_INDEX = 255


# ----------------------------------------------------------------------------- palettes


def nearest_palette(
    image: np.ndarray | torch.Tensor,
    palette: np.ndarray | torch.Tensor | Sequence[Sequence[int]],
    ids: np.ndarray | torch.Tensor | Sequence[int] | None = None,
) -> np.ndarray | torch.Tensor:
    """Map every pixel to the index of the nearest palette colour (squared RGB distance).

    Args:
        image: RGB values on the 0..255 scale (uint8 or float). A numpy array is
            channels-last ``(..., H, W, 3)``; a tensor is channels-first ``(..., 3, H, W)``.
        palette: ``(M, 3)`` colours on the 0..255 scale.
        ids: optional ``(M,)`` value returned for each palette entry (e.g. the class id of
            each colour, or the ignore label); default: the palette index.

    Returns:
        int64 ids of shape ``(..., H, W)``, numpy in / numpy out, tensor in / tensor out.
        Ties go to the first palette entry.
    """
    as_numpy = isinstance(image, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(image)) if as_numpy else image
    if not as_numpy:
        if x.dim() < 3 or x.shape[-3] != 3:
            raise ValueError(f"expected a (..., 3, H, W) tensor, got shape {tuple(x.shape)}")
        x = x.movedim(-3, -1)
    elif x.shape[-1] != 3:
        raise ValueError(f"expected a (..., H, W, 3) array, got shape {tuple(x.shape)}")
    pal = torch.as_tensor(
        np.array(palette, dtype=np.float32), dtype=torch.float32, device=x.device
    ).reshape(-1, 3)
    shape = x.shape[:-1]
    flat = x.reshape(-1, 3).to(torch.float32)
    out = torch.empty(flat.shape[0], dtype=torch.int64, device=x.device)
    p2 = (pal * pal).sum(1)
    chunk = 1 << 18
    for i in range(0, flat.shape[0], chunk):
        v = flat[i : i + chunk]
        # |v - p|^2 = |v|^2 - 2 v.p + |p|^2; |v|^2 is constant per pixel
        out[i : i + chunk] = (p2 - 2.0 * v @ pal.T).argmin(1)
    if ids is not None:
        lut = torch.as_tensor(np.asarray(ids), dtype=torch.int64, device=x.device).reshape(-1)
        if lut.numel() != pal.shape[0]:
            raise ValueError(f"ids has {lut.numel()} entries for {pal.shape[0]} palette colours")
        out = lut[out]
    out = out.reshape(shape)
    return out.cpu().numpy() if as_numpy else out


@dataclass(frozen=True)
class LabelSpace:
    """The classes of a segmentation task and the colours of its label images.

    Attributes:
        name: short name (``"cityscapes"``, ``"scenes"``, ...).
        class_names: the K evaluation classes; class ``i`` has id ``i``.
        colors: ``(K, 3)`` uint8 colour of each class (for rendering id maps).
        lookup_colors: ``(M, 3)`` uint8 colours recognised in label images.
        lookup_ids: ``(M,)`` class id of each lookup colour (``ignore_index`` for void).
        ignore_index: ground-truth value that is not scored.
    """

    name: str
    class_names: tuple[str, ...]
    colors: np.ndarray
    lookup_colors: np.ndarray
    lookup_ids: np.ndarray
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_palette(
        cls, name: str, class_names: Sequence[str], palette: np.ndarray | Sequence[Sequence[int]]
    ) -> LabelSpace:
        """A label space whose label images use exactly one colour per class."""
        colors = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        if len(colors) != len(class_names):
            raise ValueError(f"{len(class_names)} class names for {len(colors)} palette colours")
        return cls(
            name=name,
            class_names=tuple(class_names),
            colors=colors,
            lookup_colors=colors,
            lookup_ids=np.arange(len(colors), dtype=np.int64),
        )

    def to_ids(self, image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Class ids of a colour label image (nearest lookup colour, see :func:`nearest_palette`)."""
        return nearest_palette(image, self.lookup_colors, self.lookup_ids)

    def colorize(self, ids: np.ndarray) -> np.ndarray:
        """``(..., H, W)`` ids -> ``(..., H, W, 3)`` uint8 colours (ignored/unknown ids: black)."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = self.colors
        return lut[np.clip(np.asarray(ids), 0, 255).astype(np.int64)]


@functools.lru_cache(maxsize=1)
def _cityscapes_classes() -> tuple[Any, ...]:
    # The official Cityscapes label table (cityscapesScripts labels.py), as torchvision ships it.
    from torchvision.datasets import Cityscapes

    return tuple(Cityscapes.classes)


def cityscapes_label_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes label ids (0..33, ``*_labelIds.png``) -> train ids (0..18, void = 255)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for c in _cityscapes_classes():
        if c.id >= 0:
            lut[c.id] = c.train_id if 0 <= c.train_id < 255 else IGNORE_INDEX
    return lut[np.clip(np.asarray(label_ids), 0, 255).astype(np.int64)]


@functools.lru_cache(maxsize=1)
def _cityscapes_space() -> LabelSpace:
    classes = [c for c in _cityscapes_classes() if c.id >= 0]
    train = sorted((c for c in classes if 0 <= c.train_id < 255), key=lambda c: c.train_id)
    # Every colour of the label table; a colour shared by a scored and a void class
    # (pole / polegroup) maps to the scored class.
    lookup: dict[tuple[int, int, int], int] = {}
    for c in classes:
        tid = c.train_id if 0 <= c.train_id < 255 else IGNORE_INDEX
        if tuple(c.color) not in lookup or lookup[tuple(c.color)] == IGNORE_INDEX:
            lookup[tuple(c.color)] = tid
    return LabelSpace(
        name="cityscapes",
        class_names=tuple(c.name for c in train),
        colors=np.array([c.color for c in train], dtype=np.uint8),
        lookup_colors=np.array(list(lookup), dtype=np.uint8),
        lookup_ids=np.array(list(lookup.values()), dtype=np.int64),
    )


def _scenes_space() -> LabelSpace:
    try:
        from spap.data.scenes import SCENE_CLASSES, SCENE_PALETTE
    except ImportError as exc:  # pragma: no cover - depends on the data package
        raise SpapError(f"the built-in scenes are not available: {exc}") from None
    return LabelSpace.from_palette("scenes", tuple(SCENE_CLASSES), SCENE_PALETTE)


_SPACES = {"cityscapes": _cityscapes_space, "scenes": _scenes_space}


def get_label_space(space: str | LabelSpace) -> LabelSpace:
    """A built-in label space by name (``"cityscapes"``: 19 train ids; ``"scenes"``), or ``space``."""
    if isinstance(space, LabelSpace):
        return space
    try:
        return _SPACES[space]()
    except KeyError:
        raise SpapError(
            f"unknown palette {space!r}; choose one of {', '.join(sorted(_SPACES))}"
        ) from None


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
