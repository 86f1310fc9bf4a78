"""The paper's public datasets: download (resumable), verify, unpack safely.

The archives are the ones the reference CycleGAN / pix2pix repository's scripts fetch
(``datasets/download_cyclegan_dataset.sh``, ``datasets/download_pix2pix_dataset.sh``):

- CycleGAN sets (unaligned ``trainA/ trainB/ testA/ testB/``):
  ``https://people.eecs.berkeley.edu/~taesung_park/CycleGAN/datasets/<name>.zip``;
- pix2pix sets (aligned ``A|B`` images in ``train/ val/ test/``):
  ``http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/<name>.tar.gz``.

Cityscapes cannot be redistributed: it needs a registration at cityscapes-dataset.com, and
:mod:`spap.data.cityscapes` turns the official folders into both layouts.

:func:`get_dataset` downloads into ``<out>/<archive>.part`` with HTTP ``Range`` requests
(a cut connection is retried, and a later call resumes the ``.part`` file; ``If-Range``
makes the server send the whole file again if it changed meanwhile), renames it when
complete, verifies it as a whole archive (every zip member's CRC, the whole gzip stream of
a tarball, the size the server announced) and unpacks it into ``<out>/<name>/`` through a
staging folder, refusing the whole archive if any member would land outside it (absolute
names, ``..``, links pointing outside, device files). Nothing is downloaded except where
the caller asks.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from spap.errors import DataError
from spap.files import atomic_write

__all__ = [
    "CYCLEGAN_SETS",
    "DATASETS",
    "PIX2PIX_SETS",
    "ArchiveInfo",
    "Source",
    "download",
    "get_dataset",
    "resolve",
    "unpack",
    "verify_archive",
]

log = logging.getLogger(__name__)

CYCLEGAN_URL = "https://people.eecs.berkeley.edu/~taesung_park/CycleGAN/datasets/{name}.zip"
PIX2PIX_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/{name}.tar.gz"

#: The CycleGAN script's datasets (unaligned layout). Its list also names cityscapes, whose
#: licence forbids redistribution.
CYCLEGAN_SETS: tuple[str, ...] = (
    "apple2orange",
    "summer2winter_yosemite",
    "horse2zebra",
    "monet2photo",
    "cezanne2photo",
    "ukiyoe2photo",
    "vangogh2photo",
    "maps",
    "facades",
    "iphone2dslr_flower",
    "ae_photos",
)
#: The pix2pix script's datasets (aligned layout).
PIX2PIX_SETS: tuple[str, ...] = ("facades", "maps", "night2day", "edges2handbags", "edges2shoes")

#: Every name ``spap data get`` knows, cityscapes included (it explains the registration).
DATASETS: tuple[str, ...] = tuple(
    sorted({*CYCLEGAN_SETS, *PIX2PIX_SETS, "cityscapes"}, key=lambda n: (n != "facades", n))
)

CITYSCAPES_HELP = (
    "Cityscapes needs a registration (its licence forbids redistribution, so neither the "
    "reference scripts nor spap can download it): log in at "
    "https://www.cityscapes-dataset.com/downloads/, download gtFine_trainvaltest.zip and "
    "leftImg8bit_trainvaltest.zip, unzip both into one folder, then run "
    "`spap data prepare cityscapes --from FOLDER --out DIR`"
)

_MARKER = ".spap-dataset.json"


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from: its name, archive URL and layout."""

    name: str
    source: str  # "pix2pix" | "cyclegan" | "url"
    url: str
    layout: str  # "aligned" | "unaligned" | "unknown"

    @property
    def archive_name(self) -> str:
        tail = self.url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
        for ext in (".tar.gz", ".tgz", ".tar", ".zip"):
            if tail.lower().endswith(ext):
                return f"{self.name}{ext}"
        return f"{self.name}.archive"


