"""Checkpoints: atomic writes, safe loading, keeping the last K, resuming with fallback.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values, so
that it loads with ``weights_only=True``: a file carrying a pickled payload that would
run code is refused and the payload never runs. It also holds a SHA-256 digest of its own
content (``"checksum"``), checked on loading: a file damaged after it was written (a flipped
bit, overwritten bytes) is reported as corrupt instead of loading wrong weights. PyTorch's
zip container checks no CRC, so without it such damage would go unnoticed.

Run folder layout::

    RUN_DIR/checkpoints/step_0001000.pt
    RUN_DIR/checkpoints/latest          (text: the file name of the newest checkpoint)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from spap.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "spap-checkpoint"
#: Format version written by this release; older ones are upgraded by :func:`migrate`.
VERSION = 2
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")
#: Keys without which a checkpoint cannot be resumed from (it is skipped like a corrupt one).
_RESUME_KEYS = ("step", "task")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint files of a run, oldest first (by step number)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Write a file atomically: ``write(fileobj)`` into a temporary file in the same folder,
    flush, fsync, rename over ``path``. On any failure the old ``path`` is untouched and
    the temporary file removed. The file gets the mode ``open()`` would give it (0666 less
    the user's umask), so collaborators can read what the umask lets them read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            why = (
                "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            )
            raise CheckpointError(
                f"could not write {path}: {why}; the previous checkpoint is intact"
            ) from exc
        raise


def state_digest(state: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of a checkpoint's content: every key, plain value and tensor
    (dtype, shape, bytes), in order. ``"checksum"`` and ``"path"`` keys are left out."""
    h = hashlib.sha256()

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach()
            h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
            if t.numel():
                flat = t.to("cpu").contiguous().reshape(-1)
                h.update(flat.view(torch.uint8).numpy().data)
        elif isinstance(v, Mapping):
            h.update(b"D%d;" % len(v))
            for k, x in v.items():
                walk(k)
                walk(x)
        elif isinstance(v, (list, tuple)):
            h.update(b"L%d;" % len(v))
            for x in v:
                walk(x)
        elif v is None or isinstance(v, (bool, int, float, str, bytes)):
            h.update(repr((type(v).__name__, v)).encode() + b";")
        else:  # anything else weights_only can hold (dtype, device ...): its repr
            h.update(repr(v).encode() + b";")

    walk({k: v for k, v in state.items() if k not in ("checksum", "path")})
    return "sha256:" + h.hexdigest()


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Save ``state`` atomically to ``path``, with its :func:`state_digest` as
    ``"checksum"``."""
    path = Path(path)
    state = {k: v for k, v in state.items() if k not in ("checksum", "path")}
    state["checksum"] = state_digest(state)
    atomic_write_bytes(path, lambda fh: torch.save(state, fh))
    return path


def _read_pointer(folder: Path) -> str | None:
    """The file name in ``folder/latest``, or None if missing or unreadable."""
    try:
        name = (folder / "latest").read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if _STEP_RE.match(name) else None


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete ``.step_*.tmp`` / ``.latest.*.tmp`` files left by a process killed while
    writing (SIGKILL, power loss). Returns how many were removed."""
    folder = Path(folder)
    removed = 0
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            if p.name.startswith((".step_", ".latest.")):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed += 1
    if removed:
        log.info("removed %d unfinished checkpoint files from %s", removed, folder)
    return removed


