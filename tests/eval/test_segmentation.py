"""Confusion-matrix scores against hand-computed cases; palettes; nearest colour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spap.data.labels import (
    LabelSpace,
    cityscapes_label_to_train_ids,
    get_label_space,
    nearest_palette,
)
from spap.eval.segmentation import (
    ConfusionMatrix,
    format_scores_table,
    score_labels,
    scores_from_confusion,
)


def test_perfect_prediction_scores_one() -> None:
    gt = np.random.default_rng(0).integers(0, 5, (2, 16, 16))
    s = score_labels(gt, gt.copy(), num_classes=5)
    assert s["pixel_acc"] == s["class_acc"] == s["class_iou"] == 1.0
    assert all(c["acc"] == 1.0 and c["iou"] == 1.0 for c in s["per_class"])


def test_known_mixture() -> None:
    gt = np.array([0, 0, 1, 1, 2, 2, 255])
    pred = np.array([0, 1, 1, 1, 2, 0, 2])  # the last pixel is ignored
    s = score_labels(pred, gt, num_classes=3)
    # confusion (rows gt): [[1,1,0],[0,2,0],[1,0,1]]
    assert s["num_pixels"] == 6
    assert s["pixel_acc"] == pytest.approx(4 / 6)
    assert s["class_acc"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert s["class_iou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert [c["iou"] for c in s["per_class"]] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert [c["gt_pixels"] for c in s["per_class"]] == [2, 2, 2]
    assert [c["pred_pixels"] for c in s["per_class"]] == [2, 3, 1]


def test_absent_classes_and_unknown_predictions() -> None:
    gt = np.array([0, 0, 1, 1])
    # class 2: never in gt nor predicted -> left out; class 3: predicted only -> IoU 0
    pred = np.array([0, 3, 1, 1])
    s = score_labels(pred, gt, num_classes=4)
    acc = [c["acc"] for c in s["per_class"]]
    iou = [c["iou"] for c in s["per_class"]]
    assert acc[0] == 0.5 and acc[1] == 1.0 and math.isnan(acc[2]) and math.isnan(acc[3])
    assert iou[0] == 0.5 and iou[1] == 1.0 and math.isnan(iou[2]) and iou[3] == 0.0
    assert s["class_acc"] == pytest.approx(0.75)
    assert s["class_iou"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # a prediction outside 0..K-1 (a void colour) counts as wrong, not as ignored
    s = score_labels(np.array([0, 255, 1, 7]), gt, num_classes=4)
    assert s["pixel_acc"] == pytest.approx(2 / 4)
    assert s["per_class"][0]["acc"] == 0.5 and s["per_class"][0]["iou"] == 0.5


def test_ignore_label_and_accumulation() -> None:
    cm = ConfusionMatrix(2, ignore_index=255)
    cm.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 255], [255, 1]]))
    cm.update(np.array([1, 0]), np.array([0, 255]))
    assert cm.matrix[:, :2].tolist() == [[1, 1], [0, 1]]
    s = cm.scores(["a", "b"])
    assert s["pixel_acc"] == pytest.approx(2 / 3)
    assert s["per_class"][1]["name"] == "b"
    # lists of per-image maps of different sizes
    s2 = score_labels([np.zeros((2, 2)), np.ones((3, 1))], [np.zeros((2, 2)), np.ones((3, 1))], 2)
    assert s2["pixel_acc"] == 1.0 and s2["num_pixels"] == 7
    with pytest.raises(ValueError):
        cm.update(np.zeros(3), np.zeros(4))
    assert math.isnan(scores_from_confusion(np.zeros((2, 2)))["pixel_acc"])


def test_nearest_palette_numpy_and_tensor() -> None:
    palette = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    img = np.array([[[10, 5, 0], [200, 30, 20]], [[20, 20, 250], [128, 0, 0]]], dtype=np.uint8)
    # (128,0,0): 128^2 to black vs 127^2 to red -> red
    assert nearest_palette(img, palette).tolist() == [[0, 1], [2, 1]]
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    out = nearest_palette(t, palette, ids=[255, 7, 3])
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 2)
    assert out[0].tolist() == [[255, 7], [3, 7]]


def test_cityscapes_space() -> None:
    cs = get_label_space("cityscapes")
    assert cs.num_classes == 19 and cs.class_names[0] == "road" and cs.class_names[-1] == "bicycle"
    assert tuple(cs.colors[13]) == (0, 0, 142)  # car
    img = np.array(
        [[[128, 64, 128], [153, 153, 153], [0, 0, 0], [111, 74, 0], [3, 2, 140], [105, 140, 37]]],
        dtype=np.uint8,
    )
    # road, pole (shares its colour with the void polegroup), void, void, car, vegetation
    assert cs.to_ids(img).tolist() == [[0, 5, 255, 255, 13, 8]]
    ids = np.arange(19).reshape(1, 19)
    assert cs.to_ids(cs.colorize(ids)).tolist() == ids.tolist()
    assert cityscapes_label_to_train_ids(np.array([7, 26, 0, 18, 33, 255])).tolist() == [
        0,
        13,
        255,
        255,
        18,
        255,
    ]


def test_custom_space_and_table() -> None:
    space = LabelSpace.from_palette("toy", ["sky", "road"], [[0, 0, 255], [90, 90, 90]])
    gt = space.to_ids(np.array([[[0, 0, 250], [80, 90, 95]]], dtype=np.uint8))
    assert gt.tolist() == [[0, 1]]
    s = score_labels(np.array([[0, 0]]), gt, 2, class_names=space.class_names)
    table = format_scores_table({"labels2photo": s}, per_class=True)
    assert "labels2photo" in table and "0.500" in table and "road" in table
    with pytest.raises(Exception, match="unknown palette"):
        get_label_space("nope")
