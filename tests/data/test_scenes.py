from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spap.cli import main as cli_main
from spap.data import AlignedDataset, UnalignedDataset, build_dataset
from spap.data.scenes import (
    SCENE_CLASSES,
    SCENE_PALETTE,
    ids_to_rgb,
    render_scene,
    rgb_to_ids,
    scene_statistics,
    write_scenes,
)
from spap.errors import ConfigError, DataError
from spap.seeds import derive_seed

C = {name: i for i, name in enumerate(SCENE_CLASSES)}


def test_classes_and_palette() -> None:
    assert len(SCENE_CLASSES) >= 6 and len(set(SCENE_CLASSES)) == len(SCENE_CLASSES)
    assert SCENE_PALETTE.dtype == np.uint8 and SCENE_PALETTE.shape == (len(SCENE_CLASSES), 3)
    assert len({tuple(c) for c in SCENE_PALETTE.tolist()}) == len(SCENE_CLASSES)
    # Cityscapes colours
    assert tuple(SCENE_PALETTE[C["road"]]) == (128, 64, 128)
    assert tuple(SCENE_PALETTE[C["car"]]) == (0, 0, 142)
    assert tuple(SCENE_PALETTE[C["sky"]]) == (70, 130, 180)


@pytest.mark.parametrize("size", [32, 48, 256])
def test_render_shapes_palette_and_determinism(size: int) -> None:
    label, ids, photo = render_scene(7, size)
    assert label.shape == photo.shape == (size, size, 3) and ids.shape == (size, size)
    assert label.dtype == ids.dtype == photo.dtype == np.uint8
    colours = {tuple(c) for c in label.reshape(-1, 3).tolist()}
    assert colours <= {tuple(c) for c in SCENE_PALETTE.tolist()}  # only palette colours
    assert np.array_equal(ids_to_rgb(ids), label) and np.array_equal(rgb_to_ids(label), ids)
    again = render_scene(7, size)
    assert all(np.array_equal(a, b) for a, b in zip((label, ids, photo), again))  # bitwise
    other = render_scene(8, size)
    assert not np.array_equal(other[2], photo)


def test_size_limits() -> None:
    for bad in (31, 257, 64.0):
        with pytest.raises(ConfigError, match="size"):
            render_scene(0, bad)


def test_context_and_scale_by_design() -> None:
    """Road/sidewalk and terrain/vegetation: same mean colour, different texture scale."""
    stats = scene_statistics(n=40, size=96)
    assert min(stats["class_share"].values()) > 0  # every class occurs
    road, green = stats["road/sidewalk"], stats["terrain/vegetation"]
    assert road["scenes"] >= 20 and green["scenes"] >= 10
    assert road["colour_bias"] < 5 and green["colour_bias"] < 8  # shared mean colours
    assert road["colour_gap"] < 8 and green["colour_gap"] < 12
    assert road["fine_ratio"] > 2 and green["fine_ratio"] > 2  # but finer texture


def test_cars_and_furniture_look_alike() -> None:
    """The class of a street object comes from its surroundings, not its look."""
    colours = {C["car"]: [], C["pole"]: []}
    for seed in range(60):
        _, ids, photo = render_scene(seed, 64)
        for cls, acc in colours.items():
            if (ids == cls).sum() > 6:
                acc.append(photo[ids == cls].mean(0))
    car, furniture = np.array(colours[C["car"]]), np.array(colours[C["pole"]])
    assert len(car) > 10 and len(furniture) > 10
    assert np.abs(car.mean(0) - furniture.mean(0)).max() < 30


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_write_scenes_layouts(tmp_path: Path) -> None:
    out = tmp_path / "scenes"
    meta = write_scenes(out, n=12, size=32, seed=3, test_fraction=0.25)
    assert (meta["n_train"], meta["n_test"], meta["n_val"]) == (9, 3, 1)
    counts = {d: len(list((out / d).glob("*.png"))) for d in meta_dirs()}
    assert counts == {
        "trainA": 9, "trainB": 9, "train": 9, "train_ids": 9,
        "testA": 3, "testB": 3, "test": 3, "test_ids": 3,
        "valA": 1, "valB": 1, "val": 1, "val_ids": 1,
    }  # fmt: skip
    on_disk = json.loads((out / "scenes.json").read_text())
    assert on_disk["classes"] == list(SCENE_CLASSES)
    assert on_disk["palette"] == SCENE_PALETTE.tolist() and on_disk["size"] == 32

    names = sorted(p.name for p in (out / "train").glob("*.png"))
    aligned = [_png(out / "train" / k) for k in names]
    assert all(a.shape == (32, 64, 3) for a in aligned)
    for k, a in zip(names, aligned):
        assert np.array_equal(ids_to_rgb(_png(out / "train_ids" / k)), a[:, :32])
    # trainA / trainB hold the same scenes as train/, under shuffled, unpaired names
    lefts = sorted(a[:, :32].tobytes() for a in aligned)
    rights = sorted(a[:, 32:].tobytes() for a in aligned)
    assert sorted(_png(p).tobytes() for p in (out / "trainA").glob("*.png")) == lefts
    assert sorted(_png(p).tobytes() for p in (out / "trainB").glob("*.png")) == rights
    paired = sum(
        np.array_equal(_png(out / "trainB" / k), a[:, 32:]) for k, a in zip(names, aligned)
    )
    assert paired < len(names) // 2
    # val and test names are pairs, with ground-truth ids
    for split in ("test", "val"):
        for k in sorted(p.name for p in (out / split).glob("*.png")):
            ab = _png(out / split / k)
            assert np.array_equal(_png(out / f"{split}A" / k), ab[:, :32])
            assert np.array_equal(_png(out / f"{split}B" / k), ab[:, 32:])
            ids = _png(out / f"{split}_ids" / k)
            assert ids.ndim == 2 and ids.max() < len(SCENE_CLASSES)
            assert np.array_equal(ids_to_rgb(ids), ab[:, :32])


