"""Seam-free tiled translation: equal to the whole-image output, bounded memory, no seams."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_translate import write_checkpoint

from spap.cli import main as cli
from spap.errors import SpapError
from spap.inference.tiling import (
    auto_overlap,
    plan_tiles,
    receptive_radius,
    translate_tiled,
)
from spap.inference.translate import Translator, pad_to_multiple
from spap.models.cyclegan import build_generator

TINY = {"ngf": 4, "n_blocks": 1}
MODELS = {
    "plain": TINY,
    "spap_spatial": {
        **TINY,
        "attention": "spap",
        "g_attention_at": ["down:0", "trunk_end"],
        "g_attention_options": {"rates": [0, 1]},
    },
    "spap_both": {  # channel attention: a global average, gathered like the norms
        **TINY,
        "attention": "spap",
        "g_attention_at": ["up:1"],
        "g_attention_options": {"rates": [0, 1], "attention": "both"},
    },
    "group_norm": {**TINY, "norm": "group"},
}


def generator(model: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    g = build_generator(model).eval().requires_grad_(False)
    for unit in g.attention.values():
        unit.gamma.fill_(0.5)
    return g


def whole(g: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        padded, (h, w) = pad_to_multiple(x)
        return g(padded)[..., :h, :w]


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(0.02, 0.12, 3)
    arr = np.stack(
        [np.sin(yy * f[0] + c) * np.cos(xx * f[1] - c) * 110 + 128 for c in range(3)], -1
    )
    return (arr + rng.normal(0, 6, arr.shape)).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(MODELS))
def test_tiled_equals_whole_image(name: str) -> None:
    g = generator(MODELS[name])
    x = torch.rand(2, 3, 130, 142) * 2 - 1  # not multiples of 4: padded like the whole path
    want = whole(g, x)
    overlap = auto_overlap(g)
    plan = plan_tiles(132, 144, 48, overlap)
    assert plan.count == 9 and overlap < 64  # the middle tile does not see the whole image
    got = translate_tiled(g, x, tile=48, overlap="auto")
    assert got.shape == want.shape
    assert float((got - want).abs().max()) < 1e-4


def test_tiny_image_and_one_tile_are_the_whole_path() -> None:
    g = generator(MODELS["plain"])
    for shape in ((1, 3, 5, 7), (1, 3, 40, 36)):  # replicate padding; one tile
        x = torch.rand(*shape) * 2 - 1
        assert torch.equal(translate_tiled(g, x, tile=64, overlap=0), whole(g, x))


def test_generator_is_left_as_it_was() -> None:
    g = generator(MODELS["spap_both"])
    before = {k: v.clone() for k, v in g.state_dict().items()}
    translate_tiled(g, torch.rand(1, 3, 64, 64), tile=16, overlap=8)
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())
    for m in g.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert type(g).forward is type(build_generator(MODELS["plain"])).forward


def test_pil_and_arrays_match_translate_within_one_level() -> None:
    g = generator(MODELS["spap_both"])
    t = Translator({"AtoB": g}, "cpu")
    arr = smooth_image(110, 98)
    want = np.asarray(t.translate(Image.fromarray(arr)), dtype=int)
    got = t.translate(Image.fromarray(arr), tile=40)
    assert isinstance(got, Image.Image) and got.size == (98, 110)
    diff = np.abs(np.asarray(got, dtype=int) - want)
    # float differences of ~1e-6 can only flip a value sitting on a rounding boundary
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    got_arr = t.translate(arr, tile=40)
    assert got_arr.dtype == np.uint8 and np.abs(got_arr.astype(int) - want).max() <= 1
    x = torch.rand(3, 60, 44) * 2 - 1
    assert float((t.translate(x, tile=24) - t.translate(x)).abs().max()) < 1e-4


def test_naive_tiles_show_seams_and_these_do_not() -> None:
    """Translating tiles on their own (per-tile instance norm) steps at tile borders;
    shared statistics and blending remove the step even with a small overlap."""
    g = generator(MODELS["plain"])
    x = torch.from_numpy(smooth_image(128, 128)).permute(2, 0, 1)[None].float() / 127.5 - 1
    x[..., :, 64:] = x[..., :, 64:] * 0.3 + 0.5  # the right half brighter, lower contrast
    want = whole(g, x)
    naive = torch.cat([whole(g, x[..., :, :64]), whole(g, x[..., :, 64:])], dim=-1)
    ours = translate_tiled(g, x, tile=64, overlap=8)  # far below the exact overlap
    err_naive = float((naive - want).abs().mean())
    err_ours = float((ours - want).abs().mean())
    assert err_naive > 10 * err_ours
    assert float((ours - want).abs().max()) < 0.5 * float((naive - want).abs().max())


def test_downscaled_statistics_are_close_on_a_smooth_image() -> None:
    g = generator(MODELS["spap_both"])
    arr = smooth_image(160, 128)
    want = whole(g, torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 127.5 - 1)
    want_u8 = ((want[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
    got = translate_tiled(g, arr, tile=64, overlap="auto", stats="downscaled", stats_size=80)
    diff = np.abs(got.astype(float) - want_u8)
    assert diff.mean() < 8  # grey levels: approximate statistics, documented as such
    exact = translate_tiled(g, arr, tile=64, overlap="auto")
    assert np.abs(exact.astype(float) - want_u8).max() <= 1


def test_receptive_radius_bounds_the_reach_of_a_pixel() -> None:
    g = generator({**MODELS["spap_spatial"], "norm": "none"})  # no global statistics
    r = receptive_radius(g)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    y = x.clone()
    y[..., 128, 128] += 1.0
    changed = (g(y) - g(x)).abs().amax(dim=1)[0] > 0
    rows, cols = torch.nonzero(changed, as_tuple=True)
    reach = int(max((rows - 128).abs().max(), (cols - 128).abs().max()))
    assert 0 < reach <= r
    assert r < 2 * reach  # a useful bound, not a huge one
    m = auto_overlap(g)
    assert m % 4 == 0 and m - m // 4 >= r


def test_plan_and_errors() -> None:
    plan = plan_tiles(8192, 8192, 1024, 64)
    assert plan.rows == [1024 * i for i in range(9)] and plan.blend == 16
    plan = plan_tiles(1000, 600, 256, 32)  # near-equal cores on multiples of 4
    assert all(b % 4 == 0 for b in plan.rows + plan.cols)
    assert max(np.diff(plan.rows)) - min(np.diff(plan.rows)) <= 4
    with pytest.raises(SpapError, match="--tile"):
        plan_tiles(100, 100, 30, 0)
    with pytest.raises(SpapError, match="--overlap"):
        plan_tiles(100, 100, 32, 6)
    sagan = build_generator({**TINY, "attention": "sagan", "g_attention_at": ["trunk_end"]})
    with pytest.raises(SpapError, match="SAGAN unit attention.block_0 attends over the whole"):
        translate_tiled(sagan.eval(), torch.zeros(1, 3, 64, 64), tile=32)
    with pytest.raises(SpapError, match="tile statistics"):
        translate_tiled(generator(TINY), torch.zeros(1, 3, 64, 64), tile=32, stats="mean")


def test_cli_tiles_equal_whole_translation(tmp_path: Path, capsys) -> None:
    ck = write_checkpoint(
        tmp_path / "ck" / "step_0000001.pt",
        {
            "attention": "spap",
            "g_attention_at": ["trunk_end"],
            "g_attention_options": {"rates": [0, 1]},
        },
    )
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(smooth_image(100, 84)).save(src / "a.png")
    Image.fromarray(smooth_image(60, 90, seed=1)).save(src / "b.jpg")
    args = ["translate", "--checkpoint", str(ck), "--input", str(src), "--device", "cpu"]
    assert cli([*args, "--output", str(tmp_path / "whole")]) == 0
    assert cli([*args, "--output", str(tmp_path / "tiled"), "--tile", "48"]) == 0
    assert "translated 2 image(s)" in capsys.readouterr().out
    for name in ("a.png", "b.png"):
        a = np.asarray(Image.open(tmp_path / "whole" / name), dtype=int)
        b = np.asarray(Image.open(tmp_path / "tiled" / name), dtype=int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1
    for bad, msg in (
        (["--tile", "30"], "--tile must be a multiple of 4"),
        (["--tile", "32", "--overlap", "5"], "--overlap must be auto or a non-negative"),
        (["--tile", "32", "--attention"], "--attention overlays are not written with --tile"),
    ):
        assert cli([*args, "--output", str(tmp_path / "bad"), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


TIME = shutil.which("time") or "/usr/bin/time"


@pytest.mark.slow
@pytest.mark.skipif(not Path(TIME).exists(), reason="needs GNU time (/usr/bin/time -v)")
def test_8192_image_in_bounded_memory(tmp_path: Path) -> None:
    """An 8192x8192 image (64 Mpx, the decoder's default limit) through ``spap translate
    --tile`` in a separate process: peak resident memory (``/usr/bin/time -v``) under 2 GB.
    A tiny generator (ngf=4, one block, a SPAP unit) keeps the test short; activations per
    tile grow with ngf, the image buffers (3 bytes per pixel in and out) do not."""
    n = int(os.environ.get("SPAP_TILE_TEST_SIZE", "8192"))
    ck = write_checkpoint(
        tmp_path / "ck" / "step_0000001.pt",
        {
            "ngf": 4,
            "ndf": 4,
            "n_blocks": 1,
            "attention": "spap",
            "g_attention_at": ["trunk_end"],
            "g_attention_options": {"rates": [0, 1]},
        },
    )
    src = tmp_path / "big.png"
    yy = np.linspace(0, 40, n, dtype=np.float32)[:, None]
    xx = np.linspace(0, 30, n, dtype=np.float32)[None, :]
    arr = np.empty((n, n, 3), np.uint8)
    arr[..., 0] = np.sin(yy) * np.cos(xx) * 100 + 128
    arr[..., 1] = np.sin(yy + xx) * 100 + 128
    arr[..., 2] = np.cos(yy * 0.5) * 100 + 128
    Image.fromarray(arr).save(src, compress_level=1)
    del arr
    out = tmp_path / "out"
    cmd = [TIME, "-v", sys.executable, "-m", "spap.cli", "translate", "--checkpoint", str(ck)]
    cmd += ["--input", str(src), "--output", str(out), "--tile", "512", "--device", "cpu"]
    cmd += ["--tile-stats", os.environ.get("SPAP_TILE_TEST_STATS", "downscaled")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    print(f"peak RSS {peak_kb / 1024:.0f} MiB for {n}x{n}")
    assert peak_kb < 2 * 1024 * 1024
    with Image.open(out / "big.png") as im:
        assert im.size == (n, n)
