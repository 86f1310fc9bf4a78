"""Fixtures of the evaluation tests: a random-weight Inception file, tiny image folders."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image


def _random_inception(path: Path) -> Path:
    """torch-fidelity's Inception with random weights, saved as its weights file would be.

    Built without downloading (the weight loading of the constructor is stubbed out); convs
    get He-normal weights and BatchNorm statistics are set from one batch, so features
    spread out instead of vanishing and FID values are far from 0 for different images.
    """
    import torch_fidelity.feature_extractor_inceptionv3 as fi

    with (
        mock.patch.object(fi, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(fi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None),
    ):
        net = fi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g))
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _random_inception(tmp_path_factory.mktemp("weights") / "inception-random.pth")


def write_images(folder: Path, n: int, seed: int, size: int = 32, smooth: bool = True) -> Path:
    """``n`` PNGs: smooth colour blobs (``smooth``) or noise, deterministic for ``seed``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        if smooth:
            small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            im = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        else:
            im = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        im.save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="session")
def image_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("images")
    return write_images(root / "a", 8, seed=1), write_images(root / "b", 8, seed=2, smooth=False)


# Toy street scenes in Cityscapes colours: sky over road, a vegetation block somewhere.
TOY_CLASSES = {10: (70, 130, 180), 0: (128, 64, 128), 8: (107, 142, 35)}  # train id -> label colour
TOY_PHOTO = {10: (150, 190, 230), 0: (90, 90, 90), 8: (40, 120, 30)}  # train id -> photo colour


def toy_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label rgb, photo rgb, train ids) of one toy scene."""
    ids = np.zeros((size, size), dtype=np.int64)
    ids[: rng.integers(size // 4, size // 2)] = 10
    y, x = rng.integers(0, size - size // 4, 2)
    ids[y : y + size // 4, x : x + size // 3] = 8
    label = np.zeros((size, size, 3), np.uint8)
    photo = np.zeros((size, size, 3), np.float64)
    for cid in TOY_CLASSES:
        label[ids == cid] = TOY_CLASSES[cid]
        photo[ids == cid] = TOY_PHOTO[cid]
    photo = np.clip(photo + rng.normal(0, 8, photo.shape), 0, 255).astype(np.uint8)
    return label, photo, ids


def make_aligned(
    root: Path, n_train: int = 24, n_test: int = 6, size: int = 16, seed: int = 0, ids: bool = True
) -> Path:
    """An aligned folder (label | photo) with train/ and test/ (and test_ids/)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        if ids and split == "test":
            (root / "test_ids").mkdir(exist_ok=True)
        for i in range(n):
            label, photo, idmap = toy_scene(rng, size)
            Image.fromarray(np.concatenate([label, photo], 1)).save(root / split / f"{i:03d}.png")
            if ids and split == "test":
                Image.fromarray(idmap.astype(np.uint8), mode="L").save(
                    root / "test_ids" / f"{i:03d}.png"
                )
    return root


@pytest.fixture(scope="session")
def aligned_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_aligned(tmp_path_factory.mktemp("aligned"))


@pytest.fixture(scope="session")
def segnet_ckpt(aligned_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small seg net trained briefly on the toy scenes."""
    from spap.eval.fcn import evaluate_segnet
    from spap.train.segnet import train_segnet

    out = tmp_path_factory.mktemp("segnet")
    return train_segnet(
        aligned_dir,
        out,
        arch="small",
        palette="cityscapes",
        size=16,
        steps=60,
        batch_size=8,
        width=8,
        device="cpu",
        score=evaluate_segnet,
    )