class CheckpointManager:
    """Writes ``step_XXXXXXX.pt`` files into a run folder, keeps the last ``keep_last``,
    and points ``latest`` at the newest one."""

    def __init__(self, run_dir: str | Path, keep_last: int = 3) -> None:
        self.folder = checkpoint_dir(run_dir)
        self.keep_last = keep_last
        remove_stale_temporaries(self.folder)

    def save(self, state: Mapping[str, Any], step: int) -> Path:
        path = save_checkpoint(state, self.folder / f"step_{step:07d}.pt")
        atomic_write_bytes(self.folder / "latest", lambda fh: fh.write(path.name.encode()))
        for old in list_checkpoints(self.folder.parent)[: -self.keep_last]:
            with contextlib.suppress(OSError):
                old.unlink()
        return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or a run folder's (or checkpoints folder's) latest one."""
    p = Path(path)
    if p.is_file() and p.name == "latest" and p.parent.name == "checkpoints":
        p = p.parent  # the pointer file itself: follow it
    if p.is_file():
        return p
    if not p.exists():
        raise CheckpointError(f"no such checkpoint file or run folder: {p}")
    run_dir = p.parent if p.name == "checkpoints" else p
    folder = checkpoint_dir(run_dir)
    name = _read_pointer(folder)
    if name is not None and (folder / name).is_file():
        return folder / name
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{p} holds no checkpoint (looked for {folder}/step_*.pt)")
    return found[-1]


def _drop_keys(state: dict[str, Any], section: str, keys: tuple[str, ...]) -> None:
    config = state.get("config")
    part = config.get(section) if isinstance(config, dict) else None
    if isinstance(part, dict):
        for key in keys:
            part.pop(key, None)


def _v1_to_v2(state: dict[str, Any]) -> None:
    # 0.2 removed the hand-written CPU convolution kernels and their two run keys.
    _drop_keys(state, "run", ("winograd_min_size", "thin_conv_channels_last"))


#: version -> the step that upgrades a checkpoint of that version to the next one.
MIGRATIONS: dict[int, Any] = {1: _v1_to_v2}


def migrate(state: dict[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """Upgrade a loaded checkpoint dict, step by step, to :data:`VERSION` (in place; also
    returned). Each step changes only what its release changed (removed or renamed config
    keys, moved state); config keys a step does not know stay and are reported where they are
    read (:func:`spap.config.from_dict` with ``unknown="warn"``)."""
    version = state.get("version", 1)
    if version < VERSION:
        log.debug("%s: upgrading checkpoint format %d -> %d", source, version, VERSION)
    while version < VERSION:
        MIGRATIONS[version](state)
        version += 1
        state["version"] = version
    return state


def load_checkpoint(
    path: str | Path, kind: str | None = None, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; one-line errors for every failure.

    ``path`` may be a run folder (its latest checkpoint is taken). ``kind`` ("cyclegan" or
    "gan") checks that the checkpoint is of the expected task.
    """
    file = resolve_checkpoint(path)
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if "Weights only" in text and "Unsupported operand" not in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{file}: refused to load: it holds pickled Python objects that could run "
                f"code{what}; only tensors and plain values are accepted"
            ) from None
        detail = next(
            (ln for ln in lines if "Unsupported operand" in ln), lines[0] if lines else ""
        )
        raise CheckpointError(
            f"{file}: truncated or corrupt checkpoint (unpickling failed: {detail[:200]})"
        ) from None
    except IsADirectoryError:
        raise CheckpointError(f"{file}: a folder, not a checkpoint file") from None
    except PermissionError:
        raise CheckpointError(f"{file}: permission denied") from None
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"no such checkpoint file: {file}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(". ")[0]  # PyTorch's zip errors go on with generic advice
        raise CheckpointError(f"{file}: truncated or corrupt checkpoint ({first[:200]})") from None
    except Exception as exc:  # noqa: BLE001 - damaged bytes can fail anywhere in unpickling
        raise CheckpointError(
            f"{file}: truncated or corrupt checkpoint ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{file}: not a spap checkpoint (reference CycleGAN weights are converted with "
            "spap.models.cyclegan.load_reference_generator)"
        )
    checksum = state.pop("checksum", None)
    if checksum is None:  # every spap checkpoint has one: a damaged key name hides it
        raise CheckpointError(
            f"{file}: corrupt checkpoint (no checksum: the file was damaged or modified after "
            "it was written)"
        )
    if checksum != state_digest(state):
        raise CheckpointError(
            f"{file}: corrupt checkpoint (checksum mismatch: the file was damaged or modified "
            "after it was written)"
        )
    version = state.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{file}: corrupt checkpoint (format version {version!r})")
    if version > VERSION:
        raise CheckpointError(
            f"{file}: written by a newer spap (format version {version}); upgrade spap"
        )
    state = migrate(state, source=str(file))
    if kind is not None and state.get("kind") != kind:
        raise CheckpointError(
            f"{file} is a {state.get('kind')!r} checkpoint, but a {kind!r} checkpoint is needed"
        )
    state["path"] = str(file)
    return state


def load_for_resume(run_dir: str | Path, kind: str | None = None) -> dict[str, Any] | None:
    """The newest readable checkpoint of a run; unreadable newer ones are skipped with a
    warning. None if the run has no checkpoint at all."""
    candidates = list_checkpoints(run_dir)
    if not candidates:
        return None
    name = _read_pointer(checkpoint_dir(run_dir))
    candidates.sort(key=lambda p: p.name == name)  # the pointed-to one last (= tried first)
    errors = []
    for file in reversed(candidates):
        try:
            state = load_checkpoint(file, kind=kind)
            missing = [k for k in _RESUME_KEYS if k not in state]
            if missing:
                raise CheckpointError(f"{file}: incomplete checkpoint (no {', '.join(missing)})")
        except CheckpointError as exc:
            if kind is not None and "checkpoint is needed" in str(exc):
                raise
            log.warning("skipping unreadable checkpoint: %s", exc)
            errors.append(str(exc))
            continue
        if errors:
            log.warning("resuming from the previous good checkpoint %s", file)
        return state
    raise CheckpointError(f"no readable checkpoint in {checkpoint_dir(run_dir)}: {errors[0]}")
