"""Built-in procedural street scenes: seeded label map / photo pairs.

Nothing can be downloaded here, so the project generates its own Cityscapes-like data. A
scene is a street in perspective: sky, a skyline of buildings, a road with sidewalks on both
sides, grass verges with hedges, trees, lamp posts, street furniture, people and cars. The
label map uses Cityscapes class names and colours (:data:`SCENE_CLASSES`,
:data:`SCENE_PALETTE`); the photo is rendered with per-class textures, a sun-side lighting
gradient, cast shadows, exposure changes and sensor noise.

The translation is built to need context and several scales (what SPAP claims to add):

- **same colour, different texture scale**: road and sidewalk share one mean grey per scene
  and differ only in the scale of their texture (1-pixel asphalt grain vs. paving slabs about
  9 % of the image wide); vegetation and terrain share one mean green (coarse leafy blobs vs.
  fine grass grain);
- **class from surroundings**: cars and street furniture (bins/kiosks, labelled ``pole`` like
  Cityscapes' lamp posts) are drawn with the *same* appearance distribution; only what they
  stand on (road vs. sidewalk, itself told apart by texture scale) decides the class;
- **global context**: glass towers reflect the sky (their facade is the sky's colour at that
  height), so inside them only the far-away outline - a rectangle standing on the horizon -
  tells building from sky; the sky's colour changes per scene (clear, overcast, dusk);
- **several scales**: 1-pixel-wide lamp posts and people next to road regions half the image
  wide; object sizes follow the perspective depth.

:func:`render_scene` draws one scene; :func:`write_scenes` writes a dataset in the CycleGAN
layout, the aligned A|B layout and ground-truth class-id maps, with train, validation and
test splits (``spap data scenes``).
Everything is vectorised numpy and a pure function of the seed (bit-identical output).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from spap.errors import ConfigError, DataError
from spap.files import atomic_write
from spap.seeds import derive_seed

__all__ = [
    "MAX_SIZE",
    "MIN_SIZE",
    "SCENE_CLASSES",
    "SCENE_PALETTE",
    "ids_to_rgb",
    "render_scene",
    "rgb_to_ids",
    "scene_statistics",
    "write_scenes",
]

#: Class names, in id order (a subset of the Cityscapes train classes).
SCENE_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "pole",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "car",
)

#: Label colours (K x 3 uint8), the Cityscapes colours of :data:`SCENE_CLASSES`.
SCENE_PALETTE: np.ndarray = np.array(
    [
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (153, 153, 153),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (0, 0, 142),
    ],
    dtype=np.uint8,
)
SCENE_PALETTE.setflags(write=False)

MIN_SIZE, MAX_SIZE = 32, 256
_FORMAT_VERSION = 1

ROAD, SIDEWALK, BUILDING, POLE, VEGETATION, TERRAIN, SKY, PERSON, CAR = range(9)

# texture kinds of the photo
_FLAT, _FINE, _BLOCK, _BLOB = 0, 1, 2, 3

_FACADES = np.array(
    [(182, 160, 128), (150, 82, 62), (122, 122, 128), (204, 192, 170), (96, 88, 82)], np.float32
)
_PAINTS = np.array(
    [
        (196, 34, 30),
        (34, 62, 160),
        (228, 228, 226),
        (40, 40, 44),
        (150, 150, 156),
        (60, 118, 64),
        (222, 180, 44),
    ],
    np.float32,
)
_CLOTHES = np.array(
    [(30, 30, 34), (200, 40, 40), (40, 80, 170), (230, 200, 60), (235, 235, 235), (110, 70, 150)],
    np.float32,
)
_SKIES = (  # (top colour, horizon colour)
    ((62, 112, 190), (172, 202, 232)),  # clear
    ((148, 152, 160), (204, 204, 208)),  # overcast
    ((72, 70, 138), (240, 164, 112)),  # dusk
)


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Class-id map (H, W) -> label colours (H, W, 3) uint8 via :data:`SCENE_PALETTE`."""
    return SCENE_PALETTE[np.asarray(ids)]


def rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    """Colours (H, W, 3) -> class ids (H, W) int64 of the nearest palette colour.

    Exact for label maps written by this module; for generated (approximate) label images it
    is the usual nearest-colour decoding.
    """
    x = np.asarray(rgb, dtype=np.int32)[..., None, :]
    d = ((x - SCENE_PALETTE.astype(np.int32)) ** 2).sum(-1)
    return d.argmin(-1)


class _Canvas:
    """Label, base colour and texture buffers painted shape by shape (back to front)."""

    def __init__(self, size: int) -> None:
        self.s = size
        self.label = np.full((size, size), SKY, np.uint8)
        self.base = np.zeros((size, size, 3), np.float32)
        self.kind = np.zeros((size, size), np.uint8)
        self.amp = np.zeros((size, size), np.float32)
        self.shade = np.ones((size, size), np.float32)

    def box(self, y0: float, y1: float, x0: float, x1: float) -> tuple[slice, slice] | None:
        """Pixel slices of a normalised box (at least one pixel), or None if outside."""
        s = self.s
        r0 = min(max(int(math.floor(y0 * s)), 0), s)
        c0 = min(max(int(math.floor(x0 * s)), 0), s)
        r1 = min(max(int(math.ceil(y1 * s)), r0 + 1), s)
        c1 = min(max(int(math.ceil(x1 * s)), c0 + 1), s)
        if r0 >= s or c0 >= s or r1 <= 0 or c1 <= 0:
            return None
        return slice(r0, r1), slice(c0, c1)

    def coords(self, sl: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        """Normalised pixel-centre coordinates (column, row vectors) of a slice."""
        ys = (np.arange(sl[0].start, sl[0].stop, dtype=np.float32) + 0.5) / self.s
        xs = (np.arange(sl[1].start, sl[1].stop, dtype=np.float32) + 0.5) / self.s
        return ys[:, None], xs[None, :]

    def paint(
        self,
        sl: tuple[slice, slice],
        mask: np.ndarray | None,
        cls: int,
        colour: np.ndarray,
        kind: int = _FLAT,
        amp: float = 0.0,
    ) -> None:
        lab, base = self.label[sl], self.base[sl]
        kd, am = self.kind[sl], self.amp[sl]
        if mask is None:
            lab[...] = cls
            base[...] = colour
            kd[...] = kind
            am[...] = amp
        else:
            lab[mask] = cls
            base[mask] = colour if np.ndim(colour) == 1 else colour[mask]
            kd[mask] = kind
            am[mask] = amp

    def ellipse(self, cy: float, cx: float, ry: float, rx: float):
        ry, rx = max(ry, 0.5 / self.s), max(rx, 0.5 / self.s)
        sl = self.box(cy - ry, cy + ry, cx - rx, cx + rx)
        if sl is None:
            return None, None
        y, x = self.coords(sl)
        mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
        return sl, mask


def _upsampled_noise(rng: np.random.Generator, size: int, cell: float, smooth: bool) -> np.ndarray:
    """Noise with features of ``cell`` pixels: blocky (nearest) or blobby (bilinear)."""
    n = int(math.ceil(size / cell)) + 2
    grid = rng.standard_normal((n, n)).astype(np.float32)
    off = rng.random(2) * cell
    pos_y = (np.arange(size, dtype=np.float32) + off[0]) / cell
    pos_x = (np.arange(size, dtype=np.float32) + off[1]) / cell
    if not smooth:
        return grid[np.floor(pos_y).astype(int)[:, None], np.floor(pos_x).astype(int)[None, :]]
    iy, ix = np.floor(pos_y).astype(int), np.floor(pos_x).astype(int)
    fy, fx = (pos_y - iy)[:, None], (pos_x - ix)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep
    a = grid[iy[:, None], ix[None, :]]
    b = grid[iy[:, None], ix[None, :] + 1]
    c = grid[iy[:, None] + 1, ix[None, :]]
    d = grid[iy[:, None] + 1, ix[None, :] + 1]
    top, bottom = a + (b - a) * fx, c + (d - c) * fx
    out = top + (bottom - top) * fy
    return out / np.float32(out.std() + 1e-6)


def _jitter(rng: np.random.Generator, colour, amount: float) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _sky_colours(rows: np.ndarray, horizon: float, sky) -> np.ndarray:
    """Sky colour (len(rows), 3) at normalised rows: top colour -> horizon colour."""
    top, low = sky
    f = np.clip(rows / max(horizon, 1e-3), 0.0, 1.0)[:, None]
    return (top + (low - top) * f).astype(np.float32)


def render_scene(seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one scene.

    Args:
        seed: any integer; the scene is a pure function of (seed, size).
        size: side in pixels, ``32 <= size <= 256``.

    Returns:
        ``(label_rgb, label_ids, photo)``: uint8 (size, size, 3) palette colours, uint8
        (size, size) class ids (indices into :data:`SCENE_CLASSES`), uint8 (size, size, 3).
    """
    _check_size(size)
    rng = np.random.default_rng(derive_seed(seed, size))
    s = size
    cv = _Canvas(s)
    rows = (np.arange(s, dtype=np.float32) + 0.5) / s
    cols = (np.arange(s, dtype=np.float32) + 0.5) / s

    # --- scene parameters -------------------------------------------------------------
    horizon = float(rng.uniform(0.36, 0.5))
    vanish = float(rng.uniform(0.38, 0.62))
    drift = float(rng.uniform(-0.25, 0.25))
    road_w = float(rng.uniform(0.3, 0.55))  # half width at the bottom row
    walk_w = float(rng.uniform(0.12, 0.24))
    sky_top, sky_low = _SKIES[int(rng.integers(len(_SKIES)))]
    sky = (_jitter(rng, sky_top, 12), _jitter(rng, sky_low, 12))
    grey = float(rng.uniform(92, 132))  # shared by road and sidewalk
    green = _jitter(rng, (84, 112, 48), 14)  # shared by vegetation and terrain
    sun = float(rng.uniform(-0.45, 0.45))  # horizontal lighting gradient
    exposure = float(rng.uniform(0.8, 1.12))

    def depth(y: float) -> float:  # 0 at the horizon, 1 at the bottom row
        return (y - horizon) / (1.0 - horizon)

    def centre(t: float) -> float:
        return vanish + drift * t

    # --- sky and ground -----------------------------------------------------------------
    sky_rgb = _sky_colours(rows, horizon, sky)
    cv.base[:] = sky_rgb[:, None, :]
    ground = rows > horizon
    t_row = np.clip((rows - horizon) / (1.0 - horizon), 0.0, 1.0)[:, None]
    dist = np.abs(cols[None, :] - (vanish + drift * t_row))
    is_road = ground[:, None] & (dist < road_w * t_row)
    is_walk = ground[:, None] & ~is_road & (dist < (road_w + walk_w) * t_row)
    is_terrain = ground[:, None] & ~is_road & ~is_walk
    full = (slice(0, s), slice(0, s))
    cv.paint(full, is_terrain, TERRAIN, green, _FINE, 22.0)
    cv.paint(full, is_road, ROAD, np.full(3, grey, np.float32), _FINE, 13.0)
    cv.paint(full, is_walk, SIDEWALK, np.full(3, grey, np.float32), _BLOCK, 13.0)

    # --- skyline ------------------------------------------------------------------------
    x = float(-rng.uniform(0.0, 0.15))
    while x < 1.0:
        w = float(rng.uniform(0.1, 0.3))
        if rng.random() < 0.15:  # a gap in the skyline
            x += w * 0.5
            continue
        top = horizon - float(rng.uniform(0.12, 0.95)) * horizon
        sl = cv.box(top, horizon, x, x + w)
        if sl is not None:
            if rng.random() < 0.28:  # glass tower reflecting the sky
                tint = rng.uniform(0.93, 0.97)
                colour = _sky_colours(rows[sl[0]], horizon, sky)[:, None, :] * np.float32(tint)
                cv.paint(sl, None, BUILDING, np.broadcast_to(colour, cv.base[sl].shape).copy())
            else:
                facade = _jitter(rng, _FACADES[int(rng.integers(len(_FACADES)))], 12)
                cv.paint(sl, None, BUILDING, facade, _FINE, 5.0)
                y, xx = cv.coords(sl)
                cell_w, cell_h = float(rng.uniform(0.035, 0.06)), float(rng.uniform(0.04, 0.07))
                lx, ly = (xx - x) / cell_w, (y - top) / cell_h
                win = ((lx % 1.0) > 0.35) & ((ly % 1.0) > 0.4) & (ly > 0.6)
                cells = rng.uniform(0.25, 0.55, 64).astype(np.float32)
                lit = cells[(np.floor(lx).astype(int) * 7 + np.floor(ly).astype(int) * 3) % 64]
                win_rgb = facade * lit[..., None]
                cv.base[sl][win] = win_rgb[win]
        x += w

    # --- objects, far to near -----------------------------------------------------------
    objects: list[tuple[float, Callable[[], None]]] = []

    def ground_x(t: float, where: str) -> float:
        """A random x at depth t on the road, a sidewalk, or the terrain."""
        side = -1.0 if rng.random() < 0.5 else 1.0
        if where == "road":
            off = float(rng.uniform(0.1, 0.75)) * road_w * t
            return centre(t) + side * off
        if where == "walk":
            off = (road_w + float(rng.uniform(0.2, 0.8)) * walk_w) * t
            return centre(t) + side * off
        off = (road_w + walk_w) * t + float(rng.uniform(0.02, 0.3))
        return centre(t) + side * off

    def add_shadow(t: float, cx: float, yb: float, half_w: float) -> None:
        sl, mask = cv.ellipse(yb, cx + sun * 0.2 * half_w, 0.18 * half_w + 0.5 / s, 1.3 * half_w)
        if sl is not None:
            cv.shade[sl][mask] *= 0.62

    def street_object(cls: int, t: float, cx: float, yb: float) -> Callable[[], None]:
        # the same look for cars (on the road) and street furniture (on sidewalks)
        w = t * float(rng.uniform(0.11, 0.19))
        h = w * float(rng.uniform(0.5, 0.75))
        paint = _jitter(rng, _PAINTS[int(rng.integers(len(_PAINTS)))], 10)
        glass = _jitter(rng, (44, 52, 62), 8)
        tyres = _jitter(rng, (24, 24, 26), 4)

        def draw() -> None:
            add_shadow(t, cx, yb, w / 2)
            sl = cv.box(yb - h, yb, cx - w / 2, cx + w / 2)
            if sl is None:
                return
            y, _ = cv.coords(sl)
            f = ((y - (yb - h)) / h)[..., None]  # 0 at the top, 1 at the bottom
            colour = np.where(f < 0.38, glass, np.where(f > 0.85, tyres, paint))
            colour = np.broadcast_to(colour, cv.base[sl].shape).astype(np.float32)
            cv.paint(sl, None, cls, colour, _FINE, 4.0)

        return draw

    n_cars = int(rng.integers(0, 5))
    n_furniture = int(rng.integers(0, 4))
    for cls, count, where in ((CAR, n_cars, "road"), (POLE, n_furniture, "walk")):
        for _ in range(count):
            t = float(rng.uniform(0.15, 0.95))
            yb = horizon + t * (1.0 - horizon)
            objects.append((t, street_object(cls, t, ground_x(t, where), yb)))

    for _ in range(int(rng.integers(0, 4))):  # lamp posts
        t = float(rng.uniform(0.1, 0.95))
        yb = horizon + t * (1.0 - horizon)
        cx = ground_x(t, "walk")
        hgt = t * float(rng.uniform(0.45, 0.7))
        metal = _jitter(rng, (70, 72, 76), 8)

        def lamp(t=t, yb=yb, cx=cx, hgt=hgt, metal=metal) -> None:
            wp = max(t * 0.012, 0.5 / s)
            add_shadow(t, cx, yb, wp * 2)
            sl = cv.box(yb - hgt, yb, cx - wp, cx + wp)
            if sl is not None:
                cv.paint(sl, None, POLE, metal)
            sl = cv.box(yb - hgt, yb - hgt + max(t * 0.02, 1.0 / s), cx - wp * 4, cx + wp)
            if sl is not None:
                cv.paint(sl, None, POLE, metal)

        objects.append((t, lamp))

    for _ in range(int(rng.integers(0, 5))):  # people
        t = float(rng.uniform(0.15, 0.95))
        yb = horizon + t * (1.0 - horizon)
        cx = ground_x(t, "walk" if rng.random() < 0.85 else "road")
        hgt = t * float(rng.uniform(0.16, 0.24))
        cloth = _jitter(rng, _CLOTHES[int(rng.integers(len(_CLOTHES)))], 15)
        skin = _jitter(rng, (214, 170, 140), 25)

        def person(t=t, yb=yb, cx=cx, hgt=hgt, cloth=cloth, skin=skin) -> None:
            add_shadow(t, cx, yb, hgt * 0.18)
            sl, mask = cv.ellipse(yb - hgt * 0.42, cx, hgt * 0.42, hgt * 0.13)
            if sl is not None:
                cv.paint(sl, mask, PERSON, cloth, _FINE, 6.0)
            sl, mask = cv.ellipse(yb - hgt * 0.9, cx, hgt * 0.1, hgt * 0.08)
            if sl is not None:
                cv.paint(sl, mask, PERSON, skin)

        objects.append((t, person))

    for _ in range(int(rng.integers(0, 5))):  # trees
        t = float(rng.uniform(0.1, 0.9))
        yb = horizon + t * (1.0 - horizon)
        cx = ground_x(t, "walk" if rng.random() < 0.5 else "terrain")
        hgt = t * float(rng.uniform(0.35, 0.6))
        r = t * float(rng.uniform(0.07, 0.12))
        blobs = [
            (float(rng.uniform(-1, 1)) * r * 0.8, float(rng.uniform(-1, 0.6)) * r * 0.8)
            for _ in range(int(rng.integers(3, 6)))
        ]
        bark = green  # mossy trunks: the shared green, told apart by shape only

        def tree(t=t, yb=yb, cx=cx, hgt=hgt, r=r, blobs=blobs, bark=bark) -> None:
            wt = max(t * 0.012, 0.5 / s)
            add_shadow(t, cx, yb, r)
            sl = cv.box(yb - hgt, yb, cx - wt, cx + wt)
            if sl is not None:
                cv.paint(sl, None, VEGETATION, bark)
            for dx, dy in blobs:
                sl, mask = cv.ellipse(yb - hgt + dy, cx + dx, r, r)
                if sl is not None:
                    cv.paint(sl, mask, VEGETATION, green, _BLOB, 26.0)

        objects.append((t, tree))

    for _ in range(int(rng.integers(0, 3))):  # hedges on the verges
        t = float(rng.uniform(0.1, 0.9))
        yb = horizon + t * (1.0 - horizon)
        cx = ground_x(t, "terrain")
        w, hgt = t * float(rng.uniform(0.15, 0.4)), t * float(rng.uniform(0.05, 0.1))

        def hedge(yb=yb, cx=cx, w=w, hgt=hgt) -> None:
            sl = cv.box(yb - hgt, yb, cx - w / 2, cx + w / 2)
            if sl is not None:
                cv.paint(sl, None, VEGETATION, green, _BLOB, 26.0)

        objects.append((t, hedge))

    for _, draw in sorted(objects, key=lambda item: item[0]):
        draw()

    # --- photo --------------------------------------------------------------------------
    fine = rng.standard_normal((s, s)).astype(np.float32)
    block = _upsampled_noise(rng, s, max(3.0, 0.09 * s), smooth=False)
    blob = _upsampled_noise(rng, s, max(2.5, 0.07 * s), smooth=True)
    fields = np.stack([np.zeros_like(fine), fine, block, blob])
    texture = fields[cv.kind, np.arange(s)[:, None], np.arange(s)[None, :]] * cv.amp
    photo = cv.base + texture[..., None]
    on_ground = np.isin(cv.label, (ROAD, SIDEWALK, TERRAIN))
    shade = np.where(on_ground, cv.shade, np.float32(1.0))
    light = 1.0 + sun * (cols[None, :] - 0.5) * np.where(cv.label == SKY, 0.3, 1.0)
    photo = photo * (shade * light * exposure)[..., None]
    photo += rng.normal(0.0, 2.5, photo.shape).astype(np.float32)
    photo = np.clip(np.rint(photo), 0, 255).astype(np.uint8)
    ids = cv.label
    return ids_to_rgb(ids), ids, photo


def _neighbour_diff(photo: np.ndarray, mask: np.ndarray) -> float:
    """Mean |horizontal neighbour difference| of the grey photo inside ``mask``."""
    g = photo.astype(np.float32).mean(-1)
    both = mask[:, 1:] & mask[:, :-1]
    return float(np.abs(np.diff(g, axis=1))[both].mean()) if both.any() else float("nan")


def scene_statistics(n: int = 40, size: int = 96, seed: int = 0) -> dict[str, object]:
    """Figures behind the design claims, over scenes ``render_scene(derive_seed(seed, i))``.

    Returns class pixel shares, and per pair of look-alike classes (road/sidewalk,
    terrain/vegetation), over the scenes holding at least 200 pixels of both: the largest
    per-channel gap between their mean photo colours averaged over scenes (``colour_bias``,
    the by-design difference), the median over scenes of that gap per scene
    (``colour_gap``, larger for coarse textures over small regions), and the median ratio of
    their fine-texture energies, first class over second (``fine_ratio``).
    """
    counts = np.zeros(len(SCENE_CLASSES), np.int64)
    pairs = {("road", "sidewalk"): ([], []), ("terrain", "vegetation"): ([], [])}
    index = {name: i for i, name in enumerate(SCENE_CLASSES)}
    for i in range(n):
        _, ids, photo = render_scene(derive_seed(seed, i), size)
        counts += np.bincount(ids.ravel(), minlength=len(SCENE_CLASSES))
        for (a, b), (gaps, ratios) in pairs.items():
            ma, mb = ids == index[a], ids == index[b]
            if ma.sum() >= 200 and mb.sum() >= 200:
                gaps.append(photo[ma].mean(0) - photo[mb].mean(0))
                ratios.append(_neighbour_diff(photo, ma) / _neighbour_diff(photo, mb))
    shares = counts / counts.sum()
    return {
        "scenes": n,
        "size": size,
        "class_share": {c: round(float(f), 4) for c, f in zip(SCENE_CLASSES, shares)},
        **{
            f"{a}/{b}": {
                "scenes": len(gaps),
                "colour_bias": round(float(np.abs(np.mean(gaps, axis=0)).max()), 2),
                "colour_gap": round(float(np.median(np.abs(gaps).max(axis=1))), 2),
                "fine_ratio": round(float(np.median(ratios)), 2),
            }
            for (a, b), (gaps, ratios) in pairs.items()
        },
    }


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(
            f"scene size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}"
        )


_SUBDIRS = (
    "trainA",
    "trainB",
    "testA",
    "testB",
    "train",
    "test",
    "train_ids",
    "test_ids",
    "valA",
    "valB",
    "val",
    "val_ids",
)
#: derive_seed stream of each split's scenes (2 seeds the shuffled training names)
_STREAMS = {"train": 0, "test": 1, "val": 3}


def _prepare(out: Path) -> None:
    """Create ``out``; clear a previous scenes output, refuse to mix with other files."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create output folder {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise DataError(f"output folder is not writable: {out}")
    ours = (out / "scenes.json").is_file()
    for name in _SUBDIRS:
        d = out / name
        if not d.is_dir():
            continue
        files = list(d.iterdir())
        if files and not ours:
            raise DataError(
                f"{d} already holds files and {out} is not a scenes dataset; "
                "choose an empty output folder"
            )
        for f in files:
            if f.suffix == ".png" and f.is_file():
                f.unlink()
    (out / "scenes.json").unlink(missing_ok=True)


def _save(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, compress_level=1)


def write_scenes(
    out: str | os.PathLike,
    n: int = 1000,
    size: int = 64,
    seed: int = 0,
    test_fraction: float = 0.1,
    progress: bool = False,
    val_fraction: float = 0.1,
) -> dict:
    """Generate ``n`` train + test scenes and a held-out validation split into ``out`` in
    both layouts; returns the ``scenes.json`` dict.

    Written files (``k`` = zero-padded number, ``.png``):

    - ``trainA/k`` label maps and ``trainB/k`` photos of the training scenes, with the names
      shuffled independently so equal names are *not* pairs (unpaired, CycleGAN layout);
    - ``testA/k``, ``testB/k``: test label maps and photos, equal names *are* pairs;
    - ``valA/k``, ``valB/k``: validation label maps and photos (pairs, like the test split);
    - ``train/k``, ``val/k``, ``test/k``: aligned ``label | photo`` images (A = label on the
      left);
    - ``train_ids/k``, ``val_ids/k``, ``test_ids/k``: class-id maps (8-bit grayscale, values
      index :data:`SCENE_CLASSES`) named like ``train/``, ``val*/`` and ``test*/``;
    - ``scenes.json``: classes, palette, sizes, counts, seed, layout description.

    Of the ``n`` scenes, ``round(n * test_fraction)`` (at least 1) are test scenes and the
    rest training scenes. The validation split comes on top of them: ``round(n *
    val_fraction)`` more scenes (at least 1 when ``val_fraction > 0``; none, and no ``val*``
    folders, at 0), for evaluation during training (:mod:`spap.train.evaluation` prefers a
    ``val`` phase), so that neither the training nor the test scenes are used to pick a
    checkpoint.

    Training scene ``i`` is :func:`render_scene` ``(derive_seed(seed, 0, i))``, test scene
    ``j`` uses ``derive_seed(seed, 1, j)`` and validation scene ``j`` ``derive_seed(seed, 3,
    j)``: three disjoint seed streams, so the train and test files do not depend on
    ``val_fraction`` and a smaller ``n`` gives a prefix of a larger one.
    """
    _check_size(size)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"n (number of scenes) must be an integer >= 2, got {n!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    out = Path(out)
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    n_train = n - n_test
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    width = max(5, len(str(n)))
    _prepare(out)
    for name in _SUBDIRS:
        if n_val or not name.startswith("val"):
            (out / name).mkdir(exist_ok=True)
        else:  # no validation split: no (empty) val folders for a reader to take for one
            with contextlib.suppress(OSError):
                (out / name).rmdir()

    perm_rng = np.random.default_rng(derive_seed(seed, 2))
    names_a = perm_rng.permutation(n_train)
    names_b = perm_rng.permutation(n_train)
    jobs = [("train", i) for i in range(n_train)] + [("test", j) for j in range(n_test)]
    jobs += [("val", j) for j in range(n_val)]
    bar = None
    if progress:
        bar = tqdm(total=len(jobs), desc="scenes", unit="img")
    try:
        for split, i in jobs:
            label, ids, photo = render_scene(derive_seed(seed, _STREAMS[split], i), size)
            k = f"{i:0{width}d}.png"
            if split == "train":
                _save(label, out / "trainA" / f"{names_a[i]:0{width}d}.png")
                _save(photo, out / "trainB" / f"{names_b[i]:0{width}d}.png")
            else:
                _save(label, out / f"{split}A" / k)
                _save(photo, out / f"{split}B" / k)
            _save(np.concatenate([label, photo], axis=1), out / split / k)
            _save(ids, out / f"{split}_ids" / k)
            if bar is not None:
                bar.update()
    except OSError as exc:
        raise DataError(f"cannot write scenes to {out}: {exc}") from None
    finally:
        if bar is not None:
            bar.close()
    meta = {
        "name": "spap-scenes",
        "format_version": _FORMAT_VERSION,
        "seed": seed,
        "size": size,
        "n_train": n_train,
        "n_test": n_test,
        "n_val": n_val,
        "classes": list(SCENE_CLASSES),
        "palette": SCENE_PALETTE.tolist(),
        "layouts": {
            "unaligned": "trainA/ trainB/ valA/ valB/ testA/ testB/ (A = label map, "
            "B = photo; train names shuffled, val and test names paired)",
            "aligned": "train/ val/ test/ (label | photo side by side)",
            "ids": "train_ids/ (names of train/), val_ids/ (names of val*/), test_ids/ "
            "(names of test*/): class ids",
        },
    }
    text = (json.dumps(meta, indent=2) + "\n").encode()
    atomic_write(out / "scenes.json", lambda fh: fh.write(text))
    return meta