def resolve(name: str, source: str | None = None, url: str | None = None) -> Source:
    """The archive of dataset ``name``: the pix2pix tarball (aligned, with paired ground
    truth) for ``facades`` and ``maps`` unless ``source="cyclegan"``, the CycleGAN zip for the
    other CycleGAN sets; ``url`` overrides the address (a mirror)."""
    if name == "cityscapes":
        raise DataError(CITYSCAPES_HELP)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if source not in (None, "pix2pix", "cyclegan"):
        raise DataError(f"source must be pix2pix or cyclegan, got {source!r}")
    if source is None:
        source = "pix2pix" if name in PIX2PIX_SETS else "cyclegan"
    sets = PIX2PIX_SETS if source == "pix2pix" else CYCLEGAN_SETS
    if name not in sets:
        other = "cyclegan" if source == "pix2pix" else "pix2pix"
        raise DataError(f"{name} is not a {source} dataset (it is one of the {other} sets)")
    layout = "aligned" if source == "pix2pix" else "unaligned"
    template = PIX2PIX_URL if source == "pix2pix" else CYCLEGAN_URL
    if url is not None:
        if not re.match(r"^https?://", url):
            raise DataError(f"--url must be an http:// or https:// address, got {url!r}")
        return Source(name, "url", url, layout)
    return Source(name, source, template.format(name=name), layout)


# ----------------------------------------------------------------------------- download


def _user_agent() -> str:
    try:
        return f"spap/{metadata.version('spap')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "spap"


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection closed early"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return " ".join(str(exc).split()) or type(exc).__name__


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000)."""
    m = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class _Cut(Exception):
    """The body ended before the announced size."""


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    retries: int = 5,
    timeout: float = 60.0,
    progress: Callable[[int, int | None], None] | None = None,
    chunk_size: int = 1 << 20,
    backoff: float = 2.0,
) -> Path:
    """Download ``url`` to ``dest``, resumably; returns ``dest``.

    Bytes go to ``dest + ".part"`` (its URL, ``ETag`` / ``Last-Modified`` and size in
    ``dest + ".part.json"``). An existing ``.part`` of the same URL is resumed with
    ``Range: bytes=N-`` (and ``If-Range``, so a changed file is sent whole); a server that
    ignores ranges sends everything again. A connection that fails or closes before the
    announced size is retried ``retries`` times (waiting ``backoff``, doubling); after that
    the ``.part`` file is kept and :class:`~spap.errors.DataError` says to run again. When
    the size is reached the ``.part`` file is renamed to ``dest``. ``progress(done, total)``
    is called as bytes arrive.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    meta_path = dest.with_name(dest.name + ".part.json")
    meta = _read_meta(meta_path)
    if part.exists() and meta.get("url") != url:
        part.unlink()  # bytes of another address: start afresh
        meta = {}
    attempt = 0
    wait = backoff
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
        validator = meta.get("etag") or meta.get("last_modified")
        if have:
            headers["Range"] = f"bytes={have}-"
            if validator:
                headers["If-Range"] = validator
        total: int | None = meta.get("total")
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                if resp.status == 206:
                    start, total = _content_range(resp.headers.get("Content-Range"))
                    if start != have:
                        raise DataError(f"{url}: the server resumed at byte {start}, not {have}")
                    mode = "ab"
                else:  # 200: the whole file (first request, or the range was not honoured)
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    have, mode = 0, "wb"
                old = meta if resp.status == 206 else {}
                meta = {
                    "url": url,
                    "etag": resp.headers.get("ETag") or old.get("etag"),
                    "last_modified": resp.headers.get("Last-Modified") or old.get("last_modified"),
                    "total": total,
                }
                meta_path.write_text(json.dumps(meta))
                with open(part, mode) as fh:
                    if progress is not None:
                        progress(have, total)
                    while True:
                        block = resp.read(chunk_size)
                        if not block:
                            break
                        fh.write(block)
                        have += len(block)
                        if progress is not None:
                            progress(have, total)
            if total is not None and have < total:
                raise _Cut(f"the connection closed after {have} of {total} bytes")
            if total is not None and have > total:
                part.unlink()
                raise DataError(f"{url}: received {have} bytes, more than the {total} announced")
            os.replace(part, dest)
            with contextlib.suppress(OSError):
                meta_path.unlink()
            return dest
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # the range starts at or past the end
                _, size = _content_range(exc.headers.get("Content-Range"))
                if size == have:
                    os.replace(part, dest)
                    with contextlib.suppress(OSError):
                        meta_path.unlink()
                    return dest
                part.unlink()  # longer than the file: start afresh
                continue
            raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
        except DataError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES):
                raise DataError(
                    f"cannot write {part}: {_why(exc)}; the {have} bytes downloaded are kept: "
                    "make room (or fix the permission) and run the same command again to resume"
                ) from None
            error: BaseException = exc
        except (_Cut, http.client.HTTPException, TimeoutError) as exc:
            error = exc
        if attempt >= retries:
            kept = f"{part} ({have} bytes) is kept" if have else "nothing was kept"
            raise DataError(
                f"download of {url} interrupted: {_why(error)}; {kept}: run the same command "
                "again to resume"
            )
        attempt += 1
        log.warning(
            "download of %s interrupted (%s) after %d bytes; resuming (try %d of %d)",
            url,
            _why(error),
            have,
            attempt,
            retries,
        )
        time.sleep(wait)
        wait *= 2


