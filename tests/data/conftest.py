"""Small image files for the data tests, including every kind of bad file."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def rand_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_rgb(path: Path, h: int = 24, w: int = 24, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rand_rgb(h, w, seed)).save(path)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (the pixel data is a stub)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def truncate(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


@pytest.fixture
def bad_folder(tmp_path: Path) -> dict[str, object]:
    """A folder with good, convertible and bad files; returns the folder and the groups."""
    root = tmp_path / "mixed"
    root.mkdir()
    good = [save_rgb(root / "a_good.png", seed=1), save_rgb(root / "b_good.jpg", seed=2)]

    g16 = root / "c_gray16.png"
    Image.fromarray((np.arange(24 * 24).reshape(24, 24) * 100).astype(np.uint16)).save(g16)
    cmyk = root / "d_cmyk.jpg"
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(cmyk)
    pal = root / "e_palette_alpha.png"
    p = Image.new("P", (24, 24), 1)
    p.putpalette([0, 0, 0, 200, 10, 10] + [0] * (254 * 3))
    p.paste(0, (0, 0, 12, 24))
    p.save(pal, transparency=0)
    gif = root / "f_anim.gif"
    frames = [Image.new("RGB", (24, 24), c) for c in ((0, 0, 255), (255, 0, 0))]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50, loop=0)
    converted = [g16, cmyk, pal, gif]

    big_src = tmp_path / "big"
    big_src.mkdir()
    bad = [
        truncate(save_rgb(big_src / "t.jpg", 48, 48, seed=3), root / "g_trunc.jpg"),
        truncate(save_rgb(big_src / "t.png", 48, 48, seed=4), root / "h_trunc.png"),
        png_header_only(root / "i_huge.png", 20000, 20000),
    ]
    txt = root / "j_text.png"
    txt.write_text("this is not an image\n")
    bad.append(txt)

    (root / "k_empty.jpg").write_bytes(b"")
    (root / "l_broken.png").symlink_to(tmp_path / "does_not_exist.png")
    excluded = [root / "k_empty.jpg", root / "l_broken.png"]
    (root / "notes.txt").write_text("ignored")
    return {"root": root, "good": good + converted, "bad": bad, "excluded": excluded}


@pytest.fixture
def write_rgb():
    """``write_rgb(path, h=24, w=24, seed=0)`` writes a random RGB image (any format)."""
    return save_rgb
