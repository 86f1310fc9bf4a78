"""GAN task: one step, EMA, n_dis batching, --size, shipped configs, exact resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from runs import GAN_TINY
from torch import nn

from spap.cli import main as cli_main
from spap.config import CONFIG_DIR, from_dict, load_config, merge, read_yaml
from spap.data.datasets import ImageFolderDataset
from spap.errors import ConfigError
from spap.systems.gan import GANConfig, apply_size
from spap.train.checkpoint import load_checkpoint
from spap.train.context import RunContext
from spap.train.distributed import env_info
from spap.train.ema import EMA
from spap.train.gan import GANTask


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for i in range(8):
        sub = root / ("a" if i % 2 else "b")  # recursive folder
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(sub / f"{i}.png")
    return root


TINY: dict[str, Any] = {
    "run": {"device": "cpu", "num_workers": 0, "sample_every": 2, "log_every": 1},
    "data": {"size": 32},
    "model": {
        "resolution": 32,
        "z_dim": 16,
        "g_ch": 4,
        "d_ch": 4,
        "g_attention": {16: "spap"},
        "d_attention": {16: "sagan"},
        "spap_options": {"rates": [0, 1, 2]},
    },
    "train": {"batch_size": 2, "n_dis": 2, "ema_start": 0, "ema_decay": 0.5, "num_fixed": 3},
}


def _task(root: Path, **over: Any) -> GANTask:
    cfg = from_dict(GANConfig, merge(TINY, {"data": {"root": str(root)}, **over}))
    return GANTask(cfg, RunContext(cfg.run, torch.device("cpu"), env_info()))


def _batch(task: GANTask) -> dict[str, Any]:
    ds = task.build_dataset()
    items = [ds[(0, i)] for i in range(task.batch_size)]
    return {"image": torch.stack([it["image"] for it in items])}


def test_one_step_changes_weights_and_losses_are_finite(image_dir: Path) -> None:
    task = _task(image_dir)
    assert task.batch_size == 4  # batch_size * n_dis real images per iteration
    before_g = {k: v.clone() for k, v in task.G.state_dict().items()}
    before_d = {k: v.clone() for k, v in task.D.state_dict().items()}
    losses = task.train_step(_batch(task), 0)
    assert set(losses) == {"loss_D", "loss_G", "D_real", "D_fake"}
    assert all(math.isfinite(v) for v in losses.values())
    # hinge loss at init: D logits near 0 -> loss_D near 1 (mean of the two terms)
    assert 0.0 < losses["loss_D"] < 3.0
    after_g, after_d = task.G.state_dict(), task.D.state_dict()
    assert not torch.equal(before_g["linear.weight"], after_g["linear.weight"])
    assert not torch.equal(before_g["out_conv.weight"], after_g["out_conv.weight"])
    assert not torch.equal(
        before_d["blocks.0.conv1.parametrizations.weight.original"],
        after_d["blocks.0.conv1.parametrizations.weight.original"],
    )
    # the attention units' blend scalars move away from 0
    assert task.G.attention["g16"].gamma.item() != 0.0
    assert task.D.attention["d16"].gamma.item() != 0.0
    # EMA with decay 0.5 from the initial weights: ema = (before + after) / 2
    ema = task.ema.module.state_dict()
    want = (before_g["linear.weight"] + after_g["linear.weight"]) / 2
    assert torch.allclose(ema["linear.weight"], want, atol=1e-6)
    assert torch.equal(ema["blocks.0.bn1.running_mean"], after_g["blocks.0.bn1.running_mean"])
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in task.G.parameters())


def test_wrong_batch_size_is_refused(image_dir: Path) -> None:
    task = _task(image_dir)
    with pytest.raises(ValueError, match="expected 4 images"):
        task.train_step({"image": torch.zeros(2, 3, 32, 32)}, 0)


def test_noise_is_a_function_of_the_step(image_dir: Path) -> None:
    """Two tasks built alike take identical steps (what exact resume relies on)."""
    torch.manual_seed(0)
    a = _task(image_dir)
    torch.manual_seed(0)
    b = _task(image_dir)
    torch.manual_seed(123)  # the global RNG is not used for the noise
    la = a.train_step(_batch(a), 5)
    lb = b.train_step(_batch(b), 5)
    assert la == lb
    assert torch.equal(a.G.linear.weight, b.G.linear.weight)


def test_visuals_rows(image_dir: Path) -> None:
    task = _task(image_dir)
    task.train_step(_batch(task), 0)
    rows = task.visuals()
    # real, raw G, EMA G, one overlay per SPAP fuse block (rates 0,1,2 -> 2 blocks)
    assert list(rows) == ["real", "G", "G_ema", "attn_g16_0", "attn_g16_1"]
    for name, r in rows.items():
        assert r.shape == (3, 3, 32, 32), name
        assert r.min() >= -1 and r.max() <= 1
    assert task.G.training  # visuals leave the training mode as it was


def test_ema_math() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(net, decay=0.9, start=2)
    assert not any(p.requires_grad for p in ema.module.parameters())
    for step in (1, 2):  # up to `start`: copies
        with torch.no_grad():
            net[0].weight.add_(1.0)
        ema.update(net, step)
        assert torch.equal(ema.module[0].weight, net[0].weight)
    old = ema.module[0].weight.clone()
    with torch.no_grad():
        net[0].weight.add_(10.0)
        net[1].running_mean.fill_(3.0)
    ema.update(net, 3)
    assert torch.allclose(ema.module[0].weight, 0.9 * old + 0.1 * net[0].weight)
    assert torch.equal(ema.module[1].running_mean, torch.full((2,), 3.0))  # buffers copied
    state = ema.state_dict()
    other = EMA(net, decay=0.9, start=2)
    other.load_state_dict(state)
    assert torch.equal(other.module[0].weight, ema.module[0].weight)


def test_apply_size_moves_attention_with_the_resolution() -> None:
    d: dict[str, Any] = {"model": {"g_attention": {64: "spap"}, "d_attention": {"64": "sagan"}}}
    apply_size(d, 32)
    assert d["model"]["resolution"] == 32 and d["data"]["size"] == 32
    assert d["model"]["g_attention"] == {16: "spap"} and d["model"]["d_attention"] == {16: "sagan"}
    cfg = from_dict(GANConfig, d)
    assert cfg.model.g_attention == {16: "spap"}


def test_size_mismatch_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="data.size"):
        from_dict(GANConfig, {"data": {"size": 64}, "model": {"resolution": 32}})


SHIPPED = sorted(p.stem for p in (CONFIG_DIR / "gan").glob("*.yaml"))


def test_paper_configs_exist() -> None:
    for name in ("baseline", "sagan", "spap_c2f", "spap_f2c"):
        assert f"celebahq128_{name}" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load_and_shrink(name: str) -> None:
    cfg = load_config(GANConfig, f"gan/{name}.yaml")
    assert cfg.model.resolution == cfg.data.size
    kinds = set(cfg.model.g_attention.values()) | set(cfg.model.d_attention.values())
    if "baseline" in name:
        assert kinds <= {"none"}
    elif "sagan" in name:
        assert kinds == {"sagan"}
    else:
        assert kinds == {"spap"}
        order = "coarse_to_fine" if name.endswith("c2f") else "fine_to_coarse"
        assert cfg.model.spap_options["order"] == order
    # --size 32 (smoke runs) keeps a valid config
    data = read_yaml(f"gan/{name}.yaml")
    apply_size(data, 32)
    small = from_dict(GANConfig, data)
    assert small.model.resolution == 32


def _train(data: Path, out: Path, steps: int, *extra: str) -> int:
    args = ["--data", str(data), "--out", str(out), "--steps", str(steps), "--size", "32"]
    over = [*GAN_TINY, "run.sample_every=3", "train.n_dis=2"]  # later keys win
    return cli_main(["train", "gan", *args, *extra, *over])


def test_train_resume_equals_uninterrupted(image_dir: Path, tmp_path: Path) -> None:
    assert _train(image_dir, tmp_path / "full", 4) == 0
    assert _train(image_dir, tmp_path / "part", 2) == 0
    assert _train(image_dir, tmp_path / "part", 4, "--resume") == 0
    full = load_checkpoint(tmp_path / "full", kind="gan")
    part = load_checkpoint(tmp_path / "part", kind="gan")
    assert full["step"] == part["step"] == 4
    for net in ("G", "D", "G_ema"):
        a, b = full["task"]["models"][net], part["task"]["models"][net]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{net}.{k}"
    # the run folder holds the resolved config and the fixed-noise sample grids
    assert (tmp_path / "full" / "config.yaml").is_file()
    assert (tmp_path / "full" / "samples" / "step_0000003.png").is_file()
    assert full["config"]["model"]["g_attention"] == {"16": "spap"}


def test_dataset_items(image_dir: Path) -> None:
    ds = ImageFolderDataset(image_dir, size=32)
    assert len(ds) == 8 and ds[(0, 0)]["image"].shape == (3, 32, 32)


def test_attention_overrides_merge_into_the_file() -> None:
    cfg = load_config(
        GANConfig,
        "gan/celebahq128_spap_c2f",
        [
            "model.g_attention.64=none",
            "model.g_attention.32=sagan",
            "model.spap_options.order=fine_to_coarse",
        ],
    )
    assert cfg.model.g_attention == {64: "none", 32: "sagan"}
    assert cfg.model.d_attention == {64: "spap"}
    assert cfg.model.spap_options == {"order": "fine_to_coarse"}


def test_dataset_follows_preprocess_and_load_size(image_dir: Path) -> None:
    """``data.preprocess`` / ``data.load_size`` reach the GAN's images: ``crop`` takes a
    32x32 window of the 40x40 file unresized, the default resizes the whole file."""
    flip_off = {"flip": False, "root": str(image_dir)}
    cropped = _task(image_dir, data={**flip_off, "preprocess": "crop"}).build_dataset()
    resized = _task(image_dir, data=flip_off).build_dataset()
    c, r = cropped[(0, 0)], resized[(0, 0)]
    assert c["image"].shape == r["image"].shape == (3, 32, 32)
    with Image.open(c["path"]) as im:
        full = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1
    windows = full.unfold(1, 32, 1).unfold(2, 32, 1)  # (3, 9, 9, 32, 32): every 32x32 crop
    diff = (windows - c["image"][:, None, None]).abs().amax(dim=(0, 3, 4))
    assert float(diff.min()) < 1e-5  # the crop is one of the file's windows, unresized
    assert not torch.allclose(c["image"], r["image"])
