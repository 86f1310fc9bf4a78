"""Channels, bit depth and normalisation: reading at full precision, the reference's exact
8-bit values, 16-bit round trips, N-channel arrays, atomic image writes."""

from __future__ import annotations

import errno
import resource
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F

from spap.data.datasets import AlignedDataset, ImageFolderDataset, UnalignedDataset
from spap.data.io import (
    ImageTooLarge,
    UnreadableImage,
    _orient,
    list_images,
    read_image,
    read_pixels,
)
from spap.data.pairs import to_tensor as pairs_to_tensor
from spap.data.transforms import (
    ImageTransform,
    check_value_range,
    encode_png16,
    save_image,
    tensor_to_array,
    tensor_to_pil,
    to_tensor_image,
    value_bounds,
)
from spap.errors import ConfigError, WriteError


def _levels_image(mode: str) -> Image.Image:
    """A 16x16 image holding every 8-bit level once (per channel, in shifted orders)."""
    v = np.arange(256, dtype=np.uint8).reshape(16, 16)
    if mode == "L":
        return Image.fromarray(v)
    return Image.fromarray(np.stack([v, v[::-1], v.T], -1))


def _reference(img: Image.Image) -> torch.Tensor:
    """The reference CycleGAN's ``get_transform`` tail: ToTensor, then Normalize(0.5, 0.5)."""
    c = len(img.getbands())
    return T.Normalize((0.5,) * c, (0.5,) * c)(T.ToTensor()(img))


# ----------------------------------------------------------------------------- item 5


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_8bit_values_identical_to_the_reference_for_all_256_levels(mode: str) -> None:
    img = _levels_image(mode)
    ref = _reference(img)
    assert torch.equal(to_tensor_image(img), ref)  # bitwise, every level
    assert torch.equal(to_tensor_image(np.asarray(img).reshape(16, 16, -1)), ref)
    # what the old x / 127.5 - 1 gives differs at 111 of the 256 levels
    levels = torch.arange(256, dtype=torch.uint8)
    old = F.to_dtype(levels, torch.float32, scale=True) * 2 - 1
    new = to_tensor_image(_levels_image("L")).flatten()
    assert int((old != new).sum()) == 111
    # the transform without resize / crop / flip gives the same values
    t = ImageTransform("none", 16, 16, flip=False)
    assert torch.equal(t(img), ref)


def test_fcn_inputs_identical_to_the_training_values() -> None:
    img = _levels_image("RGB")
    assert torch.equal(pairs_to_tensor(np.asarray(img)), _reference(img))


def test_dataset_items_identical_to_the_reference(tmp_path: Path) -> None:
    for side in ("trainA", "trainB"):
        (tmp_path / side).mkdir()
        _levels_image("RGB").save(tmp_path / side / "x.png")
    kw = dict(load_size=16, crop_size=16, preprocess="none", flip=False)
    ds = UnalignedDataset(tmp_path, channels_A=3, channels_B=1, **kw)
    item = ds[0]
    ref_rgb = _reference(Image.open(tmp_path / "trainA" / "x.png").convert("RGB"))
    ref_gray = _reference(T.Grayscale(1)(Image.open(tmp_path / "trainB" / "x.png")))
    assert torch.equal(item["A"], ref_rgb)
    assert torch.equal(item["B"], ref_gray)  # the reference's grayscale=(nc == 1) path


def test_8bit_round_trip_rounds_back_exactly(tmp_path: Path) -> None:
    img = _levels_image("RGB")
    t = to_tensor_image(img)
    assert np.array_equal(np.asarray(tensor_to_pil(t)), np.asarray(img))
    # written PNGs round to the nearest level (the reference truncates): 0.6 of a level up
    x = torch.full((1, 1, 1), (10.6 / 255) * 2 - 1)
    assert tensor_to_array(x)[0, 0, 0] == 11


# ----------------------------------------------------------------------------- 16 bit


def test_16bit_gray_round_trip_is_exact_for_all_65536_levels(tmp_path: Path) -> None:
    levels = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    Image.fromarray(levels).save(tmp_path / "in.png")
    arr = read_pixels(tmp_path / "in.png", channels=1)
    assert arr.dtype == np.uint16 and arr.shape == (256, 256, 1)
    t = to_tensor_image(arr)
    assert t.dtype == torch.float32 and t.min() == -1 and t.max() == 1
    save_image(t, tmp_path / "out.png", bit_depth=16)
    with Image.open(tmp_path / "out.png") as im:
        assert im.mode == "I;16"
        back = np.asarray(im)
    err = np.abs(back.astype(np.int64) - levels).max()
    assert err == 0  # less than one 16-bit level: exactly the input


