"""Goal 1, the ceiling: how much of the reference CycleGAN iteration is convolution, how
fast those convolutions already run, and what that leaves for any faster iteration.

It profiles one reference iteration per configuration (``torch.profiler``, CPU) and
splits its time into convolution kernels (forward and backward) and everything else
(instance norm, padding, activations, losses, Adam, Python). Convolution FLOPs are counted
with ``FlopCounterMode`` (a multiply-add = 2). If an iteration keeps the same convolution
arithmetic, its time cannot drop below the convolution time, so

    bound on the speedup = iteration time / convolution time

(reached only if everything else cost nothing). The 2048^3 matmul of the same run is shown
beside the convolutions' GFLOP/s. A second table profiles spap's own iteration (the code
``spap train cyclegan`` runs) and bounds goal 1's FLOP/s ratio: if every convolution ran at the matmul rate and everything
else stayed, the iteration would take ``conv GFLOP / matmul rate + other``, and

    bound on the FLOP/s ratio = conv GFLOP / that time / matmul rate

    python benchmarks/perf_ceiling.py                # all three configs
"""

from __future__ import annotations

import argparse
import functools
import itertools
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

import _common as C
from perf_cyclegan import CONFIGS, make_batches
from reference.cyclegan import RefCycleGAN

CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d")


def profiled(step: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Medians over ``repeats`` profiled calls of ``step`` (after two warm-up calls: oneDNN
    primitive caches, allocator): seconds in convolution kernels, seconds in all."""
    step(), step()
    conv_s, total_s = [], []
    for _ in range(repeats):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        events = prof.key_averages()
        conv_s.append(sum(e.self_cpu_time_total for e in events if e.key.startswith(CONV_OPS)))
        total_s.append(sum(e.self_cpu_time_total for e in events))
    return C.median(conv_s) / 1e6, C.median(total_s) / 1e6


@functools.cache
def reference_flops(name: str) -> float:
    """Convolution + matmul FLOPs of one reference iteration of config ``name``."""
    size, n_blocks, width, _ = CONFIGS[name]
    ref = RefCycleGAN(ngf=width, ndf=width, n_blocks=n_blocks)
    return C.count_flops(lambda: ref.train_step(make_batches(size, 1)[0]))


def ceiling(name: str, repeats: int) -> list[object]:
    size, n_blocks, width, _ = CONFIGS[name]
    torch.manual_seed(0)
    ref = RefCycleGAN(ngf=width, ndf=width, n_blocks=n_blocks)
    batches = itertools.cycle(make_batches(size, 2))
    t_conv, t_total = profiled(lambda: ref.train_step(next(batches)), repeats)
    flops = reference_flops(name)
    mm = C.matmul_flops_per_s()
    return [
        f"{size}px/{n_blocks}blk/{width}",
        t_total,
        t_conv,
        f"{t_conv / t_total:.0%}",
        flops / 1e9,
        flops / t_conv / 1e9,
        mm / 1e9,
        f"{t_total / t_conv:.2f}x",
    ]


def spap_bound(name: str, repeats: int) -> list[object]:
    """spap's iteration: time outside convolution kernels and the bound
    it sets on goal 1's FLOP/s ratio (see the module docstring)."""
    import perf_cyclegan
    import perf_gan

    size, n_blocks, width, config = CONFIGS[name]
    torch.manual_seed(0)
    model = {"ngf": width, "ndf": width, "n_blocks": n_blocks, "attention": "none"}
    task = perf_cyclegan.make_task(config, {"model": model}, size)
    t_conv, t_total = profiled(perf_gan.Stepper(task, make_batches(size, 2)), repeats)
    flops = reference_flops(name)
    mm = C.matmul_flops_per_s()
    best = flops / mm + (t_total - t_conv)
    return [
        f"{size}px/{n_blocks}blk/{width}",
        t_total,
        t_conv,
        t_total - t_conv,
        flops / t_conv / 1e9,
        mm / 1e9,
        best,
        f"{flops / best / mm:.2f}",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", default="256,128,64", help="comma-separated subset")
    p.add_argument("--repeats", type=int, default=3, help="profiled iterations per config")
    args = p.parse_args(argv)
    print(C.machine_line())
    rows = [ceiling(name, args.repeats) for name in args.configs.split(",")]
    headers = [
        "config",
        "reference s/iter (profiled)",
        "convolution s",
        "share",
        "conv GFLOP",
        "conv GFLOP/s",
        "matmul GFLOP/s",
        "bound on speedup",
    ]
    print("\nReference iteration: convolution time and the bound it sets (medians):")
    print(C.table(headers, rows))
    rows = [spap_bound(name, args.repeats) for name in args.configs.split(",")]
    headers = [
        "config",
        "spap s/iter (profiled)",
        "convolution s",
        "other s",
        "conv GFLOP/s",
        "matmul GFLOP/s",
        "s/iter if convs ran at the matmul rate",
        "bound on FLOP/s ratio (goal >= 0.85)",
    ]
    print("\nspap's iteration: the bound on goal 1's FLOP/s ratio:")
    print(C.table(headers, rows))
    print(C.machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
