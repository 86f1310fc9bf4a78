"""bf16 autocast on the CPU (``run.precision=bf16``) vs fp32: whole training steps of spap's
tasks, interleaved, with the first iteration's loss difference.

On CPUs with bf16 instructions (AVX-512 BF16, AMX) oneDNN runs convolutions and matrix
products in bf16 under autocast; elsewhere autocast still converts but computes no faster.
The fp32 goals (``perf_cyclegan.py``) are measured without it: bf16 changes the numerics
(8 mantissa bits), so it is an option, not a default.

    python benchmarks/perf_precision.py            # CycleGAN 64 and 128 px, GAN 128 px
    python benchmarks/perf_precision.py --quick    # CycleGAN only
"""

from __future__ import annotations

import argparse

import torch

import _common as C
import perf_cyclegan
import perf_gan


def _task(kind: str, precision: str):
    torch.manual_seed(0)
    run = {"precision": precision}
    if kind == "gan":
        task = perf_gan.make_task(
            perf_gan.CONFIGS["baseline"], {"train": {"batch_size": 16}, "run": run}
        )
        return task, perf_gan.make_batches(task.batch_size)
    size, n_blocks, width, config = perf_cyclegan.CONFIGS[kind]
    model = {"ngf": width, "ndf": width, "n_blocks": n_blocks, "attention": "none"}
    task = perf_cyclegan.make_task(config, {"model": model, "run": run}, size)
    return task, perf_cyclegan.make_batches(size, 2)


def rows(cases: list[tuple[str, str]], repeats: int) -> list[list[object]]:
    out = []
    for label, kind in cases:
        steppers, first = {}, {}
        for precision in ("fp32", "bf16"):
            task, batches = _task(kind, precision)
            first[precision] = task.train_step(batches[0], 0)  # same weights, same batch
            steppers[precision] = perf_gan.Stepper(task, batches)
        gap = max(
            abs(first["fp32"][k] - first["bf16"][k]) / max(abs(first["fp32"][k]), 1e-8)
            for k in first["fp32"]
        )
        times = C.interleaved(steppers, repeats, warmup=1)
        t32, t16 = C.median(times["fp32"]), C.median(times["bf16"])
        out.append([label, t32, t16, f"{t32 / t16:.2f}x", f"{gap:.1e}"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CycleGAN only")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print(C.machine_line())
    cases = [("CycleGAN 64px/6blk/32", "64"), ("CycleGAN 128px/6blk/64", "128")]
    if not args.quick:
        cases.append(("GAN 128px baseline, batch 16", "gan"))
    headers = [
        "training step",
        "fp32 s",
        "bf16 s",
        "speedup",
        "max relative loss gap, 1st iteration",
    ]
    print("\nrun.precision fp32 vs bf16 (CPU autocast), medians, interleaved:")
    print(C.table(headers, rows(cases, args.repeats)))
    print(C.machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
