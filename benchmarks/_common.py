"""Shared helpers of the ``benchmarks/perf_*.py`` scripts.

Timing on a shared machine is noisy, so every comparison is measured *interleaved*
(A, B, A, B, ...) after a warm-up of each variant, and reported as medians; ratios of
medians taken in the same run are what the scripts compare against their goals.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
for _path in (HERE, TESTS):  # the scripts import each other and the oracle in tests/reference
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line() -> str:
    """One line describing the machine, torch and the current load."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    clock = "thread CPU time" if CLOCK is time.thread_time else "wall time"
    return (
        f"cpu: {cpu_model()} ({os.cpu_count()} logical cores), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load:.2f}, clock: {clock}"
    )


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


# ----------------------------------------------------------------------------- timing


#: The clock of :func:`seconds`: wall time by default; :func:`use_cpu_clock` switches to
#: the CPU time of the calling thread (with one intra-op thread, the work's own cost,
#: unaffected by time spent waiting for a core on a busy machine).
CLOCK: Callable[[], float] = time.perf_counter


def use_cpu_clock() -> None:
    """One intra-op thread, timed by the thread's CPU time (a proxy for busy machines)."""
    global CLOCK
    torch.set_num_threads(1)
    CLOCK = time.thread_time


def add_clock_option(parser: Any) -> None:
    parser.add_argument(
        "--cpu-clock",
        action="store_true",
        help="one thread, timed by thread CPU time (a proxy when the machine is busy)",
    )


def apply_clock_option(args: Any) -> None:
    if getattr(args, "cpu_clock", False):
        use_cpu_clock()


def seconds(fn: Callable[[], object]) -> float:
    start = CLOCK()
    fn()
    return CLOCK() - start


def interleaved(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Wall times of each variant, measured round-robin after ``warmup`` calls of each."""
    for name, fn in variants.items():
        for _ in range(warmup):
            t = seconds(fn)
            if progress:
                print(f"  warm-up {name}: {t:.3f} s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats):
        for name, fn in variants.items():
            gc.collect()
            times[name].append(seconds(fn))
        if progress:
            last = ", ".join(f"{n} {t[-1]:.3f}" for n, t in times.items())
            print(f"  round {r + 1}/{repeats}: {last}", file=sys.stderr, flush=True)
    return times


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def matmul_flops_per_s(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an ``n x n`` fp32 matmul (2 n^3 FLOPs), median of ``repeats``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / median(seconds(lambda: a @ b) for _ in range(repeats))


def count_flops(fn: Callable[[], object]) -> int:
    """Conv + matmul FLOPs (multiply-add = 2) that ``fn`` runs, backward passes included."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------- memory


def rss_mb() -> float:
    """Current resident set size of this process (MiB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- output


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table (pastes into docs/performance.md as is)."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:#.3g}".rstrip(".") if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(lines)


def merge_dicts(base: dict, top: dict) -> dict:
    """Recursive merge of nested dicts (``top`` wins)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = (
            merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out
