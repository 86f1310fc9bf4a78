from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from spap.data import (
    AlignedDataset,
    EpochSampler,
    ImageFolderDataset,
    UnalignedDataset,
    build_dataset,
    detect_layout,
)
from spap.errors import ConfigError, DataError


@pytest.fixture
def unaligned(tmp_path: Path, write_rgb) -> Path:
    tmp_path = tmp_path / "unaligned"
    for i in range(3):
        write_rgb(tmp_path / "trainA" / f"a{i}.png", 40, 40, seed=i)
    for i in range(5):
        write_rgb(tmp_path / "trainB" / f"b{i}.jpg", 30, 40, seed=10 + i)
    write_rgb(tmp_path / "testA" / "ta.png", seed=20)
    write_rgb(tmp_path / "testB" / "tb.png", seed=21)
    return tmp_path


@pytest.fixture
def aligned(tmp_path: Path) -> Path:
    """train/ images: left half X, right half 255 - X (so B == -A after scaling)."""
    rng = np.random.default_rng(0)
    tmp_path = tmp_path / "aligned"
    (tmp_path / "train").mkdir(parents=True)
    for i in range(4):
        a = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(np.concatenate([a, 255 - a], axis=1)).save(tmp_path / "train" / f"{i}.png")
    return tmp_path


def _check_item(x: torch.Tensor, size: int) -> None:
    assert x.dtype == torch.float32 and tuple(x.shape) == (3, size, size)
    assert x.min() >= -1 and x.max() <= 1


def test_unaligned_shapes_paths_and_length(unaligned: Path) -> None:
    ds = UnalignedDataset(unaligned, load_size=36, crop_size=32, seed=1)
    assert len(ds) == 5  # max(len A, len B)
    item = ds[4]
    _check_item(item["A"], 32)
    _check_item(item["B"], 32)
    assert Path(item["A_path"]).parent.name == "trainA" and item["A_path"].endswith("a1.png")
    assert Path(item["B_path"]).parent.name == "trainB" and item["skipped"] == 0
    rev = UnalignedDataset(unaligned, direction="BtoA", load_size=36, crop_size=32)
    assert Path(rev[0]["A_path"]).parent.name == "trainB"
    assert Path(rev[0]["B_path"]).parent.name == "trainA"
    test = UnalignedDataset(unaligned, phase="test", load_size=24, crop_size=24)
    assert len(test) == 1 and test[0]["A_path"].endswith("ta.png")


def test_unaligned_b_index_random_or_serial(unaligned: Path) -> None:
    ds = UnalignedDataset(unaligned, load_size=32, crop_size=32, seed=0)
    picks = {Path(ds[(e, 0)]["B_path"]).name for e in range(12)}
    assert len(picks) > 1  # B drawn at random per (seed, epoch, index)
    serial = UnalignedDataset(unaligned, load_size=32, crop_size=32, serial_batches=True)
    assert [Path(serial[i]["B_path"]).name for i in range(5)] == [f"b{i}.jpg" for i in range(5)]


def test_items_are_a_function_of_seed_epoch_index(unaligned: Path) -> None:
    ds = UnalignedDataset(unaligned, load_size=40, crop_size=24, seed=3)
    torch.manual_seed(0)
    a = ds[(2, 1)]
    torch.manual_seed(99)
    b = UnalignedDataset(unaligned, load_size=40, crop_size=24, seed=3)[(2, 1)]
    assert torch.equal(a["A"], b["A"]) and torch.equal(a["B"], b["B"])
    assert a["B_path"] == b["B_path"]
    assert torch.equal(ds[1]["A"], ds[(0, 1)]["A"])  # int index = epoch 0
    assert torch.equal(ds[-1]["A"], ds[4]["A"])
    other = [ds[(e, 1)]["A"] for e in range(3, 8)]
    assert any(not torch.equal(a["A"], o) for o in other)
    with pytest.raises(IndexError):
        ds[5]


