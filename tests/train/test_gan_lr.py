"""The GAN's learning rates in TensorBoard (``lr/G``, ``lr/D``): the rate each logged
iteration trains with, under ``train.lr_decay=linear`` (to 0 over ``train.iterations``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spap.cli import main as cli_main


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


@pytest.mark.slow  # a whole (tiny) run through the command line
def test_gan_learning_rates_are_logged(image_dir: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    over = [
        "run.device=cpu",
        "run.num_workers=0",
        "run.checkpoint_every=100",
        "run.sample_every=100",
        "run.log_every=3",
        "model.z_dim=8",
        "model.g_ch=4",
        "model.d_ch=4",
        "train.batch_size=2",
        "train.n_dis=1",
        "train.iterations=6",
        "train.lr_decay=linear",
        "train.lr_g=1e-3",
        "train.lr_d=4e-3",
    ]
    args = ["train", "gan", "--data", str(image_dir), "--out", str(out), "--size", "32"]
    assert cli_main([*args, *over]) == 0
    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    for tag, lr in (("lr/G", 1e-3), ("lr/D", 4e-3)):
        got = {e.step: e.value for e in acc.Scalars(tag)}
        # 4 images per epoch of 2 per iteration: epochs start at steps 1, 3, 5; logged at 3, 6
        assert sorted(got) == [1, 3, 5, 6]
        for step, value in got.items():  # iteration step - 1 trains at lr (1 - i / 6)
            assert value == pytest.approx(lr * (1 - (step - 1) / 6), rel=1e-6), (tag, step)
