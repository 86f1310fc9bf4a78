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
    RUN_DIR/checkpoints/best            (text: best_step_NNNNNNN.pt, chosen by run.best_metric)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from spap.errors import CheckpointError, SpapError, WriteError
from spap.files import atomic_write, write_error_reason

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system: run folders are not locked
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

FORMAT = "spap-checkpoint"
#: Format version written by this release; older ones are upgraded by :func:`migrate`.
VERSION = 2
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")
#: Keys without which a checkpoint cannot be resumed from (it is skipped like a corrupt one).
_RESUME_KEYS = ("step", "task")
#: Deepest nesting of containers a loaded file may hold (spap's checkpoints reach 7).
MAX_DEPTH = 32
#: Most values (keys, items, tensors) a loaded file may hold (spap's: a few thousand).
MAX_ITEMS = 1_000_000
#: Lock file of a run folder (see :class:`RunLock`).
LOCK_NAME = ".lock"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint files of a run, oldest first (by step number)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


_SCALARS = (type(None), bool, int, float, complex, str, bytes, bytearray)
_TORCH_LEAVES = (torch.dtype, torch.device, torch.layout, torch.memory_format)
#: Integers beyond this many bits have no ``repr`` (Python's 4300-digit limit).
_MAX_INT_BITS = 14_000


def check_content(state: Any) -> int:
    """Refuse content that would make hashing or using it unbounded, before any tensor byte
    is read; returns the number of tensor bytes :func:`state_digest` will hash.

    Refused (:class:`~spap.errors.CheckpointError`, without a file name): a container or
    tensor reached twice (a shared or cyclic structure: a few kilobytes of pickle can
    describe an exponentially large tree or an endless one), nesting deeper than
    :data:`MAX_DEPTH`, more than :data:`MAX_ITEMS` values, objects other than plain values,
    containers, tensors, dtypes and devices, tensors without data (meta) or of another
    layout than strided, tensors whose shape covers more elements than their storage holds
    (expanded or overlapping views), and more tensor bytes than 4 x the distinct storages
    hold + 64 MiB. Tuples of plain values may be shared (PyTorch's pickler shares equal
    ones). The walk uses no recursion and touches tensor metadata only.
    """
    seen: set[int] = set()
    storages: dict[tuple[str, int], int] = {}
    items = 0
    tensor_bytes = 0
    stack: list[tuple[Any, int]] = [(state, 0)]
    while stack:
        v, depth = stack.pop()
        items += 1
        if items > MAX_ITEMS:
            raise CheckpointError(f"unsafe content: more than {MAX_ITEMS} values")
        if isinstance(v, _SCALARS):
            if isinstance(v, int) and v.bit_length() > _MAX_INT_BITS:
                raise CheckpointError(f"unsafe content: an integer of {v.bit_length()} bits")
            continue
        if isinstance(v, _TORCH_LEAVES):
            continue
        if isinstance(v, torch.Tensor):
            if id(v) in seen:
                raise CheckpointError("unsafe content: a tensor reached twice")
            seen.add(id(v))
            if v.layout != torch.strided or v.device.type == "meta":
                raise CheckpointError(
                    f"unsafe content: a {v.layout} tensor on {v.device.type} (only dense "
                    "tensors with data are accepted)"
                )
            storage = v.untyped_storage()
            size = storage.nbytes()
            need = v.numel() * v.element_size()
            if need > size:
                raise CheckpointError(
                    f"unsafe content: a tensor of shape {tuple(v.shape)[:8]} views a storage "
                    f"of {size} bytes (an expanded or overlapping view)"
                )
            storages[(v.device.type, storage.data_ptr())] = size
            tensor_bytes += need
            continue
        is_map = isinstance(v, Mapping)
        if not (is_map or isinstance(v, (list, tuple, set, frozenset))):
            raise CheckpointError(f"unsafe content: an object of type {type(v).__name__}")
        if depth >= MAX_DEPTH:
            raise CheckpointError(f"unsafe content: nested deeper than {MAX_DEPTH} levels")
        children = [x for kv in v.items() for x in kv] if is_map else list(v)
        if id(v) in seen:
            plain = isinstance(v, (tuple, frozenset)) and all(
                isinstance(x, _SCALARS) for x in children
            )
            if not plain:
                raise CheckpointError(
                    f"unsafe content: a {type(v).__name__} reached twice (a shared or cyclic "
                    "structure, which spap never writes)"
                )
        seen.add(id(v))
        if isinstance(v, (set, frozenset)) and not all(isinstance(x, _SCALARS) for x in children):
            raise CheckpointError("unsafe content: a set of other than plain values")
        stack.extend((x, depth + 1) for x in children)
    budget = 4 * sum(storages.values()) + (64 << 20)
    if tensor_bytes > budget:
        raise CheckpointError(
            f"unsafe content: {tensor_bytes} tensor bytes over {len(storages)} storages"
        )
    return tensor_bytes