def test_dataloader_workers_do_not_change_batches(unaligned: Path) -> None:
    ds = UnalignedDataset(unaligned, load_size=40, crop_size=16, seed=7)

    def batches(workers: int) -> list[dict]:
        sampler = EpochSampler(len(ds), seed=7)
        sampler.set_epoch(1)
        loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers)
        return list(loader)

    b0, b2 = batches(0), batches(2)
    assert len(b0) == len(b2) == 3
    for x, y in zip(b0, b2):
        assert torch.equal(x["A"], y["A"]) and torch.equal(x["B"], y["B"])
        assert x["A_path"] == y["A_path"] and x["B_path"] == y["B_path"]
        assert torch.equal(x["skipped"], y["skipped"])


def test_aligned_halves_share_crop_and_flip(aligned: Path) -> None:
    ds = AlignedDataset(aligned, preprocess="crop", load_size=24, crop_size=16, flip=True)
    assert len(ds) == 4
    flips = set()
    for e in range(6):
        item = ds[(e, e % 4)]
        _check_item(item["A"], 16)
        assert torch.allclose(item["B"], -item["A"], atol=1e-6)  # same crop and flip
        assert item["A_path"] == item["B_path"]
        src = np.asarray(Image.open(item["A_path"]))[:, :24].astype(np.float32) / 127.5 - 1
        a = item["A"].permute(1, 2, 0).numpy()
        found = any(
            np.allclose(win, a, atol=1e-6) or np.allclose(win[:, ::-1], a, atol=1e-6)
            for win in (src[t : t + 16, s : s + 16] for t in range(9) for s in range(9))
        )
        assert found
        flips.add(
            any(
                np.allclose(src[t : t + 16, s : s + 16][:, ::-1], a, atol=1e-6)
                for t in range(9)
                for s in range(9)
            )
        )
    assert flips == {True, False}
    rev = AlignedDataset(aligned, direction="BtoA", preprocess="none", flip=False)
    fwd = AlignedDataset(aligned, direction="AtoB", preprocess="none", flip=False)
    assert torch.equal(rev[0]["A"], fwd[0]["B"]) and tuple(fwd[0]["A"].shape) == (3, 24, 24)


@pytest.mark.parametrize("preprocess", ["resize_and_crop", "crop", "scale_width_and_crop"])
def test_aligned_preprocess_options(aligned: Path, preprocess: str) -> None:
    ds = AlignedDataset(aligned, preprocess=preprocess, load_size=32, crop_size=16)
    item = ds[(1, 2)]
    _check_item(item["A"], 16)
    _check_item(item["B"], 16)


def test_image_folder_recursive(tmp_path: Path, write_rgb) -> None:
    write_rgb(tmp_path / "x" / "1.png", 50, 40)
    write_rgb(tmp_path / "y" / "z" / "2.jpg", 20, 20)
    ds = ImageFolderDataset(tmp_path, size=16, seed=0)
    assert len(ds) == 2
    item = ds[(0, 1)]
    _check_item(item["image"], 16)
    assert item["path"].endswith("2.jpg") and item["skipped"] == 0
    with pytest.raises(DataError, match="no image files"):
        ImageFolderDataset(tmp_path, size=16, recursive=False)
    crop = ImageFolderDataset(tmp_path, size=16, preprocess="crop")
    _check_item(crop[0]["image"], 16)


def test_build_dataset_layouts(unaligned: Path, aligned: Path, tmp_path: Path, write_rgb) -> None:
    assert isinstance(
        build_dataset("auto", unaligned, load_size=32, crop_size=32), UnalignedDataset
    )
    assert isinstance(build_dataset("auto", aligned, load_size=24, crop_size=24), AlignedDataset)
    assert isinstance(build_dataset("aligned", aligned, load_size=24, crop_size=24), AlignedDataset)
    assert isinstance(build_dataset("folder", unaligned / "trainA", size=16), ImageFolderDataset)
    assert detect_layout(unaligned, "test") == "unaligned"
    flat = tmp_path / "flat"
    write_rgb(flat / "1.png")
    with pytest.raises(DataError, match="trainA/ and trainB/"):
        build_dataset("auto", flat)
    with pytest.raises(ConfigError, match="layout"):
        build_dataset("pairs", flat)


