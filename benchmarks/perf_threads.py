"""Goal 2: the default training step on a busy machine vs the same step with one thread.

Three worker processes each build spap's ``CycleGANTask`` (the code ``spap train cyclegan``
runs; 64x64, 6 blocks, width 32 unless ``--size 128``) and run training steps on request,
so that their steps can be timed interleaved (default, one thread, stock, default, ...):

- **default**: what ``spap train`` sets up before it trains: ``spap.cli.quiet_openmp_wait``
  (idle OpenMP threads sleep instead of spinning) and ``spap.devices.set_threads()`` (the
  cores this process may use: affinity and cgroup quota; no OMP_NUM_THREADS set);
- **one thread**: the same with ``--threads 1``;
- **stock PyTorch**: neither (PyTorch's own thread count, OpenMP's spinning threads): what
  ``spap train`` did before.

The busy machine is simulated by one process per core spinning in a Python loop, started
before the timed steps; the same workers are then timed again with the spinners stopped
(the machine as other users leave it: the load average is printed). Goal: the default step
on the busy machine at most 1.5x the one-thread step (PASS/MISS).

    python benchmarks/perf_threads.py            # 64 px, 5 timed rounds per phase
    python benchmarks/perf_threads.py --quick    # 3 rounds, stock PyTorch in 1 (~2-3 min)
    python benchmarks/perf_threads.py --size 128 --no-stock
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
#: Variables that decide threads and OpenMP waiting: cleared for the workers, so that each
#: measures its own set-up, not the caller's environment.
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "KMP_BLOCKTIME",
    "MKL_NUM_THREADS",
)
MODES = {"default": "default (spap train)", "one": "--threads 1", "stock": "stock PyTorch"}


# ----------------------------------------------------------------------------- worker


def worker(mode: str, size: int) -> None:
    """Build the task, then answer ``step`` lines with one timed training step each."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    if mode != "stock":
        from spap.cli import quiet_openmp_wait

        quiet_openmp_wait()  # before torch is imported, as `spap` does
    import torch

    if mode != "stock":
        from spap.devices import set_threads

        set_threads(1 if mode == "one" else None)
    sys.path.insert(0, str(HERE))
    from perf_cyclegan import CONFIGS, make_batches, make_task

    _, n_blocks, width, config = CONFIGS[str(size)]
    torch.manual_seed(0)
    model = {"ngf": width, "ndf": width, "n_blocks": n_blocks, "attention": "none"}
    task = make_task(config, {"model": model}, size)
    batches = make_batches(size, 2)
    task.train_step(batches[0], 0)  # warm-up
    wait = os.environ.get("OMP_WAIT_POLICY", "(OpenMP default: spin)")
    print(f"ready {torch.get_num_threads()} {wait}", flush=True)
    i = 1
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t0 = time.perf_counter()
        task.train_step(batches[i % 2], i)
        print(f"{time.perf_counter() - t0:.6f}", flush=True)
        i += 1


class Worker:
    def __init__(self, mode: str, size: int) -> None:
        env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
        self.mode = mode
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", mode, "--size", str(size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.threads = ""
        self.wait = ""

    def ready(self) -> None:
        line = self._line()
        _, threads, wait = line.split(maxsplit=2)
        self.threads, self.wait = threads, wait

    def step(self) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return float(self._line())

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.mode} ended (exit code {self.proc.wait()})")
        return line.strip()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ----------------------------------------------------------------------------- busy machine


def _spin(stop: mp.synchronize.Event) -> None:
    while not stop.is_set():
        for _ in range(100_000):
            pass


class Spinners:
    """One process per core, each spinning until stopped."""

    def __init__(self, n: int) -> None:
        self.stop = mp.Event()
        self.procs = [mp.Process(target=_spin, args=(self.stop,), daemon=True) for _ in range(n)]

    def __enter__(self) -> Spinners:
        for p in self.procs:
            p.start()
        time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(timeout=10)


def timed_rounds(
    workers: list[Worker], rounds: int, label: str, stock_rounds: int
) -> dict[str, list[float]]:
    """``rounds`` rounds of one step per worker (stock PyTorch only in the first
    ``stock_rounds``: its busy steps take tens of seconds)."""
    times: dict[str, list[float]] = {w.mode: [] for w in workers}
    for r in range(rounds):
        for w in workers:
            if w.mode != "stock" or r < stock_rounds:
                times[w.mode].append(w.step())
        last = ", ".join(f"{m} {t[-1]:.2f}" for m, t in times.items())
        print(f"  {label} round {r + 1}/{rounds}: {last}", file=sys.stderr, flush=True)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 timed rounds per phase")
    p.add_argument("--size", type=int, default=64, choices=(64, 128))
    p.add_argument("--rounds", type=int, help="timed rounds per phase")
    p.add_argument(
        "--no-stock", action="store_true", help="leave out stock PyTorch (slow when busy)"
    )
    p.add_argument("--worker", choices=sorted(MODES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.size)
        return 0

    import _common as C

    rounds = args.rounds or (3 if args.quick else 5)
    stock_rounds = 1 if args.quick else rounds
    modes = ["default", "one"] + ([] if args.no_stock else ["stock"])
    cores = os.cpu_count() or 1
    print(C.machine_line())
    print(
        f"CycleGAN {args.size}x{args.size} training step, batch 1; busy: {cores} spinning "
        f"processes (one per core); {rounds} timed rounds per phase ({stock_rounds} of stock "
        "PyTorch)"
    )
    workers = [Worker(m, args.size) for m in modes]
    results: dict[str, dict[str, list[float]]] = {}
    loads: dict[str, float] = {}
    try:
        for w in workers:
            w.ready()
        with Spinners(cores):
            for w in workers:  # one untimed step with the spinners running
                if w.mode != "stock":
                    w.step()
            results["busy"] = timed_rounds(workers, rounds, "busy", stock_rounds)
            loads["busy"] = C.load_average()
        results["idle"] = timed_rounds(workers, rounds, "not busy", stock_rounds)
        loads["idle"] = C.load_average()
    finally:
        for w in workers:
            w.close()

    rows = []
    for phase, times in results.items():
        t_one = statistics.median(times["one"])
        for w in workers:
            t = statistics.median(times[w.mode])
            goal = ""
            if phase == "busy" and w.mode == "default":
                goal = C.verdict(t / t_one <= 1.5)
            rows.append(
                [
                    "busy (a spinner per core)" if phase == "busy" else "spinners stopped",
                    MODES[w.mode],
                    w.threads,
                    w.wait,
                    t,
                    f"{t / t_one:.2f}x",
                    goal,
                ]
            )
    print("\nGoal 2: training step with the default threads vs one thread (medians, interleaved):")
    headers = [
        "machine",
        "set-up",
        "threads",
        "OMP_WAIT_POLICY",
        "s/step",
        "vs 1 thread",
        "<= 1.5x",
    ]
    print(C.table(headers, rows))
    print(
        "load average (1 min) at the end of each phase: "
        + ", ".join(f"{k} {v:.2f}" for k, v in loads.items())
    )
    print(C.machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
