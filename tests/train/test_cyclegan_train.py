"""``spap train cyclegan`` end to end: an interrupted and resumed run equals an
uninterrupted one exactly (CPU, fixed seed); run folder contents; aligned layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reference.cyclegan import RefNLayerDiscriminator, randomise, ref_lr_per_epoch
from spap.cli import main as cli
from spap.train.checkpoint import load_checkpoint
from train.runs import train_cyclegan


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


def train(data: Path, out: Path, steps: int, *extra: str) -> int:
    """The tiny CycleGAN run of ``runs.py``, with a sample grid every 2 iterations."""
    return train_cyclegan(data, out, steps, "run.sample_every=2", *extra)


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
    assert lr == ref_lr_per_epoch(1, 1)[1] == 0.0  # epoch 1 of 1 + 1: the reference's 0
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


def _tb_scalars(run: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


@pytest.mark.slow  # three runs, 24 iterations
def test_learning_rates_in_tensorboard_and_log(data, tmp_path, caplog) -> None:
    """lr/G and lr/D: at each epoch's first iteration and every log_every iterations, the
    rate that iteration trains with, which is the reference's of its epoch; the log says
    when it changes. A run resumed inside the decay goes on with the same rates."""
    import logging

    want = ref_lr_per_epoch(2, 2)  # 3 iterations per epoch, 4 epochs
    sched = ["train.n_epochs=2", "train.n_epochs_decay=2", "run.log_every=5"]
    with caplog.at_level(logging.INFO, logger="spap.train.loop"):
        assert train(data, tmp_path / "full", 12, *sched) == 0
    assert train(data, tmp_path / "part", 7, *sched) == 0  # stops inside epoch 2
    assert train(data, tmp_path / "part", 12, *sched, "--resume") == 0
    full = tmp_path / "full"
    for tag in ("lr/G", "lr/D"):
        got = _tb_scalars(full, tag)
        assert sorted(got) == [1, 4, 5, 7, 10]  # epoch starts (1, 4, 7, 10) and step 5
        for step, value in got.items():
            assert value == pytest.approx(want[(step - 1) // 3], rel=1e-6), (tag, step)
    resumed = _tb_scalars(tmp_path / "part", "lr/G")
    assert sorted(resumed) == [1, 4, 5, 7, 8, 10]  # 8: the resumed process's first iteration
    for step, value in resumed.items():
        assert value == pytest.approx(want[(step - 1) // 3], rel=1e-6), step
    lines = [r.getMessage() for r in caplog.records if "lr/G" in r.getMessage()]
    assert lines == [
        "epoch 0 (counted from 0): lr/G 0.0002, lr/D 0.0002",
        "epoch 1 (counted from 0): lr/G 0.0002 -> 0.000133333, lr/D 0.0002 -> 0.000133333",
        "epoch 2 (counted from 0): lr/G 0.000133333 -> 6.66667e-05, "
        "lr/D 0.000133333 -> 6.66667e-05",
        "epoch 3 (counted from 0): lr/G 6.66667e-05 -> 0, lr/D 6.66667e-05 -> 0",
    ]


def test_mismatched_initial_weights_fail_in_one_line(data, tmp_path, capsys) -> None:
    ref = tmp_path / "latest_net_D_A.pth"
    torch.save(randomise(RefNLayerDiscriminator(ndf=4, n_layers=2)).state_dict(), ref)
    code = train(data, tmp_path / "run", 1, f"train.init_networks={{D_A: {ref}}}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"spap train: error: D_A from {ref}: ")
    assert "ndf 4 in the file, 8 in the config; n_layers_d 2 in the file, 3 in the config" in err[0]
    assert not (tmp_path / "run").exists()
