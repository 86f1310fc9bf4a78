"""Choosing the device and the CPU threads: one rule for training, inference, evaluation
and the apps.

Threads: :func:`default_threads` is the number of cores this process may use (its CPU
affinity and its cgroup CPU quota, whichever is smaller; never the host's core count,
which a container limited to a few cores still sees), divided among the processes
``torchrun`` started on this machine; an ``OMP_NUM_THREADS`` set in the environment is
respected. :func:`set_threads` applies it (or an explicit count) to PyTorch.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from spap.errors import ConfigError

__all__ = [
    "cgroup_cpu_limit",
    "default_threads",
    "pick_device",
    "set_threads",
    "usable_cpus",
]


def pick_device(spec: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's GPU when CUDA is available, else the CPU; anything else as
    given (``cpu``, ``cuda``, ``cuda:1``), refused in one line if it is not usable here."""
    if isinstance(spec, torch.device):
        return spec
    spec = str(spec)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {spec!r} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


# ----------------------------------------------------------------------------- threads


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _ratio(quota: str | None, period: str | None) -> float | None:
    """CPUs of a ``quota``/``period`` pair (``max`` or a negative quota: no limit)."""
    try:
        q, p = float(quota or ""), float(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _own_cgroups(proc_cgroup: Path) -> list[tuple[str, str]]:
    """(controllers, path) of each line of ``/proc/self/cgroup`` (controllers "" for
    cgroup v2)."""
    text = _read(proc_cgroup) or ""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[1], parts[2]))
    return out


def _up_from(base: Path, sub: str) -> list[Path]:
    """``base/sub`` and each of its parents up to ``base`` (``base`` alone if ``sub`` is
    not visible there, as inside a container's own cgroup namespace)."""
    start = base / sub.lstrip("/")
    if not start.is_dir():
        return [base]
    dirs = [start]
    while dirs[-1] != base and base in dirs[-1].parents:
        dirs.append(dirs[-1].parent)
    return dirs


def cgroup_cpu_limit(
    root: str | os.PathLike = "/sys/fs/cgroup",
    proc_cgroup: str | os.PathLike = "/proc/self/cgroup",
) -> float | None:
    """CPUs the cgroup CPU quota grants this process (quota / period; the smallest over its
    cgroup and the cgroups above it), or None when there is no quota.

    cgroup v2: ``cpu.max`` ("max 100000" = none, "200000 100000" = 2 CPUs); cgroup v1:
    ``cpu.cfs_quota_us`` (-1 = none) and ``cpu.cfs_period_us`` in the ``cpu`` controller's
    hierarchy. ``root`` and ``proc_cgroup`` name the cgroup mount and the file listing the
    process's cgroups."""
    root, proc_cgroup = Path(root), Path(proc_cgroup)
    own = _own_cgroups(proc_cgroup) or [("", "/")]
    limits: list[float] = []
    for controllers, sub in own:
        if controllers == "":  # cgroup v2 (unified)
            for base in (root, root / "unified"):
                if (base / "cgroup.controllers").exists() or (base / "cpu.max").exists():
                    for d in _up_from(base, sub):
                        max_line = (_read(d / "cpu.max") or "").split()
                        if len(max_line) == 2:
                            limits.append(_ratio(max_line[0], max_line[1]) or math.inf)
        elif "cpu" in controllers.split(","):
            names = [controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"]
            base = next((root / n for n in names if (root / n).is_dir()), None)
            if base is None:
                continue
            for d in _up_from(base, sub):
                quota = _read(d / "cpu.cfs_quota_us")
                limits.append(_ratio(quota, _read(d / "cpu.cfs_period_us")) or math.inf)
    finite = [x for x in limits if x != math.inf]
    return min(finite) if finite else None


def usable_cpus(
    affinity: int | None = None,
    cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
    proc_cgroup: str | os.PathLike = "/proc/self/cgroup",
) -> int:
    """Cores this process may use: its CPU affinity (``os.sched_getaffinity``) and its
    cgroup CPU quota (rounded up), whichever is smaller; at least 1."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux
            affinity = os.cpu_count() or 1
    n = affinity
    quota = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if quota is not None:
        n = min(n, math.ceil(quota - 1e-9))
    return max(1, n)


def _positive_int(text: str | None) -> int | None:
    try:
        n = int(str(text).split(",")[0].strip())
    except ValueError:
        return None
    return n if n >= 1 else None


def default_threads(environ: Mapping[str, str] | None = None, **cpus: str | os.PathLike) -> int:
    """The default number of PyTorch CPU threads of a process.

    ``OMP_NUM_THREADS`` when the environment sets it (a positive integer); otherwise
    :func:`usable_cpus` divided by ``LOCAL_WORLD_SIZE`` (the processes ``torchrun`` started
    on this machine), at least 1. ``cpus`` is passed to :func:`usable_cpus`."""
    env = os.environ if environ is None else environ
    omp = _positive_int(env.get("OMP_NUM_THREADS"))
    if omp is not None:
        return omp
    local = _positive_int(env.get("LOCAL_WORLD_SIZE")) or 1
    return max(1, usable_cpus(**cpus) // local)


def set_threads(threads: int | None = None) -> int:
    """Use ``threads`` PyTorch CPU threads (None: :func:`default_threads`); returns the
    count. The inter-op pool gets the same count while PyTorch still allows changing it
    (before its first parallel work)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
        raise ConfigError(f"threads must be a whole number, got {threads!r}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    n = threads if threads is not None else default_threads()
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # already started: it keeps its size
        torch.set_num_interop_threads(n)
    return n
