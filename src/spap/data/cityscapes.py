"""Cityscapes from its official folders to the layouts spap trains and scores on.

Cityscapes needs a registration, so it is never downloaded: a user unzips
``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` into one folder and
:func:`prepare_cityscapes` turns

```
FROM/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png    photos
FROM/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_color.png        label colours
FROM/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png     label ids
```

into what the reference's ``datasets/prepare_cityscapes_dataset.py`` writes (``val``
becomes ``test``; photo on the left, labels on the right, as pix2pix's cityscapes), plus the
train-id maps the FCN-score scores against:

```
OUT/train/<id>.png      photo | label colours, each size x size (aligned layout)
OUT/trainA/<id>.png     photos (unaligned layout, domain A)
OUT/trainB/<id>.png     label colours (domain B)
OUT/train_ids/<id>.png  train ids 0..18, 255 = void (8-bit gray), for `spap seg train`
OUT/test/ testA/ testB/ test_ids/    the same for the val split (`spap eval fcn`)
OUT/cityscapes.json     size, counts, options
```

Photos are resized with Pillow's bicubic filter (the reference script's ``resize``);
label colours by default with nearest neighbour, so every pixel keeps an exact class
colour ([ours]: the reference script's bicubic, which blends colours at class borders, is
``label_filter="bicubic"``); id maps always with nearest neighbour. Files are PNG (the
reference writes JPEG at quality 100) and named after the Cityscapes image (the reference
numbers them).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spap.data.labels import cityscapes_label_to_train_ids
from spap.errors import DataError
from spap.files import atomic_write

__all__ = ["SPLITS", "find_pairs", "prepare_cityscapes"]

log = logging.getLogger(__name__)

#: Official split -> the split name written (the reference's: val is the test set).
SPLITS: dict[str, str] = {"train": "train", "val": "test"}

_FILTERS = {"nearest": Image.NEAREST, "bicubic": Image.BICUBIC}
_META = "cityscapes.json"


def _locate(root: Path, name: str, archive: str) -> Path:
    for cand in (root / name, root / f"{name}_trainvaltest" / name, root / archive / name):
        if cand.is_dir():
            return cand
    raise DataError(
        f"no {name}/ folder in {root} (expected {root}/{name}/{{train,val}}/<city>/..., "
        f"unzipped from {name}_trainvaltest.zip)"
    )


def find_pairs(root: str | os.PathLike, split: str) -> list[tuple[str, Path, Path, Path]]:
    """``(id, photo, colour labels, label ids)`` of one official split, sorted by id.
    Raises :class:`~spap.errors.DataError` naming the first file without its partner."""
    root = Path(root)
    left = _locate(root, "leftImg8bit", "leftImg8bit_trainvaltest") / split
    gt = _locate(root, "gtFine", "gtFine_trainvaltest") / split
    if not left.is_dir():
        raise DataError(f"no {split}/ split in {left.parent}")
    photos = sorted(left.glob("*/*_leftImg8bit.png"))
    if not photos:
        raise DataError(f"no *_leftImg8bit.png images in {left}/<city>/")
    pairs = []
    for photo in photos:
        ident = photo.name[: -len("_leftImg8bit.png")]
        city = photo.parent.name
        color = gt / city / f"{ident}_gtFine_color.png"
        ids = gt / city / f"{ident}_gtFine_labelIds.png"
        for need in (color, ids):
            if not need.is_file():
                raise DataError(f"{photo} has no ground truth: {need} is missing")
        pairs.append((ident, photo, color, ids))
    n_labels = len(list(gt.glob("*/*_gtFine_color.png")))
    if n_labels != len(pairs):
        raise DataError(
            f"{gt} holds {n_labels} label images for {len(pairs)} photos in {left}: "
            "use the leftImg8bit and gtFine folders of the same release"
        )
    return pairs


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, img: Image.Image) -> None:
    data = _png(img)
    atomic_write(path, lambda fh: fh.write(data), fsync=False)


def _open(path: Path, mode: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode) if im.mode != mode else im.copy()
    except Exception as exc:
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None


def _one(job: tuple[str, str, str, str, str, str, int, str]) -> str:
    ident, photo_p, color_p, ids_p, out_s, phase, size, label_filter = job
    out = Path(out_s)
    wh = (size, size)
    photo = _open(Path(photo_p), "RGB").resize(wh, Image.BICUBIC)
    color = _open(Path(color_p), "RGB").resize(wh, _FILTERS[label_filter])
    with Image.open(ids_p) as im:
        label_ids = np.asarray(im.resize(wh, Image.NEAREST))
    if label_ids.ndim != 2:
        raise DataError(f"{ids_p}: expected a one-channel label-id image")
    train_ids = cityscapes_label_to_train_ids(label_ids).astype(np.uint8)
    side = Image.new("RGB", (2 * size, size))
    side.paste(photo, (0, 0))
    side.paste(color, (size, 0))
    name = f"{ident}.png"
    _write(out / phase / name, side)
    _write(out / f"{phase}A" / name, photo)
    _write(out / f"{phase}B" / name, color)
    _write(out / f"{phase}_ids" / name, Image.fromarray(train_ids))
    return ident


def _check_out(out: Path) -> None:
    if not out.exists() or (out / _META).is_file():
        return
    names = [f"{p}{s}" for p in SPLITS.values() for s in ("", "A", "B", "_ids")]
    used = [n for n in names if (out / n).is_dir() and any((out / n).iterdir())]
    if used:
        raise DataError(
            f"{out} already holds {used[0]}/ and was not written by `spap data prepare "
            "cityscapes`: choose an empty --out"
        )


def prepare_cityscapes(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: int = 128,
    label_filter: str = "nearest",
    splits: tuple[str, ...] = ("train", "val"),
    max_images: int | None = None,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the aligned and unaligned layouts and the train-id maps (see the module doc).

    Args:
        source: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        out: the output folder (created; a previous output of this function is replaced).
        size: side of every written image (128: the CycleGAN paper's Cityscapes protocol;
            256: the reference script's and pix2pix's).
        label_filter: ``"nearest"`` (default) or ``"bicubic"`` for the label colours.
        splits: official splits to convert (``val`` is written as ``test``).
        max_images: convert only the first N images of each split.
        workers: processes converting in parallel (0: in this process).
        progress: ``progress(done, total)`` after each image.

    Returns the record written to ``OUT/cityscapes.json``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 2048:
        raise DataError(f"size must be an integer from 8 to 2048, got {size!r}")
    if label_filter not in _FILTERS:
        raise DataError(f"label_filter must be nearest or bicubic, got {label_filter!r}")
    for split in splits:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    src, out = Path(source), Path(out)
    if not src.is_dir():
        raise DataError(f"Cityscapes folder not found: {src}")
    pairs = {split: find_pairs(src, split)[:max_images] for split in splits}
    _check_out(out)
    for split in splits:
        phase = SPLITS[split]
        for suffix in ("", "A", "B", "_ids"):
            folder = out / f"{phase}{suffix}"
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
    jobs = [
        (ident, str(p), str(c), str(i), str(out), SPLITS[split], size, label_filter)
        for split in splits
        for ident, p, c, i in pairs[split]
    ]
    done = 0
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(_one, jobs, chunksize=8):
                done += 1
                if progress is not None:
                    progress(done, len(jobs))
    else:
        for job in jobs:
            _one(job)
            done += 1
            if progress is not None:
                progress(done, len(jobs))
    record = {
        "source": str(src),
        "size": size,
        "label_filter": label_filter,
        "counts": {SPLITS[s]: len(pairs[s]) for s in splits},
        "layout": {
            "aligned": "<split>/<id>.png: photo (left) | label colours (right)",
            "unaligned": "<split>A/: photos, <split>B/: label colours",
            "ids": "<split>_ids/<id>.png: Cityscapes train ids 0..18, 255 = void",
        },
        "fcn": "spap eval fcn --data OUT --labels-domain B --size SIZE (test split)",
    }
    atomic_write(out / _META, lambda fh: fh.write((json.dumps(record, indent=1) + "\n").encode()))
    return record
