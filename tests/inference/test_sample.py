"""Sampling API and `spap sample`: seeded images, exact file counts, resuming, overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import spap.inference.sample as sample_mod
from spap.cli import main as cli_main
from spap.errors import CheckpointError, SpapError
from spap.inference.sample import Sampler
from spap.train.checkpoint import FORMAT, VERSION, load_checkpoint, save_checkpoint
from spap.viz.attention import overlay


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step GAN run (32 px, SAGAN at 8x8 and SPAP at 16x16 in G)."""
    base = tmp_path_factory.mktemp("gan")
    data = base / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(data / f"{i}.png")
    over = [
        "run.device=cpu",
        "run.num_workers=0",
        "model.z_dim=8",
        "model.g_ch=2",
        "model.d_ch=2",
        "model.g_attention={8: sagan, 16: spap}",
        "model.spap_options={rates: [0, 1, 2]}",
        "train.batch_size=2",
        "train.ema_start=0",
        "train.ema_decay=0.5",
        "train.num_fixed=2",
    ]
    out = base / "run"
    args = ["--data", str(data), "--out", str(out), "--steps", "2", "--size", "32"]
    assert cli_main(["train", "gan", *args, *over]) == 0
    return out


@pytest.fixture(scope="module")
def sampler(run_dir: Path) -> Sampler:
    return Sampler.from_checkpoint(run_dir, device="cpu")


def _pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png") if p.name != "grid.png")


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_from_checkpoint_uses_ema_or_raw_weights(run_dir: Path, sampler: Sampler) -> None:
    ckpt = load_checkpoint(run_dir, kind="gan")
    assert sampler.step == 2 and sampler.ema and sampler.resolution == 32
    want = ckpt["task"]["models"]["G_ema"]["linear.weight"]
    assert torch.equal(sampler.generator.linear.weight, want)
    raw = Sampler.from_checkpoint(run_dir, device="cpu", ema=False)
    assert torch.equal(raw.generator.linear.weight, ckpt["task"]["models"]["G"]["linear.weight"])
    assert not torch.equal(raw.generator.linear.weight, want)  # EMA decay 0.5 after step 2
    assert not sampler.generator.training