def test_16bit_rgb_png_read_and_written_at_16_bits(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 65536, (9, 11, 3)).astype(np.uint16)
    (tmp_path / "rgb16.png").write_bytes(encode_png16(rgb))
    with Image.open(tmp_path / "rgb16.png") as im:  # Pillow alone reduces it to 8 bits
        assert im.mode == "RGB"
    arr = read_pixels(tmp_path / "rgb16.png")
    assert arr.dtype == np.uint16 and np.array_equal(arr, rgb)
    save_image(to_tensor_image(arr), tmp_path / "out.png", bit_depth=16)
    assert np.array_equal(read_pixels(tmp_path / "out.png"), rgb)
    gray = read_pixels(tmp_path / "rgb16.png", channels=1)  # Pillow's luma, at 16 bits
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    assert np.array_equal(gray[..., 0], (r * 19595 + g * 38470 + b * 7471 + 32768) >> 16)
    rgba = np.concatenate([rgb, np.zeros((9, 11, 1), np.uint16)], -1)  # fully transparent
    (tmp_path / "rgba16.png").write_bytes(encode_png16(rgba))
    assert (read_pixels(tmp_path / "rgba16.png") == 65535).all()  # composited onto white
    assert np.array_equal(read_pixels(tmp_path / "rgba16.png", channels=4), rgba)


def _tiff_rgb16(arr: np.ndarray) -> bytes:
    """An uncompressed 16-bit RGB baseline TIFF (Pillow cannot write one)."""
    h, w, c = arr.shape
    data = arr.astype("<u2").tobytes()
    tags = [(256, w), (257, h), (258, None), (259, 1), (262, 2), (273, None), (277, c)]
    tags += [(278, h), (279, len(data)), (284, 1)]
    ifd_size = 2 + len(tags) * 12 + 4
    bps_at = 8 + ifd_size
    data_at = bps_at + 2 * c
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags))
    for tag, value in tags:
        if tag == 258:
            out += struct.pack("<HHII", tag, 3, c, bps_at)
        elif tag in (273, 279):
            out += struct.pack("<HHII", tag, 4, 1, data_at if tag == 273 else value)
        else:
            out += struct.pack("<HHIHH", tag, 3, 1, value, 0)
    return out + b"\x00" * 4 + struct.pack("<" + "H" * c, *[16] * c) + data


def test_files_pillow_would_reduce_to_8_bits_are_refused(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 65536, (5, 7, 3)).astype(np.uint16)
    (tmp_path / "rgb16.tif").write_bytes(_tiff_rgb16(rgb))
    (tmp_path / "rgb16.ppm").write_bytes(b"P6\n7 5\n65535\n" + rgb.astype(">u2").tobytes())
    for name in ("rgb16.tif", "rgb16.ppm"):
        with pytest.raises(UnreadableImage, match="only 8 of its bits.*16-bit PNG or a .npy"):
            read_pixels(tmp_path / name)
    gray = rgb[..., 0]
    (tmp_path / "g16.pgm").write_bytes(b"P5\n7 5\n65535\n" + gray.astype(">u2").tobytes())
    Image.fromarray(gray).save(tmp_path / "g16.tif")
    for name in ("g16.pgm", "g16.tif"):  # 16-bit gray: Pillow keeps it
        assert np.array_equal(read_pixels(tmp_path / name, 1)[..., 0], gray)


def test_float_tiff_and_value_ranges(tmp_path: Path) -> None:
    f = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(f).save(tmp_path / "f.tif")
    arr = read_pixels(tmp_path / "f.tif", 1)
    assert arr.dtype == np.float32 and np.array_equal(arr[..., 0], f)
    t = to_tensor_image(arr)
    np.testing.assert_allclose(t[0].numpy(), f * 2 - 1, atol=1e-7)
    hu = np.linspace(-1000, 3000, 64, dtype=np.float32).reshape(8, 8)  # CT-like units
    kept = hu.copy()
    t = to_tensor_image(hu[..., None], value_range=(-1000, 1000))
    assert np.array_equal(hu, kept)  # the caller's array is not touched
    assert t.min() == -1 and t.max() == 1  # clipped outside [lo, hi]
    np.testing.assert_allclose(t[0, 0, :3].numpy(), hu[0, :3] / 1000, atol=1e-6)
    assert value_bounds("auto", np.uint8) == (0, 255)
    assert value_bounds("auto", np.uint16) == (0, 65535)
    assert value_bounds("auto", np.float32) == (0, 1)
    assert value_bounds([0, 4095], np.uint16) == (0, 4095)
    for bad in ("minmax", [1, 1], [0], [0, float("inf")], [True, 2]):
        with pytest.raises(ConfigError, match="data.value_range must be auto or"):
            check_value_range(bad, prefix="data.")


