"""Atomic file writes: a file is either written completely or not at all.

:func:`atomic_write` is the one writer of every file the project writes for users
(checkpoints, configs, exports, images, caches, reports): it writes into a temporary file in
the target's folder and renames it over the target (``os.replace``) only once everything was
written, so a full disk, a file-size limit or a killed process never leaves a truncated file
under the target's name (the previous file, if any, stays as it was). A failed write raises
:class:`~spap.errors.WriteError` ``could not write <path>: <reason>``, also when the writer
(``torch.save``'s zip writer, Pillow) wrapped the ``OSError`` in another exception.
Torch-free: every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from spap.errors import WriteError

__all__ = ["atomic_write", "find_os_error", "fsync_dir", "umask", "write_error_reason"]


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


_WHY = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (the file-size limit, ulimit -f)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
    errno.ENAMETOOLONG: "file name too long",
}


def write_error_reason(exc: OSError) -> str:
    """A few lower-case words for a failed write (``no space left on device``)."""
    why = _WHY.get(exc.errno or -1) or exc.strerror or str(exc) or type(exc).__name__
    return " ".join(why.split())[:200]


def find_os_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind ``exc``: itself, or one it was raised from or while handling
    (PyTorch's zip writer turns a failed ``write`` into a ``RuntimeError``)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


class _RecordingFile:
    """A file object that remembers the first ``OSError`` of its ``write``: writers that
    wrap it (PyTorch's zip writer) may report only ``file write failed``."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            if self.error is None:
                self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], object], *, fsync: bool = True
) -> Path:
    """Write ``path`` atomically: ``write(fileobj)`` fills a temporary file in the same
    folder (``.<name>.<random>.tmp``), which is then renamed over ``path``.

    On any failure (ENOSPC, EDQUOT, EFBIG, EACCES, an exception from ``write``, an
    interrupt) the temporary file is removed and ``path`` is left as it was. A failure to
    write (an ``OSError`` raised, or wrapped by the writer) raises
    :class:`~spap.errors.WriteError` naming ``path`` and the reason; anything else
    propagates unchanged. ``fsync=True`` also flushes the file and the folder to disk before
    and after the rename (durable across a power loss; costs a few milliseconds per file on
    a disk). The file gets the mode ``open()`` would give it (0666 less the umask). Parent
    folders are created.
    """
    path = Path(path)
    tmp: Path | None = None
    recorder: _RecordingFile | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as fh:
            recorder = _RecordingFile(fh)
            write(recorder)  # type: ignore[arg-type]
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(exc, WriteError):
            raise
        cause = (recorder.error if recorder is not None else None) or find_os_error(exc)
        if cause is None or isinstance(exc, KeyboardInterrupt):
            raise
        raise WriteError(f"could not write {path}: {write_error_reason(cause)}") from exc
    return path