def test_sample_is_seeded_per_image(sampler: Sampler) -> None:
    a = sampler.sample(5, seed=1, batch_size=2)
    assert a.shape == (5, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    b = sampler.sample(5, seed=1, batch_size=5)
    assert torch.allclose(a, b, atol=1e-5)  # batching does not change images
    c = sampler.sample(2, seed=1, start=3)
    assert torch.allclose(a[3:], c, atol=1e-5)  # image i depends on (seed, i) only
    d = sampler.sample(5, seed=2)
    assert not torch.allclose(a, d)


def test_sample_with_attention(sampler: Sampler) -> None:
    images, maps = sampler.sample_with_attention(3, seed=0, batch_size=2)
    assert torch.allclose(images, sampler.sample(3, seed=0), atol=1e-5)
    # the structure Translator.translate_with_attention gives: {name: (N, 1, h, w) in [0, 1]}
    assert set(maps) == {"g8", "g16_0", "g16_1"}  # SAGAN unit, SPAP unit with 2 fuse blocks
    assert maps["g8"].shape == (3, 1, 4, 4)  # SAGAN: attention received by the 4x4 pooled keys
    assert [maps[f"g16_{k}"].shape for k in (0, 1)] == [(3, 1, 16, 16)] * 2
    for m in maps.values():
        assert m.min() >= 0 and m.max() <= 1
    assert torch.allclose(maps["g8"].amax(dim=(1, 2, 3)), torch.ones(3))


def test_overlay_range_and_blend() -> None:
    img = torch.zeros(1, 3, 8, 8)
    m = torch.ones(1, 2, 2)
    out = overlay(img, m, alpha=0.5)
    assert out.shape == (1, 3, 8, 8) and out.min() >= -1 and out.max() <= 1
    assert torch.allclose(overlay(img, m, alpha=0.0), img)


def test_write_exact_count_and_resume(
    sampler: Sampler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "s"
    summary = sampler.write(out, num=7, seed=3, batch_size=3)
    assert summary == {"written": 7, "kept": 0, "dir": str(out)}
    names = [f"{i:06d}.png" for i in range(7)]
    assert _pngs(out) == names
    ref = {n: _pixels(out / n) for n in names}
    assert np.array_equal(ref[names[4]], _pixels_from_tensor(sampler.sample(1, seed=3, start=4)[0]))

    # an interrupted run: some files gone, one cut short, a stale temporary file
    (out / names[1]).unlink()
    (out / names[5]).unlink()
    data = (out / names[2]).read_bytes()
    (out / names[2]).write_bytes(data[: len(data) // 2])
    (out / f".{names[6]}.tmp").write_bytes(b"partial")
    summary = sampler.write(out, num=7, seed=3, batch_size=2)
    assert summary["written"] == 3 and summary["kept"] == 4
    assert _pngs(out) == names and not list(out.glob(".*.tmp"))
    for n in names:
        assert np.abs(_pixels(out / n) - ref[n]).max() <= 1, n

    # a run killed in the middle of a batch, then continued with more images
    calls = {"n": 0}
    real_write = sample_mod._atomic_png

    def dying(image: torch.Tensor, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_write(image, path)

    monkeypatch.setattr(sample_mod, "_atomic_png", dying)
    with pytest.raises(KeyboardInterrupt):
        sampler.write(out, num=12, seed=3, batch_size=4)
    monkeypatch.setattr(sample_mod, "_atomic_png", real_write)
    assert len(_pngs(out)) == 9
    summary = sampler.write(out, num=12, seed=3, batch_size=4)
    assert summary["written"] == 3
    assert _pngs(out) == [f"{i:06d}.png" for i in range(12)]


def _pixels_from_tensor(t: torch.Tensor) -> np.ndarray:
    return (
        ((t.clamp(-1, 1) + 1) * 127.5)
        .round()
        .to(torch.uint8)
        .permute(1, 2, 0)
        .numpy()
        .astype(np.int16)
    )


def test_write_grid_and_attention(sampler: Sampler, tmp_path: Path) -> None:
    out = tmp_path / "a"
    sampler.write(out, num=5, seed=0, batch_size=4, grid=True, attention=True)
    assert _pngs(out) == [f"{i:06d}.png" for i in range(5)]
    assert sorted(p.name for p in (out / "attention").iterdir()) == _pngs(out)
    strip = Image.open(out / "attention" / "000000.png")
    # sample + 1 SAGAN overlay + 2 SPAP fuse-block overlays, 32 px each, 2 px padding
    assert strip.size == (4 * 34 + 2, 36)
    grid = Image.open(out / "grid.png")
    assert grid.size == (3 * 34 + 2, 2 * 34 + 2)  # 5 images -> 3 columns, 2 rows
    # attention files missing on an otherwise complete folder are made again
    (out / "attention" / "000003.png").unlink()
    assert sampler.write(out, num=5, seed=0, attention=True)["written"] == 1


def test_folder_of_other_settings_is_refused(sampler: Sampler, tmp_path: Path) -> None:
    sampler.write(tmp_path, num=2, seed=0)
    with pytest.raises(SpapError, match="seed"):
        sampler.write(tmp_path, num=2, seed=1)


def test_cli_sample(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["sample", "--checkpoint", str(run_dir), "--num", "3", "--output", str(out)]
    assert cli_main([*args, "--grid", "--attention", "--batch-size", "2", "--device", "cpu"]) == 0
    assert _pngs(out) == ["000000.png", "000001.png", "000002.png"]
    assert (out / "grid.png").is_file() and len(list((out / "attention").glob("*.png"))) == 3
    # raw weights are other settings: refused for the same folder, fine for a new one
    assert cli_main([*args, "--no-ema"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "sample",
                "--checkpoint",
                str(run_dir),
                "--num",
                "1",
                "--output",
                str(tmp_path / "raw"),
                "--no-ema",
            ]
        )
        == 0
    )


def test_cyclegan_checkpoint_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "cg.pt"
    save_checkpoint(
        {"format": FORMAT, "version": VERSION, "kind": "cyclegan", "config": {}, "task": {}}, ckpt
    )
    with pytest.raises(CheckpointError, match="'cyclegan' checkpoint"):
        Sampler.from_checkpoint(ckpt)
    code = cli_main(
        ["sample", "--checkpoint", str(ckpt), "--num", "1", "--output", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cyclegan" in err


def test_generic_load_gives_a_sampler(run_dir: Path) -> None:
    from spap.inference import load

    s = load(run_dir, device="cpu", ema=False)
    assert isinstance(s, Sampler) and not s.ema
    assert s.sample(1, seed=0).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_gan_generator_export_matches_eager(
    run_dir: Path, tmp_path: Path, fmt: str, capsys
) -> None:
    out = tmp_path / f"g.{fmt}"
    argv = ["export", "--checkpoint", str(run_dir), "--format", fmt, "--output", str(out)]
    assert cli_main(argv) == 0
    assert "max abs diff vs eager" in capsys.readouterr().out
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    want = Sampler.from_checkpoint(run_dir, device="cpu").generator(z)
    if fmt == "safetensors":
        got = Sampler.from_checkpoint(out, device="cpu").generator(z)
        assert torch.equal(got, want)
    elif fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: z.numpy()})[0])
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert want.shape == (3, 3, 32, 32)
