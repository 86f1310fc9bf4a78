"""Goal 1, the ceiling: how much of the reference CycleGAN iteration is convolution, how
fast those convolutions already run, and what that leaves for any faster iteration.

Part 1 profiles one reference iteration per configuration (``torch.profiler``, CPU) and
splits its time into convolution kernels (forward and backward) and everything else
(instance norm, padding, activations, losses, Adam, Python). Convolution FLOPs are counted
with ``FlopCounterMode`` (a multiply-add = 2). If an iteration keeps the same convolution
arithmetic, its time cannot drop below the convolution time, so

    bound on the speedup = iteration time / convolution time

(reached only if everything else cost nothing). The 2048^3 matmul of the same run is shown
beside the convolutions' GFLOP/s. A second table profiles spap's own iteration (the code
``spap train cyclegan`` runs) with direct kernels only (``run.winograd_min_size=null``,
``run.thin_conv_channels_last=false``), so that its convolution arithmetic is the
reference's, and bounds goal 1's FLOP/s ratio: if every convolution ran at the matmul rate
and everything else stayed, the iteration would take ``conv GFLOP / matmul rate + other``,
and

    bound on the FLOP/s ratio = conv GFLOP / that time / matmul rate

Above the bound only fewer multiplications (Winograd) get.

Part 2 (``--winograd``) is the one means that changes the arithmetic: Winograd 3x3
convolutions, which need fewer multiplications. It times, per convolution shape (the
CycleGAN residual blocks, some GAN layers), the direct kernel (oneDNN, what PyTorch runs)
against NNPACK's Winograd forward and ``spap.layers.winograd``'s F(4x4, 3x3) forward, and
the direct weight gradient against F(3x3, 4x4), interleaved, with F(4x4, 3x3)'s relative
error against float64 and the kernels spap picks for the shape (the input gradient is a
convolution of the same size as the forward and uses the forward's pick); then whole
training steps of spap's tasks (CycleGAN 256 and 128 px, GAN 128 px batch 16) with
``run.winograd_min_size=null`` (direct) vs its default.

    python benchmarks/perf_ceiling.py                # part 1, all three configs
    python benchmarks/perf_ceiling.py --winograd     # part 2 (--quick: no GAN step)
    python benchmarks/perf_ceiling.py --thin         # 7x7 output/input layers: nn.Conv2d vs ThinConv2d
"""

from __future__ import annotations

import argparse
import functools
import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import _common as C
from perf_cyclegan import CONFIGS, make_batches
from reference_cyclegan import RefCycleGAN

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


#: (batch, channels, output side) of the 3x3 convolutions timed by ``--winograd``: the
#: residual blocks of the three CycleGAN configurations (one image; three, as the batched
#: generator forwards run them) and the GAN's wide layers at batch 16.
SHAPES = (
    (1, 256, 64), (3, 256, 32), (2, 256, 32), (1, 256, 32), (3, 128, 32), (3, 128, 16),
    (1, 128, 64), (16, 128, 64), (16, 128, 32), (16, 64, 64), (16, 64, 128),
)  # fmt: skip


def winograd_rows(repeats: int) -> list[list[object]]:
    """Per shape: the output (forward) and the weight gradient by each kernel, and the
    kernels ``spap.layers.winograd`` picks for that shape."""
    from spap.layers import winograd as W

    rows = []
    for n, c, hw in SHAPES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, hw, hw, generator=g)
        w = torch.randn(c, c, 3, 3, generator=g) * 0.02
        go = torch.randn(n, c, hw, hw, generator=g)

        def wgrad_direct(x=x, w=w, go=go):
            return torch.ops.aten.convolution_backward(
                go, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False]
            )[1]

        fns = {
            "direct": lambda x=x, w=w: F.conv2d(x, w, padding=1),
            "f43": lambda x=x, w=w: W._f43_conv(x, w, None, 1),
            "wgrad direct": wgrad_direct,
            "wgrad f43": lambda x=x, go=go: W._f43_weight_grad(x, go, 1),
        }
        if W.available():
            fns["nnpack"] = lambda x=x, w=w: W._nnpack(x, w, None, 1)
        exact = F.conv2d(x.double(), w.double(), padding=1)
        err = ((fns["f43"]().double() - exact).norm() / exact.norm()).item()
        times = {k: C.median(v) for k, v in C.interleaved(fns, repeats, 2, False).items()}
        td, twd = times["direct"], times["wgrad direct"]
        rows.append(
            [
                f"{n}x{c}x{hw}x{hw}",
                td * 1e3,
                2 * n * c * c * 9 * hw * hw / td / 1e9,
                f"{td / times['nnpack']:.2f}x" if "nnpack" in times else "n/a",
                f"{td / times['f43']:.2f}x",
                twd * 1e3,
                f"{twd / times['wgrad f43']:.2f}x",
                f"{err:.0e}",
                W._conv_kernel(c, c, hw),
                W._weight_grad_kernel(c, c, hw),
            ]
        )
    return rows


