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


def test_training_reports_how_many_files_are_usable(
    bad_folder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, groups = bad_folder
    with caplog.at_level(logging.INFO):
        run(CliToyTask, toy_cfg(root, run={"steps": 1}), tmp_path / "run")
    total = sum(len(groups[g]) for g in ("usable", "unreadable", "excluded"))
    listed = total - len(groups["excluded"])
    assert f"{root}: {listed} usable of {total} image files (the others are skipped" in caplog.text


# ----------------------------------------------------------------------------- translate


def test_translate_warns_about_zero_byte_files_and_broken_links(
    tmp_path: Path, cyclegan_run: Path, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    """As training does: excluded files are named in a warning and counted as skipped."""
    from relutil import image_folder

    images = image_folder(tmp_path / "images", n=2, size=16)
    (images / "empty.png").write_bytes(b"")
    (images / "broken.png").symlink_to(images / "missing.png")
    with caplog.at_level(logging.WARNING):
        code = cli_main(["translate", "--checkpoint", str(cyclegan_run), "--input", str(images),
                         "--output", str(tmp_path / "out"), "--device", "cpu"])  # fmt: skip
    assert code == 0
    assert f"skipping {images / 'empty.png'}: " in caplog.text
    assert f"skipping {images / 'broken.png'}: " in caplog.text
    out = capsys.readouterr().out
    assert "translated 2 image(s) AtoB" in out and "skipped 2 unreadable file(s)" in out, out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img_00.png", "img_01.png"]


def test_output_name_clash_over_255_bytes(tmp_path: Path, cyclegan_run: Path, capsys) -> None:
    """`<250 x a>.jpg` and `<250 x a>.png` clash on `.png`; the clash suffix would make a
    258-byte name, which no file system accepts (nor, over 241 bytes, the temporary name of
    the atomic write): the name is shortened deterministically (start of the stem, ~, a
    hash) instead of aborting the whole translation."""
    images = tmp_path / "images"
    stem = "a" * 250
    save_rgb(images / f"{stem}.jpg", 16, fmt="JPEG")
    save_rgb(images / f"{stem}.png", 16, seed=1)
    save_rgb(images / "short.png", 16, seed=2)
    out = tmp_path / "out"
    for _ in range(2):  # the same names every time
        code = cli_main(["translate", "--checkpoint", str(cyclegan_run), "--input", str(images),
                         "--output", str(out), "--device", "cpu"])  # fmt: skip
        assert code == 0
        assert "translated 3 image(s)" in capsys.readouterr().out
        names = sorted(p.name for p in out.iterdir())
        assert len(names) == 3 and all(len(n.encode()) <= 241 for n in names), names
    assert "short.png" in names and all(n.endswith(".png") for n in names)


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("change", ["fewer", "more"])
def test_resume_on_a_changed_dataset(
    tmp_path: Path, change: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped at step 5 of a 6-image epoch (batch 1), resumed on 3 (or 9) images: the
    epoch cannot be continued in its order; the run says so and continues at the start of
    the next epoch. (Before: `ValueError: start position must be in [0, 3], got 5`.)"""
    from relutil import image_folder

    data = image_folder(tmp_path / "data", n=6)
    run_dir = tmp_path / "run"
    cfg = toy_cfg(data, run={"steps": 5, "checkpoint_every": 1000}, train={"batch_size": 1})
    run(CliToyTask, cfg, run_dir)
    assert load_checkpoint(run_dir)["runner"]["dataset_size"] == 6
    if change == "fewer":
        for p in sorted(data.iterdir())[3:]:
            p.unlink()
    else:
        image_folder(data, n=9, seed=100)
    n = 3 if change == "fewer" else 9
    more = toy_cfg(data, run={"steps": 5 + n, "checkpoint_every": 1000}, train={"batch_size": 1})
    with caplog.at_level(logging.WARNING):
        summary = run(CliToyTask, more, run_dir, resume=True)
    assert (
        f"the dataset changed since {run_dir / 'checkpoints' / 'step_0000005.pt'} was written "
        f"(6 items then, {n} now): epoch 0 cannot be continued in its order; the run "
        "continues at the start of epoch 1"
    ) in caplog.text
    assert summary["step"] == 5 + n and summary["epoch"] == 2  # epoch 1 is whole
    state = load_checkpoint(run_dir)
    assert state["runner"]["dataset_size"] == n and state["position"] == 0


def test_a_killed_config_write_is_cleaned_up(tmp_path: Path) -> None:
    """A `.config.yaml.*.tmp` left by a process killed while writing it is removed when the
    next run in the folder starts (under the folder's lock)."""
    from relutil import image_folder

    data = image_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    run(CliToyTask, toy_cfg(data, run={"steps": 2}), run_dir)
    left = [run_dir / ".config.yaml.k1ll3d.tmp", run_dir / "checkpoints" / ".step_0000003.pt.x.tmp"]
    for p in left:
        p.write_bytes(b"half")
    run(CliToyTask, toy_cfg(data, run={"steps": 3}), run_dir, resume=True)
    assert not any(p.exists() for p in left)
    assert not list(run_dir.rglob("*.tmp"))


# ----------------------------------------------------------------------------- image sizes


def _cyclegan_data(root: Path, size_a: tuple[int, int], size_b: tuple[int, int]) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for domain, (w, h) in (("trainA", size_a), ("trainB", size_b)):
        (root / domain).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / domain / f"{i}.png")
    return root


def test_preprocess_none_with_different_a_and_b_sizes(tmp_path: Path, capsys) -> None:
    """data.preprocess=none keeps each image's size: A (24x24) and B (32x28) cannot share a
    batched forward; the step falls back to separate forwards instead of failing."""
    from relutil import CYCLEGAN_TINY

    data = _cyclegan_data(tmp_path / "data", (24, 24), (32, 28))
    out = tmp_path / "run"
    code = cli_main(["train", "cyclegan", "--data", str(data), "--out", str(out), "--steps", "3",
                     *CYCLEGAN_TINY, "data.preprocess=none", "train.batched_forwards=always",
                     "data.flip=false"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err[-3000:]
    assert load_checkpoint(out)["step"] == 3


def test_images_smaller_than_the_networks_need(tmp_path: Path, capsys) -> None:
    from relutil import CYCLEGAN_TINY

    data = _cyclegan_data(tmp_path / "data", (4, 4), (16, 16))
    out = tmp_path / "run"
    code = cli_main(["train", "cyclegan", "--data", str(data), "--out", str(out), "--steps", "2",
                     *CYCLEGAN_TINY, "data.preprocess=none"])  # fmt: skip
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("spap ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert "trainA" in lines[0] and "a 4x4 image (after data.preprocess=none) is smaller than " \
        "the networks need (8x8 with model.n_layers_d=1)" in lines[0], lines[0]  # fmt: skip
