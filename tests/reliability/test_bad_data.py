"""Bad data: usable images are used, the rest skipped with a warning per file and a count
at the end of every epoch; a folder where nothing is usable fails at start."""

from __future__ import annotations

import collections
import logging
import re
from pathlib import Path

import pytest
import toytask
from relutil import GAN_TINY, bad_data_folder, run_spap, save_rgb, toy_cfg
from toytask import CliToyTask

from spap.cli import main as cli_main
from spap.errors import DataError
from spap.train.checkpoint import load_checkpoint
from spap.train.loop import run


@pytest.fixture
def bad_folder(
    tmp_path: Path, huge_png_file: Path, big_png_file: Path
) -> tuple[Path, dict[str, list[str]]]:
    root = tmp_path / "mixed"
    return root, bad_data_folder(root, huge_png_file, big_png_file)


def test_training_uses_the_usable_files_and_counts_the_rest(
    bad_folder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two epochs through the real loop and the real dataset: every usable file is used,
    every other file is warned about once, and each epoch ends with its count."""
    root, groups = bad_folder
    with caplog.at_level(logging.WARNING):
        # 13 candidate files, batch 1: every index used once per epoch
        cfg = toy_cfg(root, run={"checkpoint_every": 1000}, train={"epochs": 2, "batch_size": 1})
        summary = run(CliToyTask, cfg, tmp_path / "run")
    assert summary["step"] == 26 and summary["epoch"] == 2

    used = collections.Counter(Path(p).name for p in toytask.INSTANCES[-1].seen)
    assert set(used) == set(groups["usable"])  # all usable ones, nothing else
    assert sum(used.values()) == 26  # every item of both epochs was filled

    text = caplog.text
    for name in groups["unreadable"]:
        assert len(re.findall(rf"skipping unreadable image \S*{name}: ", text)) == 1, name
    assert re.search(r"a07_huge.png: decompression-bomb guard: .*400000000 pixels", text)
    assert "a13_big.png: 9000x9000 = 81000000 pixels exceeds the limit of 67108864" in text
    assert re.search(r"skipping \S*a09_empty.jpg: empty file \(0 bytes\)", text)
    assert re.search(r"skipping \S*a11_broken.png: broken symlink", text)
    for name in groups["ignored"]:
        assert name not in text
    n = len(groups["unreadable"])
    assert f"epoch 0: {n} unreadable files skipped" in text
    assert f"epoch 1: {n} unreadable files skipped" in text


def test_real_gan_run_with_workers_on_a_bad_folder(bad_folder, tmp_path: Path) -> None:
    """`spap train gan` (subprocess, 2 data-loading workers) on the same folder, two
    epochs of 13 images."""
    root, groups = bad_folder
    res = run_spap(["train", "gan", "--data", root, "--out", tmp_path / "run", "--steps", 26,
                    *GAN_TINY, "train.batch_size=1", "run.num_workers=2",
                    "run.sample_every=1000"])  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    n = len(groups["unreadable"])
    assert f"epoch 0: {n} unreadable files skipped" in res.stderr, res.stderr[-3000:]
    assert f"epoch 1: {n} unreadable files skipped" in res.stderr
    for name in groups["unreadable"] + groups["excluded"]:
        assert name in res.stderr, name
    assert "Traceback" not in res.stderr
    assert load_checkpoint(tmp_path / "run", kind="gan")["step"] == 26


def _unusable(root: Path, huge: Path) -> Path:
    root.mkdir(parents=True)
    good = save_rgb(root.parent / "good.jpg")
    (root / "a.jpg").write_bytes(good.read_bytes()[:100])
    (root / "b.png").write_text("not an image")
    (root / "c.png").write_bytes(b"")
    (root / "d.png").symlink_to(root / "missing.png")
    (root / "e.png").write_bytes(huge.read_bytes())
    (root / "notes.txt").write_text("x")
    return root


def test_nothing_usable_fails_at_start(tmp_path: Path, huge_png_file: Path) -> None:
    root = _unusable(tmp_path / "bad", huge_png_file)
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match=rf"no readable image in {re.escape(str(root))}: all 3"):
        run(CliToyTask, toy_cfg(root), run_dir)
    assert not run_dir.exists()


@pytest.mark.parametrize("task", ["gan", "cyclegan"])
def test_nothing_usable_through_the_command_line(
    tmp_path: Path, huge_png_file: Path, task: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from relutil import CYCLEGAN_TINY, image_folder

    if task == "gan":
        data = _unusable(tmp_path / "bad", huge_png_file)
        tiny = GAN_TINY
    else:  # one domain fine, the other without a usable image
        data = tmp_path / "ab"
        image_folder(data / "trainA", n=2, size=16)
        _unusable(data / "trainB", huge_png_file)
        tiny = CYCLEGAN_TINY
    out = tmp_path / "run"
    code = cli_main(["train", task, "--data", str(data), "--out", str(out), "--steps", "1", *tiny])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("spap train: error: no readable image in "), err[-1]
    assert ("trainB" in err[-1]) == (task == "cyclegan")
    assert not out.exists()
