"""Atomic file writes: a file is either written completely or not at all.

:func:`atomic_write` writes into a temporary file in the target's folder and renames it over
the target (``os.replace``) only once everything was written, so a full disk, a file-size
limit or a killed process never leaves a truncated file under the target's name (the
previous file, if any, stays as it was). Torch-free: every layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "fsync_dir", "umask"]


def umask() -> int:
    """The process's umask (read without changing it for longer than the call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename) to disk where the platform allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], object], *, fsync: bool = True
) -> Path:
    """Write ``path`` atomically: ``write(fileobj)`` fills a temporary file in the same
    folder (``.<name>.<random>.tmp``), which is then renamed over ``path``.

    On any failure (``OSError`` such as ENOSPC or EFBIG, an exception from ``write``, an
    interrupt) the temporary file is removed, ``path`` is left as it was, and the exception
    propagates unchanged. ``fsync=True`` also flushes the file and the folder to disk
    before and after the rename (durable across a power loss; costs a few milliseconds per
    file on a disk). The file gets the mode ``open()`` would give it (0666 less the umask).
    Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path
