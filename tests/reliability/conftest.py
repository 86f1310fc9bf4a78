"""Fixtures of the reliability tests (helpers live in ``relutil.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # relutil, toytask

from relutil import huge_png  # noqa: E402


@pytest.fixture(scope="session")
def huge_png_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid 20000 x 20000 PNG (~50 KB on disk; beyond Pillow's own bomb limit)."""
    return huge_png(tmp_path_factory.mktemp("bomb") / "huge.png")


@pytest.fixture(scope="session")
def big_png_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid 9000 x 9000 PNG: under Pillow's limit, over spap's 64-megapixel one."""
    return huge_png(tmp_path_factory.mktemp("big") / "big.png", side=9000)


def _train_tiny(root: Path, task: str, tiny: list[str]) -> Path:
    from relutil import image_folder

    from spap.cli import main as cli_main

    data = root / "data"
    if task == "cyclegan":
        image_folder(data / "trainA", n=2, size=16)
        image_folder(data / "trainB", n=2, size=16, seed=10)
    else:
        image_folder(data, n=4, size=16)
    run_dir = root / "run"
    args = ["train", task, "--data", str(data), "--out", str(run_dir), "--steps", "1", *tiny]
    assert cli_main([*args, "run.sample_every=1000"]) == 0
    return run_dir


@pytest.fixture(scope="session")
def gan_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real one-step GAN run folder (tiny networks)."""
    from relutil import GAN_TINY

    return _train_tiny(tmp_path_factory.mktemp("gan"), "gan", GAN_TINY)


@pytest.fixture(scope="session")
def cyclegan_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real one-step CycleGAN run folder (tiny networks)."""
    from relutil import CYCLEGAN_TINY

    return _train_tiny(tmp_path_factory.mktemp("cyclegan"), "cyclegan", CYCLEGAN_TINY)
