"""Translator API and ``spap translate``: any size, folders, attention overlays, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spap.cli import main as cli
from spap.config import from_dict, to_dict
from spap.errors import CheckpointError, SpapError
from spap.inference.translate import Translator, pad_to_multiple
from spap.systems.cyclegan import CycleGANConfig, build_networks
from spap.train.checkpoint import FORMAT, VERSION, save_checkpoint

SPAP = {
    "attention": "spap",
    "g_attention_at": ["down:0", "trunk_end"],
    "g_attention_options": {"rates": [0, 1, 2]},
}


def write_checkpoint(
    path: Path, model: dict | None = None, direction: str = "AtoB", gamma: float = 0.3
) -> Path:
    """A CycleGAN checkpoint as the runner writes it (random weights, units switched on)."""
    cfg = from_dict(
        CycleGANConfig,
        {
            "data": {"crop_size": 32, "load_size": 36, "direction": direction},
            "model": {"ngf": 8, "ndf": 8, "n_blocks": 2, **(model or {})},
        },
    )
    nets = build_networks(cfg.model)
    with torch.no_grad():
        for net in nets.values():
            for unit in net.attention.values():
                unit.gamma.fill_(gamma)
    state = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "cyclegan",
        "config": to_dict(cfg),
        "step": 1,
        "epoch": 0,
        "position": 1,
        "task": {"models": {k: v.state_dict() for k, v in nets.items()}},
        "runner": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(state, path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    return write_checkpoint(run / "checkpoints" / "step_0000001.pt", SPAP)


@pytest.fixture(scope="module")
def plain_ckpt(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ck") / "step_0000001.pt")


def image_folder(root: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for name, (h, w) in {
        "a.png": (32, 32),
        "b.png": (32, 32),
        "c.png": (32, 32),
        "odd.jpg": (21, 35),
        "sub/tiny.png": (3, 5),
        "sub/tall.bmp": (40, 12),
    }.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        files.append(p)
    Image.fromarray(rng.integers(0, 255, (9, 9), dtype=np.uint8)).save(root / "gray.png")
    Image.fromarray(rng.integers(0, 255, (9, 9, 4), dtype=np.uint8)).save(root / "gray.tif")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "notes.txt").write_text("ignored")
    return files


def test_pad_to_multiple() -> None:
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    y, (h, w) = pad_to_multiple(x)
    assert y.shape == (2, 3, 8, 8) and (h, w) == (5, 7)
    assert torch.equal(y[..., :5, :7], x)
    assert torch.equal(y[..., 5, :7], x[..., 3, :])  # reflection
    tiny, _ = pad_to_multiple(torch.ones(1, 3, 1, 2))
    assert tiny.shape == (1, 3, 8, 8) and torch.all(tiny == 1)


def test_translate_tensor_matches_generator(ckpt) -> None:
    t = Translator.from_checkpoint(ckpt, device="cpu")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = t.generators["AtoB"](x)
    torch.testing.assert_close(t.translate(x), ref)
    assert t.translate(x[0]).shape == (3, 32, 32)
    # odd size: padded to 24x36, cropped back; equals running the padded image
    odd = torch.rand(1, 3, 21, 35) * 2 - 1
    padded, _ = pad_to_multiple(odd)
    with torch.no_grad():
        want = t.generators["BtoA"](padded)[..., :21, :35]
    torch.testing.assert_close(t.translate(odd, "BtoA"), want)


def test_translate_pil_and_attention(ckpt) -> None:
    t = Translator.from_checkpoint(ckpt.parents[1], device="cpu")  # a run folder
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (19, 26, 4), dtype=np.uint8))
    out = t.translate(img)
    assert isinstance(out, Image.Image) and out.size == (26, 19) and out.mode == "RGB"
    out2, maps = t.translate_with_attention(img)
    assert np.array_equal(np.asarray(out), np.asarray(out2))
    # two units x two fuse blocks (3 rates)
    assert sorted(maps) == ["block_1_0", "block_1_1", "down_0_0", "down_0_1"]
    for m in maps.values():
        assert m.shape == (1, 1, 19, 26) and m.min() >= 0 and m.max() <= 1


def test_direction_follows_folders(tmp_path) -> None:
    """A run trained with data.direction=BtoA has G_A: B -> A; AtoB still means A -> B."""
    path = write_checkpoint(tmp_path / "step_0000001.pt", direction="BtoA")
    state = torch.load(path, weights_only=True)
    t = Translator.from_checkpoint(path, device="cpu")
    nets = build_networks(from_dict(CycleGANConfig, state["config"]).model)
    nets["G_B"].load_state_dict(state["task"]["models"]["G_B"])
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(t.translate(x, "AtoB"), nets["G_B"].eval()(x))


def test_translate_folder_one_output_per_input(ckpt, tmp_path) -> None:
    src = tmp_path / "in"
    image_folder(src)
    t = Translator.from_checkpoint(ckpt, device="cpu")
    res = t.translate_folder(src, tmp_path / "out", batch_size=2, num_workers=0, attention=True)
    out = tmp_path / "out"
    names = sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*.png") if "attention" not in p.parts
    )
    assert names == [
        "a.png",
        "b.png",
        "c.png",
        "gray_png.png",
        "gray_tif.png",
        "odd.png",
        "sub/tall.png",
        "sub/tiny.png",
    ]
    assert res.written == 8 and [Path(p).name for p, _ in res.skipped] == ["broken.png"]
    assert Image.open(out / "odd.png").size == (35, 21)
    assert Image.open(out / "sub/tiny.png").size == (5, 3)
    # outputs equal single-image translation (batching does not change results)
    single = t.translate(Image.open(src / "b.png").convert("RGB"))
    assert (
        np.abs(
            np.asarray(single, dtype=int) - np.asarray(Image.open(out / "b.png"), dtype=int)
        ).max()
        <= 1
    )
    overlays = sorted(p.name for p in (out / "attention").glob("*.png"))
    assert res.attention_written == 8 * 4 and "a_block_1_0.png" in overlays
    assert Image.open(out / "attention" / "odd_down_0_1.png").size == (35, 21)


def test_cli_translate(plain_ckpt, tmp_path, capsys) -> None:
    src = tmp_path / "in"
    image_folder(src)
    code = cli(
        [
            "translate",
            "--checkpoint",
            str(plain_ckpt),
            "--input",
            str(src),
            "--output",
            str(tmp_path / "o"),
            "--direction",
            "BtoA",
            "--workers",
            "1",
            "--batch-size",
            "3",
        ]
    )
    assert code == 0
    assert len(list((tmp_path / "o").rglob("*.png"))) == 8
    assert "translated 8 image(s) BtoA" in capsys.readouterr().out
    # a single file
    assert (
        cli(
            [
                "translate",
                "--checkpoint",
                str(plain_ckpt),
                "--input",
                str(src / "odd.jpg"),
                "--output",
                str(tmp_path / "one"),
            ]
        )
        == 0
    )
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["odd.png"]


def test_translate_aligned_half(plain_ckpt, tmp_path) -> None:
    rng = np.random.default_rng(2)
    (tmp_path / "test").mkdir()
    pair = rng.integers(0, 255, (16, 33, 3), dtype=np.uint8)  # odd width: last column dropped
    Image.fromarray(pair).save(tmp_path / "test" / "1.png")
    t = Translator.from_checkpoint(plain_ckpt, device="cpu")
    t.translate_folder(tmp_path / "test", tmp_path / "o", half="B", num_workers=0)
    want = t.translate(Image.fromarray(pair[:, 16:32]))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "1.png")), np.asarray(want))


def test_cli_errors(plain_ckpt, tmp_path, capsys) -> None:
    gan = tmp_path / "gan.pt"
    save_checkpoint(
        {"format": FORMAT, "version": VERSION, "kind": "gan", "config": {}, "task": {}}, gan
    )
    args = ["translate", "--input", str(tmp_path), "--output", str(tmp_path / "o")]
    assert cli([*args, "--checkpoint", str(gan)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'gan' checkpoint" in err and "cyclegan" in err
    assert cli([*args, "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert (
        cli(
            [
                "translate",
                "--checkpoint",
                str(plain_ckpt),
                "--input",
                str(tmp_path / "nope"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "no such input" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert (
        cli(
            [
                "translate",
                "--checkpoint",
                str(plain_ckpt),
                "--input",
                str(tmp_path / "empty"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "no images" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        Translator.from_checkpoint(gan)
    with pytest.raises(SpapError, match="direction"):
        Translator.from_checkpoint(plain_ckpt, device="cpu").translate(torch.zeros(3, 8, 8), "AtoA")


def test_prefetched_keeps_order_raises_errors_and_stops_early() -> None:
    import threading

    from spap.inference.translate import _prefetched

    assert list(_prefetched(range(50))) == list(range(50))

    def failing():
        yield 1
        raise ValueError("broken file")

    it = _prefetched(failing())
    assert next(it) == 1
    with pytest.raises(ValueError, match="broken file"):
        next(it)

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = _prefetched(endless(), depth=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # leaving the loop early stops the producer thread
    assert not any(t.name == "spap-prefetch" for t in threading.enumerate())
    assert len(produced) <= 3 + 2 + 1