def state_digest(state: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of a checkpoint's content: every key, plain value and tensor
    (dtype, shape, bytes), in order. ``"checksum"`` and ``"path"`` keys are left out.
    The content is checked first (:func:`check_content`: unsafe content raises
    :class:`~spap.errors.CheckpointError`), so hashing is bounded in time and memory."""
    content = {k: v for k, v in state.items() if k not in ("checksum", "path")}
    check_content(content)
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
        else:  # anything else check_content accepts (dtype, device ...): its repr
            h.update(repr(v).encode() + b";")

    walk(content)
    return "sha256:" + h.hexdigest()


def check_archive(path: str | Path) -> None:
    """Refuse a zip archive (the format of ``torch.save``) whose records are compressed or
    declare more bytes than the file holds, before PyTorch allocates them: a small crafted
    file could otherwise make the reader allocate gigabytes. Other files pass (the loader
    decides)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, RuntimeError):
        return  # unreadable as a zip: torch.load reports it
    declared = 0
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{path}: refused to load: record {info.filename[:80]!r} is compressed "
                "(torch.save writes none; a compressed record can expand without bound)"
            )
        declared += info.file_size
    if declared > size:
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint (its records declare {declared} bytes, "
            f"the file holds {size})"
        )


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Save ``state`` atomically to ``path``, with its :func:`state_digest` as
    ``"checksum"``."""
    path = Path(path)
    state = {k: v for k, v in state.items() if k not in ("checksum", "path")}
    state["checksum"] = state_digest(state)
    atomic_write(path, lambda fh: torch.save(state, fh))
    return path


def _read_pointer(folder: Path) -> str | None:
    """The file name in ``folder/latest``, or None if missing or unreadable."""
    try:
        name = (folder / "latest").read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if _STEP_RE.match(name) else None


def remove_stale_temporaries(
    folder: str | Path, prefixes: tuple[str, ...] = (".step_", ".latest.")
) -> int:
    """Delete the temporary files (``.step_*.tmp``, ``.latest.*.tmp``, or other
    ``prefixes``) left in ``folder`` by a process killed while writing (SIGKILL, power
    loss). Only call it while holding the folder's :class:`RunLock`: a live writer's
    temporary file looks the same. Returns how many were removed."""
    folder = Path(folder)
    removed = 0
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            if p.name.startswith(prefixes):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed += 1
    if removed:
        log.info("removed %d unfinished files from %s", removed, folder)
    return removed


class RunLock:
    """The exclusive lock of a run folder: ``fcntl.flock`` on ``RUN/.lock``, which holds the
    holder's pid. The operating system releases it when the process ends in any way
    (SIGKILL included), so a stale lock file never blocks; the file itself stays.

    >>> with RunLock("runs/x"):   # refused in one line while another process holds it
    ...     train()
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None

    def _busy(self, fd: int) -> SpapError:
        with contextlib.suppress(OSError, ValueError):
            os.lseek(fd, 0, os.SEEK_SET)
            pid = os.read(fd, 32).decode("ascii", "replace").strip()
            if pid.isdigit():
                return SpapError(
                    f"{self.run_dir} is in use by another spap process (pid {pid}); wait for "
                    "it to end, or choose another --out"
                )
        return SpapError(
            f"{self.run_dir} is in use by another spap process; wait for it to end, or "
            "choose another --out"
        )

    def check(self) -> None:
        """Refuse now if another process holds the lock (takes nothing; the folder may not
        exist yet)."""
        if fcntl is None or not self.path.is_file():
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            raise self._busy(fd) from None
        finally:
            os.close(fd)  # closing also drops the shared lock just taken

    def acquire(self) -> RunLock:
        """Take the lock (creating the folder and the lock file) or refuse in one line
        naming the holder's pid."""
        if fcntl is None or self.fd is not None:
            return self
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise SpapError(
                f"cannot lock the run folder {self.run_dir}: {write_error_reason(exc)}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            err = self._busy(fd)
            os.close(fd)
            raise err from None
        with contextlib.suppress(OSError):  # the pid is for messages only
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class CheckpointManager:
    """Writes ``step_XXXXXXX.pt`` files into a run folder, keeps the last ``keep_last``,
    and points ``latest`` at the newest one."""

    def __init__(self, run_dir: str | Path, keep_last: int = 3) -> None:
        self.folder = checkpoint_dir(run_dir)
        self.keep_last = keep_last
        remove_stale_temporaries(self.folder)

    def save(self, state: Mapping[str, Any], step: int) -> Path:
        """Write the checkpoint of ``step``, then point ``latest`` at it; a failed write
        raises :class:`~spap.errors.WriteError` (``could not write <file>: <reason>;
        the previous checkpoint is intact``)."""
        had = bool(list_checkpoints(self.folder.parent))
        try:
            path = save_checkpoint(state, self.folder / f"step_{step:07d}.pt")
            atomic_write(self.folder / "latest", lambda fh: fh.write(path.name.encode()))
        except WriteError as exc:
            if not had:
                raise
            raise WriteError(f"{exc}; the previous checkpoint is intact") from exc
        for old in list_checkpoints(self.folder.parent)[: -self.keep_last]:
            with contextlib.suppress(OSError):
                old.unlink()
        return path


def resolve_best(run_dir: str | Path) -> Path:
    """The file ``RUN_DIR/checkpoints/best`` points at (see :mod:`spap.train.evaluation`)."""
    folder = checkpoint_dir(run_dir)
    try:
        name = (folder / "best").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise CheckpointError(
            f"{run_dir} has no best checkpoint ({folder}/best is missing: the run was not "
            "evaluated; set run.eval_every)"
        ) from None
    if not re.match(r"^best_step_\d+\.pt$", name) or not (folder / name).is_file():
        raise CheckpointError(f"{folder}/best points at {name!r}, which is not there")
    return folder / name


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or a run folder's (or checkpoints folder's) latest one;
    ``RUN:best`` (or the ``best`` pointer file) is the run's best checkpoint."""
    text = str(path)
    if text.endswith(":best") and not Path(text).exists():
        return resolve_best(text[: -len(":best")] or ".")
    p = Path(path)
    if p.is_file() and p.name == "best" and p.parent.name == "checkpoints":
        return resolve_best(p.parent.parent)
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
    check_archive(file)
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
    try:
        digest = state_digest(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{file}: refused to load: {exc}") from None
    if checksum != digest:
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
    _check_sections(state, file)
    if kind is not None and state.get("kind") != kind:
        raise CheckpointError(
            f"{file} is a {_short(state.get('kind'))} checkpoint, but a {kind!r} checkpoint is "
            "needed"
        )
    state["path"] = str(file)
    return state


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (for messages about stored values)."""
    text = repr(value) if isinstance(value, _SCALARS) else f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_sections(state: dict[str, Any], file: Path) -> None:
    """One-line errors for a checkpoint whose sections have the wrong types (an authentic
    checksum does not make the content usable: the file may come from a faulty writer)."""
    problems = []
    kind = state.get("kind")
    if not isinstance(kind, str):
        problems.append(f"kind {_short(kind)}")
    for key in ("config", "task", "runner"):
        if key in state and not isinstance(state[key], Mapping):
            problems.append(f"{key} is {_short(state[key])}, not a mapping")
    for key in ("step", "epoch", "position"):
        value = state.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(f"{key} {_short(value)}")
    task = state.get("task")
    models = task.get("models") if isinstance(task, Mapping) else None
    if models is not None and not (
        isinstance(models, Mapping) and all(isinstance(m, Mapping) for m in models.values())
    ):
        problems.append("task.models is not a mapping of state dicts")
    if problems:
        raise CheckpointError(f"{file}: malformed checkpoint ({'; '.join(problems[:3])})")


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
