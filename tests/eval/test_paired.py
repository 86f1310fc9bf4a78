"""PSNR and SSIM against hand-computed values and a direct implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from spap.eval.paired import gaussian_window, paired_metrics, psnr, ssim


def test_psnr_known_values() -> None:
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    y = x + 0.1  # MSE = 0.01 -> 20 dB
    assert psnr(y, x).tolist() == pytest.approx([20.0, 20.0])
    assert math.isinf(float(psnr(x, x)[0]))


def test_ssim_identity_and_constant_images() -> None:
    x = torch.rand(1, 3, 16, 16)
    assert float(ssim(x, x)[0]) == pytest.approx(1.0)
    # constant images: variances are 0, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1)
    a, b = 0.2, 0.6
    c1 = 0.01**2
    f64 = torch.float64
    got = float(
        ssim(torch.full((1, 1, 12, 12), a, dtype=f64), torch.full((1, 1, 12, 12), b, dtype=f64))[0]
    )
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


def test_ssim_matches_a_direct_window_loop() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.random((13, 13)), rng.random((13, 13))
    w = gaussian_window(11, 1.5).numpy()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(3):
        for j in range(3):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * (px - mx) ** 2).sum()
            vy = (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append(
                ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            )
    got = float(ssim(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None])[0])
    assert got == pytest.approx(np.mean(vals), rel=1e-9)


def test_paired_metrics_on_folders(tmp_path) -> None:
    rng = np.random.default_rng(1)
    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir()
    fake.mkdir()
    for i in range(3):
        im = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(im).save(real / f"{i}.png")
        Image.fromarray(im).save(fake / f"{i}.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(fake / "2.png")  # one wrong image
    out = paired_metrics(real, fake)
    assert out["num_images"] == 3
    assert math.isinf(out["per_image"]["0"]["psnr"]) and out["per_image"]["0"][
        "ssim"
    ] == pytest.approx(1.0)
    assert out["per_image"]["2"]["ssim"] < 0.1
    assert math.isinf(out["psnr"])
    # aligned real images: compare with the right half
    aligned = tmp_path / "aligned"
    aligned.mkdir()
    for i in range(3):
        b = np.asarray(Image.open(real / f"{i}.png"))
        Image.fromarray(np.concatenate([np.zeros_like(b), b], 1)).save(aligned / f"{i}.png")
    out2 = paired_metrics(aligned, fake, real_half="B")
    assert out2["per_image"]["1"]["ssim"] == pytest.approx(1.0)


def test_fake_name_suffixes(tmp_path) -> None:
    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir()
    fake.mkdir()
    im = np.full((12, 12, 3), 100, np.uint8)
    Image.fromarray(im).save(real / "a.png")
    Image.fromarray(im).save(fake / "a_fake_B.png")
    assert paired_metrics(real, fake)["num_images"] == 1
    Image.fromarray(im).save(fake / "a_fake_A.png")
    with pytest.raises(Exception, match="several generated images"):
        paired_metrics(real, fake)


class _Swap:
    """A 'translator' that returns a fixed image for every input (records its calls)."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def translate(self, batch: torch.Tensor, direction: str = "AtoB") -> torch.Tensor:
        self.calls.append((direction, tuple(batch.shape)))
        return torch.full_like(batch, self.value)


def test_paired_score_translates_one_half(tmp_path) -> None:
    from spap.eval.paired import paired_score

    test = tmp_path / "aligned" / "test"
    test.mkdir(parents=True)
    for i in range(3):
        left = np.full((8, 8, 3), 10, np.uint8)
        right = np.full((8, 8, 3), 255, np.uint8)  # [-1, 1] value 1.0 -> 255
        Image.fromarray(np.concatenate([left, right], 1)).save(test / f"{i}.png")
    t = _Swap(1.0)
    out = paired_score(
        t,
        tmp_path / "aligned",
        source_half="A",
        direction="AtoB",
        batch_size=2,
        save_dir=tmp_path / "gen",
    )
    assert out["num_images"] == 3 and out["size"] == 8 and math.isinf(out["psnr"])
    assert out["ssim"] == pytest.approx(1.0)
    assert t.calls == [("AtoB", (2, 3, 8, 8)), ("AtoB", (1, 3, 8, 8))]
    assert (tmp_path / "gen" / "2.png").is_file()
    # against the left half (value 10): MSE = (245/255)^2
    out = paired_score(_Swap(1.0), tmp_path / "aligned", source_half="B", direction="BtoA", size=16)
    assert out["size"] == 16
    assert out["psnr"] == pytest.approx(-20 * math.log10(245 / 255), rel=1e-6)