# ----------------------------------------------------------------------------- archives


@dataclass
class ArchiveInfo:
    """A verified archive: its kind, members' total size, file count and sha256."""

    path: Path
    kind: str  # "zip" | "tar"
    files: int
    size: int
    sha256: str
    top: str | None  # the one top-level folder all members share, if any


def _bad_name(name: str) -> str | None:
    """Why a member name would land outside the target folder, or None."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "a '..' component"
    return None


def _refuse(archive: Path, member: str, why: str) -> DataError:
    return DataError(
        f"{archive}: refusing to unpack it: member {member!r} is {why} (it would be written "
        "outside the target folder); nothing was unpacked"
    )


def _link_escapes(name: str, target: str) -> bool:
    """Whether a link at member ``name`` pointing to ``target`` resolves outside the root."""
    if target.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", target):
        return True
    parts: list[str] = list(PurePosixPath(name).parent.parts)
    for p in PurePosixPath(target.replace("\\", "/")).parts:
        if p == "..":
            if not parts:
                return True
            parts.pop()
        elif p != ".":
            parts.append(p)
    return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _junk(name: str) -> bool:
    """macOS resource-fork folders some zips carry (``__MACOSX/``): never unpacked."""
    return name.replace("\\", "/").split("/", 1)[0] == "__MACOSX"


def _top(names: list[str]) -> str | None:
    names = [n for n in names if not _junk(n)]
    tops = {PurePosixPath(n.replace("\\", "/")).parts[0] for n in names if n.strip("/")}
    if len(tops) != 1:
        return None
    (top,) = tops
    # a lone file at the top is not a folder
    return top if any("/" in n.replace("\\", "/").strip("/") for n in names) else None


def verify_archive(path: str | os.PathLike, expected_size: int | None = None) -> ArchiveInfo:
    """Check that ``path`` is a complete zip or tar(.gz) archive that unpacks safely.

    Zip: every member is read and its CRC checked. Tar: the whole stream is read (a gzip
    stream ends with its CRC and length). Every member name is checked: absolute paths,
    ``..`` components, links pointing outside the archive's folder, and device files or
    FIFOs refuse the whole archive. Raises :class:`~spap.errors.DataError` in one line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"archive not found: {path}")
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DataError(f"{path}: {size} bytes, the server announced {expected_size}")
    names: list[str] = []
    total = 0
    files = 0
    try:
        if zipfile.is_zipfile(path):
            kind = "zip"
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    why = _bad_name(info.filename)
                    if why:
                        raise _refuse(path, info.filename, why)
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        raise _refuse(path, info.filename, "a symbolic link")
                    names.append(info.filename)
                    if not info.is_dir():
                        files += 1
                        total += info.file_size
                bad = zf.testzip()
                if bad is not None:
                    raise DataError(f"{path}: member {bad!r} is corrupt (CRC mismatch)")
        elif tarfile.is_tarfile(path):
            kind = "tar"
            with tarfile.open(path, "r:*") as tf:
                for m in tf:
                    why = _bad_name(m.name)
                    if why:
                        raise _refuse(path, m.name, why)
                    if m.issym() or m.islnk():
                        if _link_escapes(m.name if m.issym() else "", m.linkname):
                            raise _refuse(
                                path, m.name, f"a link to {m.linkname!r}, outside the archive"
                            )
                    elif m.isfile():
                        fh = tf.extractfile(m)
                        if fh is not None:
                            while fh.read(1 << 20):
                                pass
                        files += 1
                        total += m.size
                    elif not m.isdir():
                        raise _refuse(path, m.name, "a device file or FIFO")
                    names.append(m.name)
        else:
            raise DataError(
                f"{path} is not a complete zip or tar archive (truncated, or not an archive)"
            )
    except DataError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{path} is truncated or corrupt: {_why(exc)}") from None
    if not files:
        raise DataError(f"{path}: the archive holds no files")
    return ArchiveInfo(path, kind, files, total, _sha256(path), _top(names))


