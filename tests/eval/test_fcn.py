"""FCN-score of a translator on an aligned test set, with oracle and broken translators."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from spap.data.labels import nearest_palette
from spap.errors import SpapError
from spap.eval.fcn import fcn_score, write_json

from .conftest import TOY_CLASSES, TOY_PHOTO

LABEL_COLORS = np.array(list(TOY_CLASSES.values()))
PHOTO_COLORS = np.array(list(TOY_PHOTO.values()))


class Oracle:
    """Labels -> photo by class colour, photo -> labels by the nearest class photo colour."""

    def __init__(self, labels_domain: str = "A") -> None:
        self.to_photo = "AtoB" if labels_domain == "A" else "BtoA"
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def translate(self, batch: torch.Tensor, direction: str = "AtoB") -> torch.Tensor:
        self.calls.append((direction, tuple(batch.shape)))
        rgb = (batch + 1) * 127.5
        if direction == self.to_photo:
            src, dst = LABEL_COLORS, PHOTO_COLORS
        else:
            src, dst = PHOTO_COLORS, LABEL_COLORS
        idx = nearest_palette(rgb, src)
        out = torch.as_tensor(dst, dtype=torch.float32)[idx].permute(0, 3, 1, 2)
        return out / 127.5 - 1


class Constant:
    def translate(self, batch: torch.Tensor, direction: str = "AtoB") -> torch.Tensor:
        sky = torch.tensor(TOY_CLASSES[10], dtype=torch.float32).view(1, 3, 1, 1) / 127.5 - 1
        return sky.expand(batch.shape[0], 3, *batch.shape[2:]).clone()


def _gt(aligned_dir) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.open(p)) for p in sorted((aligned_dir / "test_ids").glob("*.png"))]
    )


def test_oracle_translator(aligned_dir, segnet_ckpt, tmp_path) -> None:
    oracle = Oracle()
    res = fcn_score(
        oracle, aligned_dir, segnet_ckpt, batch_size=4, device="cpu", save_dir=tmp_path / "out"
    )
    assert res["num_images"] == 6 and res["size"] == 16 and res["palette"] == "cityscapes"
    p2l = res["photo2labels"]
    assert p2l["pixel_acc"] == 1.0 and p2l["class_acc"] == 1.0 and p2l["class_iou"] == 1.0
    # the seg net sees clean class colours: as good as on real photos, or better
    assert res["labels2photo"]["pixel_acc"] >= 0.9
    assert res["real_photo"]["pixel_acc"] >= 0.9
    assert {d for d, _ in oracle.calls} == {"AtoB", "BtoA"}
    assert (tmp_path / "out" / "labels2photo" / "000.png").is_file()
    assert (tmp_path / "out" / "photo2labels" / "005.png").is_file()
    path = write_json(res, tmp_path / "fcn.json")
    assert '"photo2labels"' in path.read_text()


def test_constant_translator_scores_the_sky_fraction(aligned_dir, segnet_ckpt) -> None:
    res = fcn_score(
        Constant(), aligned_dir, direction="photo2labels", include_real=False, device="cpu"
    )
    gt = _gt(aligned_dir)
    assert set(res) >= {"photo2labels"} and "labels2photo" not in res
    s = res["photo2labels"]
    assert s["pixel_acc"] == pytest.approx((gt == 10).mean())
    assert s["class_acc"] == pytest.approx(1 / 3)  # sky 1.0, road 0, vegetation 0
    assert s["class_iou"] == pytest.approx((gt == 10).mean() / 3)


def test_labels_on_the_right_and_resizing(aligned_dir, segnet_ckpt, tmp_path) -> None:
    swapped = tmp_path / "swapped"
    (swapped / "test").mkdir(parents=True)
    for p in sorted((aligned_dir / "test").glob("*.png")):
        im = np.asarray(Image.open(p))
        w = im.shape[1] // 2
        Image.fromarray(np.concatenate([im[:, w:], im[:, :w]], 1)).save(swapped / "test" / p.name)
    shutil.copytree(aligned_dir / "test_ids", swapped / "test_ids")
    oracle = Oracle("B")
    res = fcn_score(
        oracle, swapped, segnet_ckpt, labels_domain="B", size=32, batch_size=6, device="cpu"
    )
    assert res["size"] == 32 and oracle.calls[0][1] == (6, 3, 32, 32)
    assert {d for d, _ in oracle.calls} == {"AtoB", "BtoA"}
    assert res["photo2labels"]["pixel_acc"] > 0.95  # scored back at the 16x16 ground truth


def test_errors(aligned_dir, segnet_ckpt) -> None:
    with pytest.raises(SpapError, match="needs a segmentation net"):
        fcn_score(Oracle(), aligned_dir, None, direction="labels2photo")
    with pytest.raises(SpapError, match="direction"):
        fcn_score(Oracle(), aligned_dir, segnet_ckpt, direction="sideways")
    with pytest.raises(SpapError, match="not a translation model"):
        fcn_score(object(), aligned_dir, segnet_ckpt)
