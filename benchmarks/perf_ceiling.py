"""Goal 1, the ceiling: how much of the reference CycleGAN iteration is convolution, how
fast those convolutions already run, and what that leaves for any faster iteration.

Part 1 profiles one reference iteration per configuration (``torch.profiler``, CPU) and
splits its time into convolution kernels (forward and backward) and everything else
(instance norm, padding, activations, losses, Adam, Python). Convolution FLOPs are counted
with ``FlopCounterMode`` (a multiply-add = 2). If an iteration keeps the same convolution
arithmetic, its time cannot drop below the convolution time, so

    bound on the speedup = iteration time / convolution time

(reached only if everything else cost nothing). The 2048^3 matmul of the same run is shown
beside the convolutions' GFLOP/s.

Part 2 (``--winograd``) is the one means that changes the arithmetic: Winograd 3x3
convolutions, which need fewer multiplications. It times, per residual-block shape of the
three configurations, the direct convolution (oneDNN, what PyTorch runs) against NNPACK's
Winograd kernel for the forward and the input gradient (the weight gradient stays direct),
forward + backward, interleaved, with the relative error of each against float64 (the
kernel is ``spap.layers.winograd``'s, which training uses); then whole training steps of
spap's tasks (CycleGAN 256 px, GAN 128 px batch 16) with ``run.winograd_min_size=null``
(direct) vs its default 64.

    python benchmarks/perf_ceiling.py                # part 1, all three configs
    python benchmarks/perf_ceiling.py --winograd     # part 2 (--quick: no GAN step)
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import _common as C
from perf_cyclegan import CONFIGS, make_batches
from reference_cyclegan import RefCycleGAN

CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d")


def ceiling(name: str, repeats: int) -> list[object]:
    size, n_blocks, width, _ = CONFIGS[name]
    torch.manual_seed(0)
    ref = RefCycleGAN(ngf=width, ndf=width, n_blocks=n_blocks)
    batches = make_batches(size, 2)
    for b in batches:  # warm-up (oneDNN primitive caches, allocator)
        ref.train_step(b)
    conv_s, total_s = [], []
    for i in range(repeats):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            ref.train_step(batches[i % 2])
        events = prof.key_averages()
        conv = sum(e.self_cpu_time_total for e in events if e.key.startswith(CONV_OPS))
        total = sum(e.self_cpu_time_total for e in events)
        conv_s.append(conv / 1e6)
        total_s.append(total / 1e6)
    flops = C.count_flops(lambda: ref.train_step(batches[0]))
    t_conv, t_total = C.median(conv_s), C.median(total_s)
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


def winograd_rows(repeats: int) -> list[list[object]]:
    from spap.layers.winograd import available, winograd_conv3x3

    if not available():
        print("NNPACK is not available in this torch build", file=sys.stderr)
        return []
    rows = []
    seen = set()
    for name, (size, _, width, _) in CONFIGS.items():
        hw = size // 4  # the residual blocks' feature maps
        for batch in (1, 3):  # one image; three (the batched generator forwards)
            c = width * 4
            if (batch, c, hw) in seen:
                continue
            seen.add((batch, c, hw))
            g = torch.Generator().manual_seed(0)
            x = torch.randn(batch, c, hw + 2, hw + 2, generator=g).requires_grad_()
            w = (torch.randn(c, c, 3, 3, generator=g) * 0.02).requires_grad_()
            b = torch.zeros(c, requires_grad=True)
            go = torch.randn(batch, c, hw, hw, generator=g)
            x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
            exact = torch.autograd.grad(F.conv2d(x64, w64), (x64, w64), go.double())
            errors = {}
            for label, fn in (("direct", F.conv2d), ("winograd", winograd_conv3x3)):
                out = fn(x, w, b)
                grads = torch.autograd.grad(out, (x, w), go)
                errors[label] = max(
                    ((a.double() - e).norm() / e.norm()).item() for a, e in zip(grads, exact)
                )

            def run(fn, x=x, w=w, b=b, go=go):
                return lambda: fn(x, w, b).backward(go)

            times = C.interleaved(
                {"direct": run(F.conv2d), "winograd": run(winograd_conv3x3)},
                repeats,
                warmup=2,
                progress=False,
            )
            flops = 3 * 2 * batch * c * c * 9 * hw * hw
            td, tw = C.median(times["direct"]), C.median(times["winograd"])
            rows.append(
                [
                    f"{name}px config",
                    f"{batch}x{c}x{hw}x{hw}",
                    td * 1e3,
                    flops / td / 1e9,
                    tw * 1e3,
                    f"{td / tw:.2f}x",
                    f"{errors['direct']:.0e}",
                    f"{errors['winograd']:.0e}",
                ]
            )
    return rows


def step_rows(repeats: int, quick: bool) -> list[list[object]]:
    """Whole training steps of spap's tasks with ``run.winograd_min_size`` 64 vs null."""
    import perf_cyclegan
    import perf_gan

    rows = []
    size, n_blocks, width, config = CONFIGS["256"]
    model = {"ngf": width, "ndf": width, "n_blocks": n_blocks, "attention": "none"}
    cases = [("CycleGAN 256px/9blk/64, batch 1", "cyclegan", size)]
    if not quick:
        cases.append(("GAN 128px baseline, batch 16", "gan", 128))
    for label, kind, size in cases:
        steppers = {}
        for mode in (None, 64):
            torch.manual_seed(0)
            if kind == "cyclegan":
                over = {"model": model, "run": {"winograd_min_size": mode}}
                task = perf_cyclegan.make_task(config, over, size)
                batches = perf_cyclegan.make_batches(size, 2)
            else:
                over = {"train": {"batch_size": 16}, "run": {"winograd_min_size": mode}}
                task = perf_gan.make_task(perf_gan.CONFIGS["baseline"], over)
                batches = perf_gan.make_batches(task.batch_size)
            steppers["direct" if mode is None else "winograd"] = perf_gan.Stepper(task, batches)
        times = C.interleaved(steppers, repeats, warmup=1)
        td, tw = C.median(times["direct"]), C.median(times["winograd"])
        rows.append([label, td, tw, f"{td / tw:.2f}x"])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", default="256,128,64", help="comma-separated subset")
    p.add_argument("--repeats", type=int, default=3, help="profiled iterations per config")
    p.add_argument("--winograd", action="store_true", help="part 2: Winograd vs direct")
    p.add_argument("--quick", action="store_true", help="part 2 without the GAN step")
    args = p.parse_args(argv)
    print(C.machine_line())
    if args.winograd:
        rows = winograd_rows(max(args.repeats, 7))
        headers = [
            "config",
            "conv input (N x C x H x W)",
            "direct ms",
            "direct GFLOP/s",
            "Winograd ms",
            "speedup",
            "direct error",
            "Winograd error",
        ]
        print("\nResidual-block 3x3 convolution, forward + backward (medians, interleaved):")
        print(C.table(headers, rows))
        rows = step_rows(args.repeats, args.quick)
        headers = ["training step", "direct s", "Winograd s (default)", "speedup"]
        print("\nWhole training steps, run.winograd_min_size=null vs 64 (medians, interleaved):")
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
    print(C.machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