def unpack(info: ArchiveInfo, target: str | os.PathLike) -> Path:
    """Unpack a verified archive into ``target`` (which must not exist): into a staging
    folder next to it first, then renamed, so an interrupted or failed unpack (a full disk)
    leaves no partial ``target``. An archive whose members share one top-level folder
    (``facades/...``) has it stripped: ``target`` holds its contents."""
    target = Path(target)
    if target.exists():
        raise DataError(f"{target} already exists")
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if info.size > free:
        raise DataError(
            f"unpacking {info.path.name} needs {info.size / 1e6:.0f} MB, {parent} has "
            f"{free / 1e6:.0f} MB free"
        )
    staging = parent / f".{target.name}.unpacking"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        if info.kind == "zip":
            with zipfile.ZipFile(info.path) as zf:
                for m in zf.infolist():
                    if _junk(m.filename):
                        continue
                    out = staging / m.filename.replace("\\", "/")
                    if m.is_dir():
                        out.mkdir(parents=True, exist_ok=True)
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(m) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        else:
            with tarfile.open(info.path, "r:*") as tf:
                kwargs: dict[str, Any] = {}
                if hasattr(tarfile, "data_filter"):
                    kwargs["filter"] = "data"  # a second guard, with the checks above
                tf.extractall(staging, **kwargs)
        root = staging / info.top if info.top and (staging / info.top).is_dir() else staging
        os.replace(root, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(
            f"unpacking {info.path} into {target} failed: {_why(exc)}; nothing was left behind"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return target


def _describe(folder: Path) -> str:
    subs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return " ".join(f"{s}/" for s in subs) or "(no sub-folders)"


def get_dataset(
    name: str,
    out: str | os.PathLike,
    *,
    source: str | None = None,
    url: str | None = None,
    archive: str | os.PathLike | None = None,
    keep_archive: bool = False,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 2.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> dict[str, Any]:
    """Download (or take ``archive``), verify and unpack dataset ``name`` into
    ``<out>/<name>/``; returns what ``<out>/<name>/.spap-dataset.json`` records.

    A folder already complete (it holds that record) is kept as it is. The downloaded
    archive is deleted after unpacking unless ``keep_archive``; a given ``archive`` is never
    deleted. An archive that fails verification after a download is deleted (run again to
    download it anew).
    """
    src = resolve(name, source, url)
    out = Path(out)
    target = out / name
    marker = target / _MARKER
    if marker.is_file():
        record = _read_meta(marker)
        record["already"] = True
        return record
    if target.exists() and any(target.iterdir()):
        raise DataError(
            f"{target} already exists and was not written by `spap data get`: remove it or "
            "choose another --out"
        )
    if target.exists():
        target.rmdir()
    downloaded = False
    if archive is not None:
        path = Path(archive)
    else:
        path = out / src.archive_name
        if not path.is_file():
            download(
                src.url,
                path,
                retries=retries,
                timeout=timeout,
                backoff=backoff,
                progress=progress,
            )
            downloaded = True
    try:
        info = verify_archive(path)
    except DataError as exc:
        if downloaded or archive is None:
            with contextlib.suppress(OSError):
                path.unlink()
            raise DataError(
                f"{exc}; the archive was deleted: run again to download it anew"
            ) from None
        raise
    unpack(info, target)
    record = {
        "name": name,
        "source": src.source,
        "url": src.url if archive is None else None,
        "archive": path.name,
        "archive_bytes": path.stat().st_size,
        "sha256": info.sha256,
        "files": info.files,
        "layout": src.layout,
        "folders": _describe(target),
    }
    atomic_write(marker, lambda fh: fh.write((json.dumps(record, indent=1) + "\n").encode()))
    if archive is None and not keep_archive:
        with contextlib.suppress(OSError):
            path.unlink()
    return record
