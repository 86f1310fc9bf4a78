"""``spap train cyclegan`` end to end: an interrupted and resumed run equals an
uninterrupted one exactly (CPU, fixed seed); run folder contents; aligned layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spap.cli import main as cli
from spap.train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for folder, n in (("trainA", 3), ("trainB", 2)):
        (root / folder).mkdir()
        for i in range(n):
            arr = rng.integers(0, 255, (40 + i, 36, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / folder / f"{i}.png")
    (root / "train").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(
            root / "train" / f"{i}.png"
        )
    return root


TINY = [
    "model.ngf=8",
    "model.ndf=8",
    "model.n_blocks=1",
    "model.attention=spap",
    "model.g_attention_at=[trunk_end]",
    "model.d_attention_at=[1]",
    "model.g_attention_options={rates: [0, 1, 2]}",
    "model.d_attention_options={rates: [0, 1, 2]}",
    "train.n_epochs=1",
    "train.n_epochs_decay=1",
    "train.pool_size=2",
    "train.num_visuals=2",
    "run.num_workers=0",
    "run.sample_every=2",
    "run.checkpoint_every=100",
]


def train(data: Path, out: Path, steps: int, *extra: str) -> int:
    args = ["train", "cyclegan", "--data", str(data), "--out", str(out), "--size", "32"]
    return cli([*args, "--steps", str(steps), "--seed", "3", *extra, *TINY])


def test_resume_equals_uninterrupted(data, tmp_path) -> None:
    # 3 images per epoch: the runs cross an epoch end (lr decay) and fill the pools
    assert train(data, tmp_path / "full", 5) == 0
    assert train(data, tmp_path / "part", 2) == 0
    assert train(data, tmp_path / "part", 5, "--resume") == 0
    full = load_checkpoint(tmp_path / "full", kind="cyclegan")
    part = load_checkpoint(tmp_path / "part", kind="cyclegan")
    assert full["step"] == part["step"] == 5
    for net in ("G_A", "G_B", "D_A", "D_B"):
        a, b = full["task"]["models"][net], part["task"]["models"][net]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{net}.{k}"
    for k in ("A", "B"):
        pa, pb = full["task"]["pools"][k], part["task"]["pools"][k]
        assert len(pa["images"]) == 2 and all(
            torch.equal(x, y) for x, y in zip(pa["images"], pb["images"])
        )
        assert torch.equal(pa["generator"], pb["generator"])
    lr = full["task"]["optimizers"]["G"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(2e-4 * 0.5)  # epoch 1 of 1 + 1: factor 1 - 1/2
    assert full["task"]["models"]["G_A"]["attention.block_0.gamma"].abs() > 0  # units train
    run = tmp_path / "full"
    assert (run / "config.yaml").is_file() and (run / "samples" / "step_0000004.png").is_file()
    assert full["config"]["model"]["g_attention_at"] == ["trunk_end"]
    assert full["config"]["data"]["crop_size"] == 32 and full["config"]["data"]["load_size"] == 36


def test_aligned_layout_and_translate_from_run(data, tmp_path) -> None:
    out = tmp_path / "aligned"
    assert train(data, out, 1, "data.layout=aligned", "data.direction=BtoA") == 0
    ck = load_checkpoint(out, kind="cyclegan")
    assert ck["config"]["data"]["layout"] == "aligned"
    # the checkpoint alone is enough to translate: no architecture flags
    args = [
        "translate",
        "--checkpoint",
        str(out),
        "--input",
        str(data / "trainA"),
        "--output",
        str(tmp_path / "t"),
    ]
    assert cli([*args, "--attention", "--workers", "0"]) == 0
    assert sorted(p.name for p in (tmp_path / "t").glob("*.png")) == ["0.png", "1.png", "2.png"]
    assert len(list((tmp_path / "t" / "attention").glob("*.png"))) == 3 * 2
