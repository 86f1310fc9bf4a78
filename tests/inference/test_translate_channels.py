"""1-channel and 4-channel CycleGANs end to end from the command line: 16-bit grayscale
PNGs and 4-channel arrays train, and ``spap translate`` writes grayscale / 16-bit / array
outputs read with the generator's channel count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spap.cli import main as cli
from spap.inference.translate import Translator
from spap.train.checkpoint import load_checkpoint

TINY = [
    "model.ngf=4",
    "model.ndf=4",
    "model.n_blocks=1",
    "model.n_layers_d=1",
    "train.n_epochs=1",
    "train.n_epochs_decay=1",
    "train.pool_size=2",
    "train.num_visuals=2",
    "run.num_workers=0",
    "run.sample_every=2",
    "run.checkpoint_every=100",
]


def _smooth(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    """Smooth random values in [0, 1]: a few blobs, resized up."""
    small = rng.random((c, 4, 4)).astype(np.float32)
    up = torch.nn.functional.interpolate(
        torch.from_numpy(small)[None], size=(h, w), mode="bicubic", align_corners=False
    )
    return up[0].clamp(0, 1).permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def gray16(tmp_path_factory) -> Path:
    """trainA/ trainB/ testA/ of 16-bit grayscale PNGs (values well apart from 8-bit ones)."""
    root = tmp_path_factory.mktemp("gray16")
    rng = np.random.default_rng(0)
    for folder, n in (("trainA", 3), ("trainB", 2), ("testA", 2)):
        (root / folder).mkdir()
        for i in range(n):
            v = (_smooth(rng, 24 + 4 * i, 28, 1)[..., 0] * 65535).round().astype(np.uint16)
            Image.fromarray(v).save(root / folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def bands4(tmp_path_factory) -> Path:
    """trainA/ trainB/ testA/ of 4-channel float arrays (C, H, W) in [0, 1]."""
    root = tmp_path_factory.mktemp("bands4")
    rng = np.random.default_rng(1)
    for folder, n in (("trainA", 2), ("trainB", 2), ("testA", 2)):
        (root / folder).mkdir()
        for i in range(n):
            np.save(root / folder / f"{i}.npy", _smooth(rng, 20, 24, 4).transpose(2, 0, 1))
    return root


def _train(data: Path, out: Path, nc: int, steps: int = 3) -> None:
    args = ["train", "cyclegan", "--data", str(data), "--out", str(out), "--size", "16"]
    rc = cli([*args, "--steps", str(steps), f"model.input_nc={nc}", f"model.output_nc={nc}", *TINY])
    assert rc == 0


def test_16bit_grayscale_pngs_train_a_1_channel_cyclegan_and_translate_to_16bit(
    gray16: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    _train(gray16, run, 1)
    ckpt = load_checkpoint(run, kind="cyclegan")
    assert ckpt["task"]["models"]["G_A"]["stem.0.weight"].shape[1] == 1  # 1-channel stem
    assert list((run / "samples").glob("*.png"))  # sample grids of 1-channel rows
    out = tmp_path / "out16"
    args = ["translate", "--checkpoint", str(run), "--input", str(gray16 / "testA")]
    assert cli([*args, "--output", str(out), "--bit-depth", "16"]) == 0
    for src in sorted((gray16 / "testA").iterdir()):
        with Image.open(out / src.name) as im, Image.open(src) as ref:
            assert im.mode == "I;16" and im.size == ref.size  # 16-bit grayscale, same size
            values = np.asarray(im)
        assert len(np.unique(values)) > 256 or (values % 257).any()  # not 8-bit data
    out8 = tmp_path / "out8"
    assert cli([*args, "--output", str(out8)]) == 0
    with Image.open(out8 / "0.png") as im:
        assert im.mode == "L"  # grayscale stays grayscale at 8 bits
        g8 = np.asarray(im).astype(np.float64)
    with Image.open(out / "0.png") as im:
        g16 = np.asarray(im).astype(np.float64)
    assert np.abs(g16 / 257 - g8).max() <= 0.5 + 1e-6  # the same output at two depths


def test_translator_reads_inputs_with_the_generators_channel_count(
    gray16: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    _train(gray16, run, 1, steps=1)
    t = Translator.from_checkpoint(run, device="cpu")
    rgb = Image.fromarray(np.random.default_rng(2).integers(0, 256, (16, 20, 3), np.uint8))
    out = t.translate(rgb)  # a colour image is made grayscale for a 1-channel model
    assert out.mode == "L" and out.size == (20, 16)
    rgb.save(tmp_path / "rgb.png")
    res = t.translate_folder(tmp_path / "rgb.png", tmp_path / "o", bit_depth=16)
    assert res.written == 1 and Image.open(tmp_path / "o" / "rgb.png").mode == "I;16"


def test_4_channel_cyclegan_trains_and_translates_arrays(bands4: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _train(bands4, run, 4)
    ckpt = load_checkpoint(run, kind="cyclegan")
    g = ckpt["task"]["models"]["G_A"]
    assert g["stem.0.weight"].shape[1] == 4 and ckpt["step"] == 3
    out = tmp_path / "out"
    args = ["translate", "--checkpoint", str(run), "--input", str(bands4 / "testA")]
    assert cli([*args, "--output", str(out), "--bit-depth", "16"]) == 0
    for i in range(2):
        arr = np.load(out / f"{i}.npy")
        assert arr.shape == (20, 24, 4) and arr.dtype == np.uint16
    assert cli([*args, "--output", str(tmp_path / "o8")]) == 0
    arr8 = np.load(tmp_path / "o8" / "0.npy")
    assert arr8.dtype == np.uint8
    arr16 = np.load(out / "0.npy").astype(np.float64)
    assert np.abs(arr16 / 257 - arr8).max() <= 0.5 + 1e-6


def test_bad_bit_depth_and_value_range_flags(gray16: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    _train(gray16, run, 1, steps=1)
    base = ["translate", "--checkpoint", str(run), "--input", str(gray16 / "testA")]
    assert cli([*base, "--output", str(tmp_path / "o"), "--value-range", "5,1"]) == 2
    assert "--value-range: LO must be below HI" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli([*base, "--output", str(tmp_path / "o"), "--bit-depth", "12"])
    assert cli([*base, "--output", str(tmp_path / "o"), "--value-range", "0,65535"]) == 0
