"""Checkpoints evolve: files written by spap 0.1 (tests/fixtures/v0_1, format version 1, with
the since-removed keys run.winograd_min_size and run.thin_conv_channels_last) still load,
translate, sample, export and resume; unknown keys read from a file warn, unknown keys a
user writes fail; files get the user's umask."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from spap.cli import main as cli
from spap.errors import ConfigError
from spap.inference import Sampler, Translator
from spap.train.checkpoint import VERSION, list_checkpoints, load_checkpoint, save_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v0_1"
CYCLEGAN = FIXTURES / "cyclegan_step4.pt"
GAN = FIXTURES / "gan_step4.pt"


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "expected_outputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """The data the fixtures were trained on (the scenes are a pure function of the seed)."""
    root = tmp_path_factory.mktemp("scenes")
    assert (
        cli(["data", "scenes", "--out", str(root), "--n", "6", "--size", "32", "--seed", "0"]) == 0
    )
    return root


def test_old_checkpoint_is_migrated() -> None:
    raw = torch.load(CYCLEGAN, weights_only=True)
    assert raw["version"] == 1 and "winograd_min_size" in raw["config"]["run"]
    state = load_checkpoint(CYCLEGAN)
    assert state["version"] == VERSION
    assert "winograd_min_size" not in state["config"]["run"]
    assert "thin_conv_channels_last" not in state["config"]["run"]


def test_old_cyclegan_translates_as_it_did(expected) -> None:
    t = Translator.from_checkpoint(CYCLEGAN, device="cpu")
    x = expected["input"]
    for direction in ("AtoB", "BtoA"):
        torch.testing.assert_close(
            t.translate(x, direction), expected[direction], atol=1e-4, rtol=0
        )


def test_old_gan_samples_as_it_did(expected) -> None:
    for ema, key in ((True, "gan_seed0"), (False, "gan_raw_seed0")):
        s = Sampler.from_checkpoint(GAN, device="cpu", ema=ema)
        torch.testing.assert_close(s.sample(3, seed=0), expected[key], atol=1e-4, rtol=0)


@pytest.mark.parametrize("ckpt", [CYCLEGAN, GAN], ids=["cyclegan", "gan"])
@pytest.mark.parametrize("fmt", ["onnx", "safetensors"])
def test_old_checkpoints_export(ckpt: Path, fmt: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / f"g.{fmt}"
    argv = ["export", "--checkpoint", str(ckpt), "--format", fmt, "--output", str(out)]
    if ckpt == CYCLEGAN:
        argv += ["--size", "32"]
    assert cli(argv) == 0, capsys.readouterr().err
    assert "max abs diff vs eager" in capsys.readouterr().out


def test_old_cyclegan_translates_from_the_command_line(scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["translate", "--checkpoint", str(CYCLEGAN), "--input", str(scenes / "testA")]
    assert cli([*argv, "--output", str(out), "--device", "cpu"]) == 0
    assert len(list(out.glob("*.png"))) == len(list((scenes / "testA").iterdir()))


def _run_folder(ckpt: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, run / "checkpoints" / "step_0000004.pt")
    (run / "checkpoints" / "latest").write_text("step_0000004.pt")
    return run


def test_old_cyclegan_resumes(scenes: Path, tmp_path: Path) -> None:
    run = _run_folder(CYCLEGAN, tmp_path)
    argv = ["train", "cyclegan", "--data", str(scenes), "--out", str(run), "--resume"]
    assert cli([*argv, "--steps", "6"]) == 0
    assert list_checkpoints(run)[-1].name == "step_0000006.pt"
    state = load_checkpoint(run)
    assert state["version"] == VERSION and state["step"] == 6
    assert "winograd_min_size" not in state["config"]["run"]


def test_old_gan_resumes(scenes: Path, tmp_path: Path) -> None:
    run = _run_folder(GAN, tmp_path)
    argv = ["train", "gan", "--data", str(scenes / "trainB"), "--out", str(run), "--resume"]
    assert cli([*argv, "--steps", "6"]) == 0
    assert load_checkpoint(run)["step"] == 6


def test_unknown_stored_key_warns_unknown_user_key_fails(tmp_path: Path, caplog) -> None:
    state = load_checkpoint(CYCLEGAN)
    state["config"]["model"]["future_option"] = 3  # as a later release might write it
    path = save_checkpoint(state, tmp_path / "step_0000004.pt")
    with caplog.at_level(logging.WARNING):
        t = Translator.from_checkpoint(path, device="cpu")
    assert "AtoB" in t.generators
    assert any(
        "model.future_option" in r.getMessage() and str(path) in r.getMessage()
        for r in caplog.records
    )
    from spap.config import from_dict
    from spap.systems.cyclegan import CycleGANConfig

    with pytest.raises(ConfigError, match="model.future_option"):
        from_dict(CycleGANConfig, {"model": {"future_option": 3}})


def test_files_get_the_users_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = save_checkpoint(load_checkpoint(CYCLEGAN), tmp_path / "c.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    old = os.umask(0o077)
    try:
        path = save_checkpoint(load_checkpoint(CYCLEGAN), tmp_path / "d.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