def test_validation_split_is_held_out_and_leaves_train_test_unchanged(tmp_path: Path) -> None:
    write_scenes(tmp_path / "v", n=20, size=32, seed=4, val_fraction=0.2)
    write_scenes(tmp_path / "none", n=20, size=32, seed=4, val_fraction=0.0)
    assert not any((tmp_path / "none" / d).exists() for d in ("valA", "valB", "val", "val_ids"))
    # train and test files do not depend on the validation split
    for split in ("trainA", "trainB", "testA", "testB", "train", "test", "train_ids", "test_ids"):
        for f in sorted((tmp_path / "none" / split).iterdir()):
            assert f.read_bytes() == (tmp_path / "v" / split / f.name).read_bytes()
    # the validation scenes are their own seed stream: none is a train or test scene
    seen = {
        _png(f).tobytes() for split in ("train", "test") for f in (tmp_path / "v" / split).iterdir()
    }
    val = sorted((tmp_path / "v" / "val").iterdir())
    assert len(val) == 4 and not seen & {_png(f).tobytes() for f in val}
    label, _, photo = render_scene(derive_seed(4, 3, 2), 32)
    assert np.array_equal(
        _png(tmp_path / "v" / "val" / "00002.png"), np.concatenate([label, photo], 1)
    )
    # a rewrite without validation removes the old val folders (no empty split left behind)
    write_scenes(tmp_path / "v", n=20, size=32, seed=4, val_fraction=0.0)
    assert not (tmp_path / "v" / "valA").exists()
    ds = build_dataset("auto", tmp_path / "v", "train", load_size=32, crop_size=32)
    assert len(ds) == 18


def meta_dirs() -> tuple[str, ...]:
    return ("trainA", "trainB", "testA", "testB", "train", "test", "train_ids", "test_ids",
            "valA", "valB", "val", "val_ids")  # fmt: skip


def test_write_scenes_deterministic_prefix_and_rewrite(tmp_path: Path) -> None:
    write_scenes(tmp_path / "a", n=10, size=32, seed=1)
    write_scenes(tmp_path / "b", n=10, size=32, seed=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 45  # 9 train + 1 test + 1 val scenes: 11 x 4 PNGs, scenes.json
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    write_scenes(tmp_path / "c", n=20, size=32, seed=1)  # a larger n extends the train split
    for k in range(9):
        name = f"{k:05d}.png"
        assert (tmp_path / "a/train" / name).read_bytes() == (
            tmp_path / "c/train" / name
        ).read_bytes()
    write_scenes(tmp_path / "c", n=4, size=32, seed=1)  # rewriting replaces the old output
    assert len(list((tmp_path / "c" / "trainB").iterdir())) == 3


def test_write_scenes_refuses_foreign_folder_and_bad_args(tmp_path: Path) -> None:
    (tmp_path / "x" / "train").mkdir(parents=True)
    (tmp_path / "x" / "train" / "mine.png").write_bytes(b"keep")
    with pytest.raises(DataError, match="not a scenes dataset"):
        write_scenes(tmp_path / "x", n=4, size=32)
    assert (tmp_path / "x" / "train" / "mine.png").read_bytes() == b"keep"
    with pytest.raises(ConfigError, match="n "):
        write_scenes(tmp_path / "y", n=1, size=32)
    with pytest.raises(ConfigError, match="test_fraction"):
        write_scenes(tmp_path / "y", n=4, size=32, test_fraction=1.0)
    with pytest.raises(ConfigError, match="val_fraction"):
        write_scenes(tmp_path / "y", n=4, size=32, val_fraction=1.0)


def test_datasets_read_scenes_and_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    code = cli_main(["data", "scenes", "--out", str(out), "--n", "6", "--size", "32",
                     "--seed", "2", "--no-progress"])  # fmt: skip
    assert code == 0 and "5 train + 1 test" in capsys.readouterr().out
    ds = build_dataset("auto", out, load_size=32, crop_size=32)
    assert isinstance(ds, UnalignedDataset) and len(ds) == 5
    item = AlignedDataset(out, preprocess="none", flip=False)[0]
    assert tuple(item["A"].shape) == (3, 32, 32)
    label = ((item["A"].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    assert np.array_equal(ids_to_rgb(rgb_to_ids(label)), label)
    assert cli_main(["data", "scenes", "--out", str(out), "--size", "16"]) == 2