def test_16bit_resize_keeps_precision_and_geometry_of_the_8bit_path() -> None:
    rng = np.random.default_rng(2)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    img8 = np.asarray(Image.fromarray(small).resize((40, 40), Image.BICUBIC))
    t = ImageTransform("resize_and_crop", 36, 32, flip=True)
    for seed in range(4):
        g8, g16 = (torch.Generator().manual_seed(seed) for _ in range(2))
        a = t(img8, g8)  # 8-bit: Pillow's resize, the reference's path
        b = t(img8.astype(np.uint16) * 257, g16)  # the same image at 16 bits: torch resize
        assert a.shape == b.shape == (3, 32, 32)
        assert (a - b).abs().max() < 3 / 255  # same crop and flip; resize filters agree
    ramp = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40, 1) % 1000) + 30000
    out = ImageTransform("resize_and_crop", 36, 32, flip=False)(ramp)
    levels = torch.unique(((out + 1) * 32767.5).round())
    assert len(levels) > 200  # an 8-bit path would leave at most 5 levels in this span


# ----------------------------------------------------------------------------- channels


def test_channel_counts_and_conversions(tmp_path: Path) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    gray = read_pixels(tmp_path / "rgb.png", 1)
    assert gray.shape == (6, 8, 1)
    assert np.array_equal(gray[..., 0], np.asarray(Image.fromarray(rgb).convert("L")))
    assert np.array_equal(read_pixels(tmp_path / "rgb.png"), rgb)
    with pytest.raises(UnreadableImage, match="has 3 channels, 4 expected"):
        read_pixels(tmp_path / "rgb.png", 4)
    rgba = np.concatenate([rgb, np.full((6, 8, 1), 7, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(read_pixels(tmp_path / "rgba.png", 4), rgba)  # alpha kept
    assert np.array_equal(
        read_pixels(tmp_path / "rgba.png", 3), np.asarray(read_image(tmp_path / "rgba.png"))
    )
    Image.fromarray(rgba, "CMYK").save(tmp_path / "cmyk.tif")
    assert np.array_equal(read_pixels(tmp_path / "cmyk.tif", 4), rgba)  # raw bands
    assert read_pixels(tmp_path / "rgba.png", 1).shape == (6, 8, 1)


def test_npy_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    chw = rng.random((6, 10, 12), dtype=np.float32)
    np.save(tmp_path / "chw.npy", chw)
    np.save(tmp_path / "hwc.npy", chw.transpose(1, 2, 0).astype(">f4"))  # big-endian too
    for name in ("chw.npy", "hwc.npy"):
        arr = read_pixels(tmp_path / name, 6)
        assert arr.shape == (10, 12, 6) and arr.dtype == np.float32
        assert np.array_equal(arr, chw.transpose(1, 2, 0))
    np.save(tmp_path / "u16.npy", (chw[0] * 65535).astype(np.uint16))
    assert read_pixels(tmp_path / "u16.npy", 3).shape == (10, 12, 3)  # 2-D: gray -> RGB
    assert read_pixels(tmp_path / "u16.npy", 1).dtype == np.uint16
    with pytest.raises(UnreadableImage, match=r"shape \(6, 10, 12\) has 12 channels, 4"):
        read_pixels(tmp_path / "chw.npy", 4)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UnreadableImage, match="obj.npy: not a readable .npy array"):
        read_pixels(tmp_path / "obj.npy")  # never unpickled
    data = (tmp_path / "chw.npy").read_bytes()
    (tmp_path / "trunc.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage, match="trunc.npy"):
        read_pixels(tmp_path / "trunc.npy", 6)
    nan = chw.copy()
    nan[0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(UnreadableImage, match="NaN"):
        read_pixels(tmp_path / "nan.npy", 6)
    np.save(tmp_path / "big.npy", np.zeros((1, 20, 20), np.uint8))
    with pytest.raises(ImageTooLarge, match="400 pixels"):
        read_pixels(tmp_path / "big.npy", 1, max_pixels=399)
    assert "chw.npy" not in [p.name for p in list_images(tmp_path)]
    assert "chw.npy" in [p.name for p in list_images(tmp_path, arrays=True)]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_of_arrays_matches_pillow(orientation: int) -> None:
    arr = np.random.default_rng(orientation).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    im.getexif()[0x0112] = orientation
    assert np.array_equal(_orient(arr, orientation), np.asarray(ImageOps.exif_transpose(im)))


# ----------------------------------------------------------------------------- datasets


def _write_set(root: Path, folder: str, n: int, kind: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if kind == "gray16":
            Image.fromarray(rng.integers(0, 65536, (20, 24), dtype=np.uint16)).save(
                root / folder / f"{i}.png"
            )
        elif kind == "npy4":
            np.save(root / folder / f"{i}.npy", rng.random((4, 20, 24), dtype=np.float32))
        else:
            Image.fromarray(rng.integers(0, 256, (20, 48, 3), dtype=np.uint8)).save(
                root / folder / f"{i}.png"
            )


def test_datasets_produce_the_configured_channel_counts(tmp_path: Path) -> None:
    _write_set(tmp_path, "trainA", 2, "gray16")
    _write_set(tmp_path, "trainB", 3, "npy4", seed=1)
    _write_set(tmp_path, "train", 2, "rgb", seed=2)
    kw = dict(load_size=18, crop_size=16)
    ds = UnalignedDataset(tmp_path, channels_A=1, channels_B=4, **kw)
    item = ds[(0, 1)]
    assert item["A"].shape == (1, 16, 16) and item["B"].shape == (4, 16, 16)
    assert item["A"].dtype == item["B"].dtype == torch.float32
    swapped = UnalignedDataset(tmp_path, direction="BtoA", channels_A=4, channels_B=1, **kw)
    assert swapped[0]["A"].shape == (4, 16, 16) and "trainB" in swapped[0]["A_path"]
    al = AlignedDataset(tmp_path, channels_A=1, channels_B=3, **kw)
    assert al[0]["A"].shape == (1, 16, 16) and al[0]["B"].shape == (3, 16, 16)
    with pytest.raises(ConfigError, match="equal, or 1 and 3; got 4 and 3"):
        AlignedDataset(tmp_path, channels_A=4, channels_B=3, **kw)
    folder = ImageFolderDataset(tmp_path / "trainA", size=16, channels=1)
    assert folder[0]["image"].shape == (1, 16, 16)
    # a folder whose files cannot give the channel count fails, naming it and the reason
    with pytest.raises(Exception, match=r"no readable image in .*trainA.*has 1 channels, 4"):
        UnalignedDataset(tmp_path, channels_A=4, channels_B=4, **kw)


def test_float_data_outside_0_1_needs_a_value_range(tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    np.save(
        tmp_path / "f" / "ct.npy", np.linspace(-1000, 3000, 256, dtype=np.float32).reshape(16, 16)
    )
    with pytest.raises(Exception, match=r"ct.npy: its values span -1000..3000.*data.value_range"):
        ImageFolderDataset(tmp_path / "f", size=16, channels=1)
    ds = ImageFolderDataset(tmp_path / "f", size=16, channels=1, value_range=[-1000, 3000])
    x = ds[0]["image"]
    assert x.min() == -1 and x.max() == 1


# ----------------------------------------------------------------------------- atomic writes


def test_save_image_writes_grayscale_16bit_and_npy(tmp_path: Path) -> None:
    t1 = torch.rand(1, 6, 7) * 2 - 1
    assert Image.open(save_image(t1, tmp_path / "g8.png")).mode == "L"
    assert Image.open(save_image(t1, tmp_path / "g16.png", bit_depth=16)).mode == "I;16"
    t4 = torch.rand(4, 6, 7) * 2 - 1
    arr = np.load(save_image(t4, tmp_path / "x.npy", bit_depth=16))
    assert arr.shape == (6, 7, 4) and arr.dtype == np.uint16
    with pytest.raises(ValueError, match="4-channel image can only be written as .npy"):
        save_image(t4, tmp_path / "x.png")
    assert not list(tmp_path.glob(".*.tmp"))


def test_save_image_never_leaves_a_truncated_file(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    save_image(torch.zeros(3, 8, 8), target)
    before = target.read_bytes()
    noise = torch.rand(3, 128, 128) * 2 - 1  # about 49 KB of PNG
    # a real file-size limit (RLIMIT_FSIZE): writing past 4 KiB fails with EFBIG
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(WriteError) as info:
            save_image(noise, target)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert (
        str(info.value)
        == f"could not write {target}: file too large (the file-size limit, ulimit -f)"
    )
    assert info.value.__cause__.errno == errno.EFBIG
    assert target.read_bytes() == before  # the earlier image is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temporary left
    save_image(noise, target)  # and with room it is written whole
    assert np.array_equal(np.asarray(Image.open(target)), tensor_to_array(noise))