def test_bad_files_skipped_counted_and_warned(bad_folder, caplog) -> None:
    root, good, bad = bad_folder["root"], bad_folder["good"], bad_folder["bad"]
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderDataset(root, size=16, preprocess="resize_and_crop", seed=0)
    assert {Path(p).name for p, _ in ds.images.excluded} == {"k_empty.jpg", "l_broken.png"}
    for path in bad_folder["excluded"]:
        assert str(path) in caplog.text  # warned at construction
    assert len(ds) == len(good) + len(bad)
    names = [p.name for p in ds.images.files]
    caplog.clear()
    used, total_skipped = set(), 0
    with caplog.at_level(logging.WARNING):
        for i, name in enumerate(names):
            item = ds[(0, i)]
            _check_item(item["image"], 16)
            used.add(Path(item["path"]).name)
            total_skipped += item["skipped"]
            if root / name in good:
                assert item["skipped"] == 0 and item["path"].endswith(name)
            else:
                assert item["skipped"] >= 1 and Path(item["path"]) in good
    assert used == {p.name for p in good}  # every usable file used, converted if needed
    for path in bad:
        assert f"skipping unreadable image {path}" in caplog.text
    # g, h, i, j are consecutive bad files followed by no good file: each wraps to a_good.png
    assert total_skipped == 4 + 3 + 2 + 1
    warnings_before = caplog.text.count("skipping unreadable")
    again = sum(ds[(1, i)]["skipped"] for i in range(len(ds)))
    assert again == total_skipped  # counted every time, warned once per file
    assert caplog.text.count("skipping unreadable") == warnings_before


def test_bad_files_in_unaligned_workers(bad_folder, unaligned: Path) -> None:
    import shutil

    shutil.rmtree(unaligned / "trainB")
    shutil.copytree(bad_folder["root"], unaligned / "trainB", symlinks=True)
    ds = UnalignedDataset(unaligned, load_size=16, crop_size=16, serial_batches=True)
    counts = []
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=4, sampler=EpochSampler(len(ds)), num_workers=workers)
        counts.append(sum(int(b["skipped"].sum()) for b in loader))
    assert counts[0] == counts[1] == 10


@pytest.mark.parametrize("case", ["missing", "empty", "only_bad", "only_excluded"])
def test_unusable_folder_fails_at_construction(tmp_path: Path, bad_folder, case: str) -> None:
    folder = tmp_path / "imgs"
    if case != "missing":
        folder.mkdir()
    if case == "only_bad":
        for p in bad_folder["bad"]:
            (folder / p.name).write_bytes(p.read_bytes())
    if case == "only_excluded":
        (folder / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match=str(folder)):
        ImageFolderDataset(folder, size=16)


def test_unaligned_missing_side_names_folder(unaligned: Path) -> None:
    import shutil

    shutil.rmtree(unaligned / "trainB")
    with pytest.raises(DataError, match="trainB"):
        UnalignedDataset(unaligned, load_size=32, crop_size=32)


def test_aligned_too_narrow_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    Image.new("RGB", (1, 8)).save(tmp_path / "train" / "a.png")
    Image.new("RGB", (16, 8), (255, 0, 0)).save(tmp_path / "train" / "b.png")
    ds = AlignedDataset(tmp_path, preprocess="none", flip=False)
    item = ds[0]
    assert item["skipped"] == 1 and item["A_path"].endswith("b.png")
    assert tuple(item["A"].shape) == (3, 8, 8)
