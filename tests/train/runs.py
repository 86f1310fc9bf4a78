"""Tiny CycleGAN and GAN runs on random images, for the training, monitor, report and browser
tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from spap.cli import main as cli

CYCLEGAN_TINY = [
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
    "run.device=cpu",
    "run.num_workers=0",
    "run.sample_every=100",
    "run.checkpoint_every=100",
    "run.log_every=2",
]

GAN_TINY = [
    "run.device=cpu",
    "run.num_workers=0",
    "run.checkpoint_every=100",
    "run.sample_every=100",
    "run.log_every=2",
    "model.z_dim=16",
    "model.g_ch=4",
    "model.d_ch=4",
    "model.g_attention={16: spap}",
    "model.d_attention={8: spap}",
    "model.spap_options={rates: [0, 1, 2]}",
    "train.batch_size=2",
    "train.n_dis=1",
    "train.ema_start=1",
    "train.ema_decay=0.9",
    "train.num_fixed=4",
]


def write_unpaired(root: Path, n: int = 6, size: int = 36) -> Path:
    rng = np.random.default_rng(0)
    for folder in ("trainA", "trainB"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / folder / f"{i}.png")
    return root


def write_folder(root: Path, n: int = 8, size: int = 32) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            root / f"{i}.png"
        )
    return root


def train_cyclegan(data: Path, out: Path, steps: int, *extra: str) -> int:
    args = ["train", "cyclegan", "--data", str(data), "--out", str(out), "--size", "32"]
    return cli([*args, "--steps", str(steps), "--seed", "3", *CYCLEGAN_TINY, *extra])


def train_gan(data: Path, out: Path, steps: int, *extra: str) -> int:
    args = ["train", "gan", "--data", str(data), "--out", str(out), "--size", "32"]
    return cli([*args, "--steps", str(steps), *GAN_TINY, *extra])
