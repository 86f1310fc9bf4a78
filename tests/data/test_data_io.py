from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spap.data.io import (
    IMAGE_EXTENSIONS,
    ImageTooLarge,
    UnreadableImage,
    list_images,
    read_image,
    scan_images,
)
from spap.errors import DataError


def test_list_images_sorted_recursive_and_filtered(tmp_path: Path, write_rgb) -> None:
    write_rgb(tmp_path / "b.png")
    write_rgb(tmp_path / "A.JPG")
    write_rgb(tmp_path / "sub" / "deeper" / "c.jpeg")
    write_rgb(tmp_path / ".hidden" / "h.png")
    write_rgb(tmp_path / ".dot.png")
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path)  # a directory cycle
    rel = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert rel == ["A.JPG", "b.png", "sub/deeper/c.jpeg"]
    flat = [p.name for p in list_images(tmp_path, recursive=False)]
    assert flat == ["A.JPG", "b.png"]
    _, excluded = scan_images(tmp_path)
    assert {(p.name, r) for p, r in excluded} == {
        ("dangling.png", "broken symlink"),
        ("zero.png", "empty file (0 bytes)"),
    }
    assert ".png" in IMAGE_EXTENSIONS and ".jpg" in IMAGE_EXTENSIONS


def test_list_images_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope"):
        list_images(tmp_path / "nope")


def test_conversions_to_rgb(bad_folder) -> None:
    root = bad_folder["root"]
    g16 = np.asarray(read_image(root / "c_gray16.png"))
    src = (np.arange(24 * 24).reshape(24, 24) * 100).astype(np.int64)
    assert g16.shape == (24, 24, 3) and g16.dtype == np.uint8
    np.testing.assert_array_equal(g16[..., 0], np.rint(src / 257).astype(np.uint8))
    np.testing.assert_array_equal(g16[..., 0], g16[..., 2])

    cmyk = np.asarray(read_image(root / "d_cmyk.jpg"))  # C=0 M=255 Y=255 K=0 -> red
    assert cmyk.shape == (24, 24, 3)
    assert np.abs(cmyk.reshape(-1, 3).mean(0) - [255, 0, 0]).max() < 6

    pal = np.asarray(read_image(root / "e_palette_alpha.png"))
    assert (pal[:, :12] == 255).all()  # transparent -> white background
    assert (pal[:, 12:] == [200, 10, 10]).all()

    gif = np.asarray(read_image(root / "f_anim.gif"))  # first frame only
    assert (gif == [0, 0, 255]).all()

    gray = read_image(root / "a_good.png", mode="L")
    assert gray.mode == "L" and gray.size == (24, 24)


def test_rgba_and_la_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :2, 3] = 255  # left opaque red, right fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = np.asarray(read_image(tmp_path / "rgba.png"))
    assert (out[:, :2] == [255, 0, 0]).all() and (out[:, 2:] == 255).all()
    la = Image.fromarray(
        np.stack([np.zeros((4, 4), np.uint8), np.full((4, 4), 128, np.uint8)], -1), "LA"
    )
    la.save(tmp_path / "la.png")
    assert (np.asarray(read_image(tmp_path / "la.png")) == 127).all()  # half black on white


def test_exif_orientation_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (8, 4), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert read_image(tmp_path / "rot.jpg").size == (4, 8)


def test_upright_images_are_not_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An image without an orientation tag (or tagged 1) is handed out as decoded: no copy
    of its pixels (an 8192x8192 photo would need another 200 MB), and it stays usable after
    its file is closed."""
    arr = np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "plain.png")
    tagged = Image.Exif()
    tagged[0x0112] = 1
    Image.fromarray(arr).save(tmp_path / "tagged.png", exif=tagged)
    copies = []
    real = Image.Image.copy
    monkeypatch.setattr(Image.Image, "copy", lambda self: copies.append(1) or real(self))
    for name in ("plain.png", "tagged.png"):
        out = read_image(tmp_path / name)
        assert np.array_equal(np.asarray(out), arr) and np.array_equal(np.asarray(out), arr)
    assert copies == []


@pytest.mark.parametrize("name", ["g_trunc.jpg", "h_trunc.png", "j_text.png"])
def test_undecodable_files_raise(bad_folder, name: str) -> None:
    with pytest.raises(UnreadableImage, match=name) as info:
        read_image(bad_folder["root"] / name)
    assert info.value.path.endswith(name)


def test_truncated_never_half_decoded_even_if_pillow_flag_set(bad_folder) -> None:
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(UnreadableImage):
            read_image(bad_folder["root"] / "g_trunc.jpg")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_decompression_bomb_guard(bad_folder, write_rgb, tmp_path: Path) -> None:
    with pytest.raises(ImageTooLarge, match="i_huge.png.*400000000 pixels"):
        read_image(bad_folder["root"] / "i_huge.png")
    small = write_rgb(tmp_path / "s.png", 10, 10)
    with pytest.raises(ImageTooLarge, match="99"):
        read_image(small, max_pixels=99)
    assert read_image(small, max_pixels=100).size == (10, 10)


def test_missing_file_is_unreadable(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING), pytest.raises(UnreadableImage, match="gone.png"):
        read_image(tmp_path / "gone.png")
