"""``spap train cyclegan`` with 2 CPU processes (gloo) equals 1 process over the same
global batch; ``spap train gan`` runs distributed with identical weights on every rank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from ranks import cli_worker, free_port
from spap.cli import main as cli
from spap.train.checkpoint import load_checkpoint

CYCLEGAN = [
    "model.ngf=4", "model.ndf=4", "model.n_blocks=1",
    "model.attention=spap", "model.g_attention_at=[trunk_end]", "model.d_attention_at=[1]",
    "model.g_attention_options={rates: [0, 1, 2]}", "model.d_attention_options={rates: [0, 1]}",
    "train.pool_size=0", "train.n_epochs=1", "train.n_epochs_decay=1",
    "run.num_workers=0", "run.sample_every=100",
]  # fmt: skip
STEPS = "1"
GAN = [
    "model.g_ch=4", "model.d_ch=4", "model.z_dim=8", "model.g_attention={8: spap}",
    "model.d_attention={8: sagan}", "train.n_dis=1", "run.num_workers=0", "run.sample_every=100",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp_data")
    rng = np.random.default_rng(0)
    for folder in ("trainA", "trainB"):
        (root / folder).mkdir()
        for i in range(4):
            arr = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / folder / f"{i}.png")
    return root


def _argv(task: str, data: Path, out: Path, batch: int, extra: list[str]) -> list[str]:
    return ["train", task, "--data", str(data), "--out", str(out), "--size", "32",
            "--steps", STEPS, f"train.batch_size={batch}", *extra]  # fmt: skip


def test_cyclegan_two_processes_match_one(data: Path, tmp_path: Path) -> None:
    assert cli(_argv("cyclegan", data, tmp_path / "one", 2, CYCLEGAN)) == 0
    argv = _argv("cyclegan", data, tmp_path / "two", 1, CYCLEGAN)
    mp.spawn(cli_worker, args=(2, free_port(), argv), nprocs=2, join=True)
    assert cli(_argv("cyclegan", data, tmp_path / "other", 1, CYCLEGAN)) == 0  # control
    # After one Adam step, exp_avg = (1 - beta1) * the gradient each optimizer applied: the
    # averaged gradients of the two ranks must be those of the one-process global batch (up to
    # float rounding), and far from those of another global batch. (The weights themselves are
    # a poor witness: Adam's first steps are nearly lr * sign(g), which turns rounding noise in
    # gradients that are mathematically zero, such as conv biases before instance norm, into
    # full-size steps that change no output.)
    runs = {n: load_checkpoint(tmp_path / n)["task"]["optimizers"] for n in ("one", "two", "other")}

    def grads(run: str, opt: str) -> torch.Tensor:
        state = runs[run][opt]["state"]
        return torch.cat([state[i]["exp_avg"].flatten() for i in sorted(state)])

    for opt in ("G", "D"):
        ref = grads("one", opt)
        same = ((grads("two", opt) - ref).norm() / ref.norm()).item()
        control = ((grads("other", opt) - ref).norm() / ref.norm()).item()
        assert same < 0.02 and control > 0.2, (opt, same, control)
    assert load_checkpoint(tmp_path / "two")["step"] == 1


def test_gan_runs_distributed(data: Path, tmp_path: Path) -> None:
    argv = _argv("gan", data / "trainB", tmp_path / "gan", 2, GAN)
    mp.spawn(cli_worker, args=(2, free_port(), argv), nprocs=2, join=True)
    state = load_checkpoint(tmp_path / "gan", kind="gan")
    assert state["step"] == 1 and len(state["runner"]["rng"]) == 2
    assert all(torch.isfinite(v).all() for v in state["task"]["models"]["G"].values())
