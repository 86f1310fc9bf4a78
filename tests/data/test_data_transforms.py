from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spap.data.transforms import (
    PREPROCESS_OPTIONS,
    ImageTransform,
    check_transform_options,
    save_image,
    tensor_to_pil,
    to_tensor_image,
)
from spap.errors import ConfigError


def _img(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("preprocess", "load", "crop", "size", "expected"),
    [
        ("resize_and_crop", 36, 32, (40, 30), (32, 32)),
        ("crop", 99, 16, (40, 30), (16, 16)),
        ("crop", 99, 32, (40, 20), (32, 32)),  # smaller than the crop: scaled up first
        ("scale_width", 32, 16, (40, 30), (24, 32)),  # width 32, height 32*30/40
        ("scale_width", 32, 28, (40, 30), (28, 32)),  # height at least crop_size
        ("scale_width_and_crop", 32, 16, (40, 30), (16, 16)),
        ("none", 1, 1, (30, 22), (24, 32)),  # multiples of 4
        ("none", 1, 1, (32, 16), (16, 32)),
    ],
)
def test_preprocess_shapes_and_range(preprocess, load, crop, size, expected) -> None:
    t = ImageTransform(preprocess, load, crop, flip=True)
    out = t(_img(*size), torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, *expected)
    assert out.min() >= -1 and out.max() <= 1
    assert t.resized_size(*size)[0] >= (crop if preprocess.endswith("crop") else 0)


def test_all_options_listed() -> None:
    assert set(PREPROCESS_OPTIONS) == {
        "resize_and_crop",
        "crop",
        "scale_width",
        "scale_width_and_crop",
        "none",
    }


def test_crop_larger_than_load_names_both_keys() -> None:
    with pytest.raises(ConfigError, match=r"crop_size \(64\).*load_size \(32\)"):
        ImageTransform("resize_and_crop", load_size=32, crop_size=64)
    with pytest.raises(ConfigError, match=r"data\.crop_size.*data\.load_size"):
        check_transform_options("scale_width_and_crop", 32, 64, prefix="data.")
    with pytest.raises(ConfigError, match="preprocess.*resize_and_crop"):
        ImageTransform("zoom")
    with pytest.raises(ConfigError, match="load_size"):
        ImageTransform("resize_and_crop", load_size=0, crop_size=0)
    check_transform_options("crop", 16, 64)  # load_size unused by "crop"


def test_values_exact_and_roundtrip(tmp_path: Path) -> None:
    img = _img(12, 8)
    t = to_tensor_image(img)
    assert tuple(t.shape) == (3, 8, 12)
    arr = np.asarray(img).astype(np.float32)
    np.testing.assert_allclose(t.permute(1, 2, 0).numpy(), arr / 127.5 - 1, atol=1e-6)
    assert np.array_equal(np.asarray(tensor_to_pil(t)), np.asarray(img))
    assert np.array_equal(np.asarray(tensor_to_pil(t[None])), np.asarray(img))  # (1, C, H, W)
    assert tensor_to_pil(t[:1]).mode == "L"
    assert tensor_to_pil(torch.full((3, 2, 2), 5.0)).getpixel((0, 0)) == (255, 255, 255)
    path = save_image(t, tmp_path / "sub" / "x.png")
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(img))
    black_white = to_tensor_image(Image.fromarray(np.array([[0, 255]], np.uint8)).convert("RGB"))
    assert black_white.min() == -1 and black_white.max() == 1


def test_randomness_only_from_generator() -> None:
    t = ImageTransform("resize_and_crop", 40, 16, flip=True)
    img = _img(40, 40)
    a = t(img, torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # global state must not matter
    b = t(img, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    outs = {t(img, torch.Generator().manual_seed(s)).sum().item() for s in range(8)}
    assert len(outs) > 1
    flips = {t.get_params(img.size, torch.Generator().manual_seed(s)).flip for s in range(16)}
    assert flips == {True, False}
    assert not any(
        ImageTransform("crop", 40, 16, flip=False)
        .get_params(img.size, torch.Generator().manual_seed(s))
        .flip
        for s in range(16)
    )


def test_crop_and_flip_params_applied_exactly() -> None:
    img = _img(20, 20)
    t = ImageTransform("crop", 20, 8, flip=True)
    params = t.get_params(img.size, torch.Generator().manual_seed(3))
    top, left, h, w = params.crop
    ref = np.asarray(img)[top : top + h, left : left + w].astype(np.float32) / 127.5 - 1
    if params.flip:
        ref = ref[:, ::-1]
    np.testing.assert_allclose(t.apply(img, params).permute(1, 2, 0).numpy(), ref, atol=1e-6)
