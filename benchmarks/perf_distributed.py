"""Distributed data parallelism on the CPU: 2 processes (gloo) vs 1 process.

Runs ``CycleGANTask.train_step`` (the code of ``spap train cyclegan``; under torchrun its
gradients are averaged across ranks after every backward, one flattened all-reduce per
optimizer) with batch 1 per process in three set-ups on the same 2 cores:

- 1 process, 2 intra-op threads (the default single-process run);
- 1 process, 1 thread (what each rank of the 2-process run has);
- 2 processes x 1 thread, gloo over localhost (global batch 2).

Reported: median s/step, images/s, and, measured inside the 2-process run, the time of the
gradient all-reduce of the generators' and the discriminators' parameters (what each step
adds over the 1-thread single process for communication). The configs' parameter counts
give the bytes every step exchanges, from which ``docs/performance.md`` estimates
multi-node costs.

    python benchmarks/perf_distributed.py              # 64x64 config (6 blocks, width 32)
    python benchmarks/perf_distributed.py --size 128   # 128x128 config (6 blocks, width 64)
    python benchmarks/perf_distributed.py --quick      # fewer steps
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

import _common as C

WIDTH = {64: 32, 128: 64, 256: 64}
BLOCKS = {64: 6, 128: 6, 256: 9}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, spec: dict[str, Any], out: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(spec["threads"])
    from perf_cyclegan import make_batches, make_task
    from spap.train import distributed as D

    info = D.DistInfo(rank, world, rank)
    D.init(info, "gloo", torch.device("cpu"))
    try:
        size = spec["size"]
        model = {"ngf": WIDTH[size], "ndf": WIDTH[size], "n_blocks": BLOCKS[size]}
        torch.manual_seed(0)
        task = make_task("cyclegan/cityscapes", {"model": model}, size, info)
        batches = make_batches(size, 4, seed=rank)
        times = []
        for i in range(spec["warmup"] + spec["steps"]):
            D.barrier()
            t0 = time.perf_counter()
            task.train_step(batches[i % 4], i)
            if i >= spec["warmup"]:
                times.append(time.perf_counter() - t0)
        # the all-reduce of one update of each optimizer, timed on its own
        result: dict[str, Any] = {"step_s": times}
        for name, opt in (("G", task.opt_G), ("D", task.opt_D)):
            params = [p for g in opt.param_groups for p in g["params"]]
            result[f"params_{name}"] = sum(p.numel() for p in params)
            if world > 1:
                grads = [torch.randn_like(p) for p in params]
                ts = []
                for _ in range(5):
                    D.barrier()
                    t0 = time.perf_counter()
                    D.all_reduce_mean_(grads)
                    ts.append(time.perf_counter() - t0)
                result[f"allreduce_{name}_s"] = statistics.median(ts)
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        D.shutdown()


def launch(world: int, threads: int, size: int, steps: int, warmup: int) -> list[dict[str, Any]]:
    spec = {"threads": threads, "size": size, "steps": steps, "warmup": warmup}
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world, _free_port(), spec, out), nprocs=world, join=True)
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 timed steps per set-up")
    p.add_argument("--size", type=int, default=64, choices=sorted(WIDTH))
    p.add_argument("--steps", type=int)
    args = p.parse_args(argv)
    steps = args.steps or (4 if args.quick else 10)
    size = args.size
    print(C.machine_line())
    print(
        f"CycleGAN {size}x{size}, {BLOCKS[size]} blocks, width {WIDTH[size]}, batch 1 per "
        f"process, {steps} timed steps"
    )

    setups = [
        ("1 process x 2 threads", 1, 2),
        ("1 process x 1 thread", 1, 1),
        ("2 processes x 1 thread (gloo)", 2, 1),
    ]
    results: dict[str, list[list[dict[str, Any]]]] = {name: [] for name, _, _ in setups}
    for _ in range(2):  # two rounds, so that a change of load hits every set-up
        for name, world, threads in setups:
            print(f"  {name} ...", file=sys.stderr, flush=True)
            results[name].append(launch(world, threads, size, steps, warmup=2))

    rows = []
    base_ips = None
    for name, world, _ in setups:
        # per step: the slowest rank decides; all timed steps of both rounds
        per_step = []
        for run in results[name]:
            per_step += [max(r["step_s"][i] for r in run) for i in range(steps)]
        s = C.median(per_step)
        ips = world / s
        base_ips = base_ips or ips
        last = results[name][-1][0]
        ar = (
            (last.get("allreduce_G_s", 0) + last.get("allreduce_D_s", 0)) * 1e3
            if world > 1
            else None
        )
        rows.append([name, s, ips, f"{ips / base_ips:.2f}x", "" if ar is None else f"{ar:.0f}"])
    first = results[setups[0][0]][0][0]
    n_params = first["params_G"] + first["params_D"]
    print("\nDistributed (CPU, gloo): medians over all timed steps")
    print(C.table(["set-up", "s/step", "images/s", "vs 1x2", "all-reduce ms/step"], rows))
    print(
        f"parameters averaged per step: {n_params / 1e6:.2f} M ({n_params * 4 / 2**20:.0f} MiB "
        f"of fp32 gradients: G {first['params_G'] / 1e6:.2f} M, D {first['params_D'] / 1e6:.2f} M)"
    )
    print(C.machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