def thin_rows(repeats: int) -> list[list[object]]:
    """The generator's 7x7 output layer (ngf -> 3) and input layer (3 -> ngf), reflection
    padding, forward + backward (input gradient included: the generators also take fake
    images): ``nn.Conv2d`` vs ``spap.layers.thin_conv.ThinConv2d``."""
    import copy

    from torch import nn

    from spap.layers.thin_conv import use_thin_conv

    rows = []
    for size, _, width, _ in CONFIGS.values():
        for ci, co in ((width, 3), (3, width)):
            for batch in (1, 3):
                torch.manual_seed(0)
                plain = nn.Conv2d(ci, co, 7, padding=3, padding_mode="reflect")
                thin = copy.deepcopy(plain)
                use_thin_conv(thin)
                x = torch.randn(batch, ci, size, size, requires_grad=True)

                def run(m, x=x):
                    return lambda: m(x).sum().backward()

                times = C.interleaved({"plain": run(plain), "thin": run(thin)}, repeats, 2, False)
                tp, tt = C.median(times["plain"]), C.median(times["thin"])
                flops = 3 * 2 * batch * ci * co * 49 * size * size
                rows.append(
                    [f"{ci} -> {co}", f"{batch}x{ci}x{size}x{size}", tp * 1e3, flops / tp / 1e9,
                     tt * 1e3, f"{tp / tt:.2f}x"]
                )  # fmt: skip
    return rows


def step_rows(repeats: int, quick: bool) -> list[list[object]]:
    """Whole training steps of spap's tasks with ``run.winograd_min_size`` null vs its
    default."""
    import perf_cyclegan
    import perf_gan

    rows = []
    cases = [("CycleGAN 256px/9blk/64, batch 1", "256"), ("CycleGAN 128px/6blk/64", "128")]
    if not quick:
        cases.append(("GAN 128px baseline, batch 16", "gan"))
    for label, kind in cases:
        steppers = {}
        for mode in ("direct", "default"):
            torch.manual_seed(0)
            run = {"winograd_min_size": None} if mode == "direct" else {}
            if kind == "gan":
                over = {"train": {"batch_size": 16}, "run": run}
                task = perf_gan.make_task(perf_gan.CONFIGS["baseline"], over)
                batches = perf_gan.make_batches(task.batch_size)
            else:
                size, n_blocks, width, config = CONFIGS[kind]
                model = {"ngf": width, "ndf": width, "n_blocks": n_blocks, "attention": "none"}
                task = perf_cyclegan.make_task(config, {"model": model, "run": run}, size)
                batches = perf_cyclegan.make_batches(size, 2)
            steppers[mode] = perf_gan.Stepper(task, batches)
        times = C.interleaved(steppers, repeats, warmup=1)
        td, tw = C.median(times["direct"]), C.median(times["default"])
        rows.append([label, td, tw, f"{td / tw:.2f}x"])
    return rows


def spap_bound(name: str, repeats: int) -> list[object]:
    """spap's iteration with direct kernels: time outside convolution kernels and the bound
    it sets on goal 1's FLOP/s ratio (see the module docstring)."""
    import perf_cyclegan
    import perf_gan

    size, n_blocks, width, config = CONFIGS[name]
    torch.manual_seed(0)
    model = {"ngf": width, "ndf": width, "n_blocks": n_blocks, "attention": "none"}
    run = {"winograd_min_size": None, "thin_conv_channels_last": False}
    task = perf_cyclegan.make_task(config, {"model": model, "run": run}, size)
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
    p.add_argument("--winograd", action="store_true", help="part 2: Winograd vs direct")
    p.add_argument("--quick", action="store_true", help="part 2 without the GAN step")
    p.add_argument(
        "--thin", action="store_true", help="7x7 output/input layers: nn.Conv2d vs ThinConv2d"
    )
    args = p.parse_args(argv)
    print(C.machine_line())
    if args.thin:
        headers = [
            "layer",
            "input (N x C x H x W)",
            "NCHW ms",
            "NCHW GFLOP/s",
            "ThinConv2d ms",
            "speedup",
        ]
        print("\nGenerator 7x7 output and input layers, forward + backward (medians, interleaved):")
        print(C.table(headers, thin_rows(max(args.repeats, 7))))
    elif args.winograd:
        rows = winograd_rows(max(args.repeats, 7))
        headers = [
            "conv output (N x C x H x W)",
            "direct ms",
            "direct GFLOP/s",
            "NNPACK",
            "F(4x4,3x3)",
            "weight grad direct ms",
            "weight grad F(3x3,4x4)",
            "F(4x4,3x3) error",
            "picked: output, input grad",
            "picked: weight grad",
        ]
        print("\n3x3 convolution (C -> C, padding 1): speedup of each kernel over the direct")
        print("one, forward and weight gradient (medians, interleaved):")
        print(C.table(headers, rows))
        rows = step_rows(args.repeats, args.quick)
        headers = ["training step", "direct s", "Winograd s (default)", "speedup"]
        print(
            "\nWhole training steps, run.winograd_min_size=null vs default (medians, interleaved):"
        )
        print(C.table(headers, rows))
    else:
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
            "spap s/iter, direct kernels (profiled)",
            "convolution s",
            "other s",
            "conv GFLOP/s",
            "matmul GFLOP/s",
            "s/iter if convs ran at the matmul rate",
            "bound on FLOP/s ratio (goal >= 0.85)",
        ]
        print("\nspap's iteration with direct kernels: the bound on goal 1's FLOP/s ratio:")
        print(C.table(headers, rows))
    print(C.machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
