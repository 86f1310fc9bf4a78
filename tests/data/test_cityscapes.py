"""``spap data prepare cityscapes`` on a miniature folder in the official layout, then
``spap train``, ``spap seg train`` and ``spap eval fcn`` on what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import Cityscapes

from spap.cli import main as cli
from spap.data import build_dataset
from spap.data.cityscapes import prepare_cityscapes
from spap.data.labels import cityscapes_label_to_train_ids, get_label_space
from spap.data.pairs import AlignedPairs
from spap.errors import DataError

COLORS = {c.id: c.color for c in Cityscapes.classes if c.id >= 0}
# label ids: road 7, sidewalk 8, building 11, vegetation 21, sky 23, car 26; void 0, 1
PHOTO = {7: (90, 90, 90), 8: (150, 140, 140), 11: (120, 80, 60), 21: (40, 120, 30),
         23: (150, 190, 230), 26: (20, 20, 160), 0: (0, 0, 0), 1: (30, 30, 30)}  # fmt: skip


def _scene(rng: np.random.Generator, h: int = 32, w: int = 64) -> np.ndarray:
    ids = np.full((h, w), 7, np.uint8)  # road
    ids[: rng.integers(h // 4, h // 2)] = 23  # sky
    ids[h // 4 : h // 2, : rng.integers(w // 4, w // 2)] = 11  # building
    x = int(rng.integers(0, w - 12))
    ids[h // 2 : h // 2 + 6, x : x + 12] = 26  # car
    ids[h // 2 - 6 : h // 2, w - 10 :] = 21  # vegetation
    ids[h // 2 + 6 : h // 2 + 9] = 8  # sidewalk
    ids[-3:] = 1  # ego vehicle (void)
    ids[-1, :4] = 0  # unlabeled (void)
    return ids


def make_official(root: Path, seed: int = 0) -> Path:
    """leftImg8bit/ and gtFine/ as unzipped from the official archives, in miniature."""
    rng = np.random.default_rng(seed)
    layout = {"train": {"aachen": 3, "bochum": 2}, "val": {"frankfurt": 2}, "test": {"berlin": 1}}
    for split, cities in layout.items():
        for city, n in cities.items():
            left = root / "leftImg8bit" / split / city
            gt = root / "gtFine" / split / city
            left.mkdir(parents=True)
            gt.mkdir(parents=True)
            for i in range(n):
                ident = f"{city}_{i:06d}_000019"
                ids = _scene(rng)
                photo = np.zeros((*ids.shape, 3), np.float64)
                color = np.zeros((*ids.shape, 4), np.uint8)
                color[..., 3] = 255  # the official colour maps are RGBA
                for lid in np.unique(ids):
                    photo[ids == lid] = PHOTO[int(lid)]
                    color[ids == lid, :3] = COLORS[int(lid)]
                photo = np.clip(photo + rng.normal(0, 6, photo.shape), 0, 255).astype(np.uint8)
                Image.fromarray(photo).save(left / f"{ident}_leftImg8bit.png")
                if split == "test":
                    continue  # the official test split has no usable ground truth
                Image.fromarray(color).save(gt / f"{ident}_gtFine_color.png")
                Image.fromarray(ids).save(gt / f"{ident}_gtFine_labelIds.png")
                Image.fromarray(ids.astype(np.uint16) * 1000).save(
                    gt / f"{ident}_gtFine_instanceIds.png"
                )
                (gt / f"{ident}_gtFine_polygons.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    return make_official(tmp_path_factory.mktemp("cityscapes_official"))


def test_prepare_writes_both_layouts_and_train_ids(official: Path, tmp_path: Path) -> None:
    out = tmp_path / "cs"
    assert cli(["data", "prepare", "cityscapes", "--from", str(official), "--out", str(out),
                "--size", "16", "--no-progress"]) == 0  # fmt: skip
    names = {p.name for p in (out / "train").iterdir()}
    assert names == {f"aachen_{i:06d}_000019.png" for i in range(3)} | {
        f"bochum_{i:06d}_000019.png" for i in range(2)
    }
    for sub in ("trainA", "trainB", "train_ids"):
        assert {p.name for p in (out / sub).iterdir()} == names
    assert len(list((out / "test").iterdir())) == 2  # val -> test, as the reference
    assert not any("berlin" in p.name for p in out.rglob("*.png"))  # official test: skipped
    ident = "aachen_000001_000019"
    side = np.asarray(Image.open(out / "train" / f"{ident}.png"))
    assert side.shape == (16, 32, 3)
    photo, labels = side[:, :16], side[:, 16:]  # photo left, labels right (pix2pix's layout)
    assert np.array_equal(photo, np.asarray(Image.open(out / "trainA" / f"{ident}.png")))
    assert np.array_equal(labels, np.asarray(Image.open(out / "trainB" / f"{ident}.png")))
    src_ids = np.asarray(
        Image.open(official / "gtFine/train/aachen" / f"{ident}_gtFine_labelIds.png").resize(
            (16, 16), Image.NEAREST
        )
    )
    train_ids = np.asarray(Image.open(out / "train_ids" / f"{ident}.png"))
    assert np.array_equal(train_ids, cityscapes_label_to_train_ids(src_ids))
    assert set(np.unique(train_ids)) <= {0, 1, 2, 8, 10, 13, 255}
    space = get_label_space("cityscapes")
    # nearest-resized colours are exact class colours: the palette gives back the ids
    assert np.array_equal(space.to_ids(labels)[train_ids != 255], train_ids[train_ids != 255])
    meta = json.loads((out / "cityscapes.json").read_text())
    assert meta["counts"] == {"train": 5, "test": 2} and meta["size"] == 16
    # the layouts spap reads: unaligned (auto), aligned, and the FCN ground truth
    assert build_dataset("auto", out, load_size=16, crop_size=16)[0]["A"].shape == (3, 16, 16)
    assert len(build_dataset("aligned", out, load_size=16, crop_size=16)) == 5
    pairs = AlignedPairs(out, space, "test", labels_domain="B")
    assert pairs.ids_dir == out / "test_ids" and pairs[0]["ids"].shape == (16, 16)


def test_bicubic_labels_blend_like_the_reference_script(official: Path, tmp_path: Path) -> None:
    prepare_cityscapes(official, tmp_path / "b", size=16, label_filter="bicubic", splits=("val",))
    labels = np.asarray(Image.open(next((tmp_path / "b" / "testB").iterdir())))
    palette = {tuple(c) for c in COLORS.values()}
    blended = sum(tuple(p) not in palette for p in labels.reshape(-1, 3))
    assert blended > 0  # colours between classes at their borders


def test_prepare_errors_are_one_line(official: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "only_photos" / "leftImg8bit").mkdir(parents=True)
    args = ["data", "prepare", "cityscapes", "--out", str(tmp_path / "o"), "--no-progress"]
    assert cli([*args, "--from", str(tmp_path / "only_photos")]) == 2
    err = capsys.readouterr().err
    assert "no gtFine/ folder in" in err and "gtFine_trainvaltest.zip" in err
    assert err.count("\n") == 1
    broken = make_official(tmp_path / "broken", seed=1)
    victim = broken / "gtFine/val/frankfurt/frankfurt_000001_000019_gtFine_labelIds.png"
    victim.unlink()
    assert cli([*args, "--from", str(broken)]) == 2
    assert f"has no ground truth: {victim} is missing" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    (foreign / "trainA").mkdir(parents=True)
    (foreign / "trainA" / "mine.png").write_bytes(b"x")
    with pytest.raises(DataError, match="already holds trainA/ and was not written"):
        prepare_cityscapes(official, foreign, size=16)
    assert (foreign / "trainA" / "mine.png").exists()


def test_prepare_then_train_then_fcn_score(official: Path, tmp_path: Path) -> None:
    out, run, seg = tmp_path / "cs", tmp_path / "run", tmp_path / "seg"
    assert cli(["data", "prepare", "cityscapes", "--from", str(official), "--out", str(out),
                "--size", "32", "--no-progress"]) == 0  # fmt: skip
    tiny = ["model.ngf=4", "model.ndf=4", "model.n_blocks=1", "model.n_layers_d=1",
            "train.n_epochs=1", "train.n_epochs_decay=1", "train.pool_size=2",
            "run.num_workers=0", "run.sample_every=100", "run.checkpoint_every=100"]  # fmt: skip
    assert cli(["train", "cyclegan", "--data", str(out), "--out", str(run), "--size", "32",
                "--steps", "3", "--config", "cyclegan/cityscapes", *tiny]) == 0  # fmt: skip
    assert cli(["seg", "train", "--data", str(out), "--out", str(seg), "--labels-domain", "B",
                "--size", "32", "--steps", "8", "--width", "8", "--batch-size", "4",
                "--device", "cpu"]) == 0  # fmt: skip
    scores = tmp_path / "fcn.json"
    assert cli(["eval", "fcn", "--checkpoint", str(run), "--data", str(out), "--segnet", str(seg),
                "--labels-domain", "B", "--size", "32", "--device", "cpu",
                "--json", str(scores)]) == 0  # fmt: skip
    result = json.loads(scores.read_text())
    assert result["num_images"] == 2 and result["palette"] == "cityscapes"
    for key in ("labels2photo", "photo2labels", "real_photo"):
        assert 0.0 <= result[key]["pixel_acc"] <= 1.0
