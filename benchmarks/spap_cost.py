"""Cost of SPAP variants vs a ResNet block and SAGAN self-attention (CPU).

Prints, for every width C and map size, each unit's parameters, forward FLOPs (counted
with ``torch.utils.flop_counter.FlopCounterMode``; a multiply-add counts 2) and the median
CPU time of one forward + backward pass at batch 1, plus both as a ratio to one ResNet block
(conv3x3-norm-ReLU-conv3x3-norm + skip) of the same width and norm.

    python benchmarks/spap_cost.py            # full table (C = 64, 128, 256; 32x32, 64x64)
    python benchmarks/spap_cost.py --quick    # C = 64, 32x32, fewer repeats
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spap.layers import SPAP, LayerFactory, SelfAttention


class ResnetBlock(nn.Module):
    """The reference: two 3x3 convs of the same width with a skip connection."""

    def __init__(self, channels: int, factory: LayerFactory) -> None:
        super().__init__()
        self.body = nn.Sequential(
            factory.conv_block(channels, channels, 3),
            factory.conv(channels, channels, 3, bias=not factory.has_norm),
            factory.norm_layer(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def variants(factory: LayerFactory, quick: bool) -> dict[str, Callable[[int], nn.Module]]:
    """Name -> builder(channels) of every unit in the table (the first is the reference)."""
    table: dict[str, Callable[[int], nn.Module]] = {
        "resnet block": lambda c: ResnetBlock(c, factory),
        "sagan": lambda c: SelfAttention(c, spectral_norm=factory.spectral_norm),
        "spap default (c2f)": lambda c: SPAP(c, **factory.layer_kwargs()),
        "spap f2c": lambda c: SPAP(c, order="fine_to_coarse", **factory.layer_kwargs()),
        "spap channel": lambda c: SPAP(c, attention="channel", **factory.layer_kwargs()),
        "spap both": lambda c: SPAP(c, attention="both", **factory.layer_kwargs()),
        "spap sigmoid": lambda c: SPAP(c, normalizer="sigmoid", **factory.layer_kwargs()),
    }
    if not quick:
        table.update(
            {
                "spap rates 1,2,4,8": lambda c: SPAP(
                    c, rates=(1, 2, 4, 8), **factory.layer_kwargs()
                ),
                "spap rates 0,1,2,3,4": lambda c: SPAP(
                    c, rates=(0, 1, 2, 3, 4), **factory.layer_kwargs()
                ),
                "spap inner C/2": lambda c: SPAP(
                    c, inner_channels=c // 2, **factory.layer_kwargs()
                ),
                "spap inner C/8": lambda c: SPAP(
                    c, inner_channels=max(1, c // 8), **factory.layer_kwargs()
                ),
                "spap fuse k=1": lambda c: SPAP(c, fuse_kernel=1, **factory.layer_kwargs()),
                "spap fuse 2 layers": lambda c: SPAP(c, fuse_layers=2, **factory.layer_kwargs()),
                "spap fuse 0 layers": lambda c: SPAP(c, fuse_layers=0, **factory.layer_kwargs()),
            }
        )
    return table


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def fwd_bwd_pass(model: nn.Module, x: torch.Tensor) -> float:
    """Wall time of one ``model(x).sum().backward()``."""
    model.zero_grad(set_to_none=True)
    x.grad = None
    start = time.perf_counter()
    model(x).sum().backward()
    return time.perf_counter() - start


def run(
    widths: list[int], sizes: list[int], repeats: int, quick: bool, factory: LayerFactory
) -> list[dict[str, object]]:
    """Print and return one row per (width, size, unit).

    The passes of all units of one (width, size) are interleaved (one pass of each unit per
    round, ``repeats`` rounds, 2 warm-up rounds), so load changes on a shared machine hit
    every unit alike; each unit's time is its median.
    """
    rows = []
    for c in widths:
        for s in sizes:
            x = torch.randn(1, c, s, s, requires_grad=True)
            models = {}
            for name, build in variants(factory, quick).items():
                torch.manual_seed(0)
                model = build(c).train()
                if hasattr(model, "gamma"):
                    with torch.no_grad():
                        model.gamma.fill_(0.5)  # the full graph, as in training
                models[name] = model
            times: dict[str, list[float]] = {name: [] for name in models}
            for round_ in range(repeats + 2):
                for name, model in models.items():
                    seconds = fwd_bwd_pass(model, x)
                    if round_ >= 2:
                        times[name].append(seconds)
            ref = next(iter(models))
            ref_flops = forward_flops(models[ref], x.detach())
            ref_time = statistics.median(times[ref])
            for name, model in models.items():
                flops = forward_flops(model, x.detach())
                seconds = statistics.median(times[name])
                row = {
                    "C": c,
                    "map": f"{s}x{s}",
                    "unit": name,
                    "params": sum(p.numel() for p in model.parameters()),
                    "GFLOPs": flops / 1e9,
                    "ms": seconds * 1e3,
                    "flops_ratio": flops / ref_flops,
                    "time_ratio": seconds / ref_time,
                }
                rows.append(row)
                print(
                    f"| {c:>4} | {row['map']:>5} | {name:<22} | {row['params']:>9,} | "
                    f"{row['GFLOPs']:>6.3f} | {row['ms']:>10.1f} | {row['flops_ratio']:>7.2f} | "
                    f"{row['time_ratio']:>6.2f} |",
                    flush=True,
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="C=64, 32x32, fewer variants")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=9, help="timed passes per unit")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--norm", default="batch", help="norm of every unit's factory")
    parser.add_argument("--sn", action="store_true", help="spectral norm in every unit")
    args = parser.parse_args(argv)
    if args.quick:
        args.widths, args.sizes, args.repeats = [64], [32], 7
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch 1, norm={args.norm}, "
        f"spectral_norm={args.sn}, "
        f"median of {args.repeats} forward+backward passes; ratios vs the ResNet block\n"
    )
    print(
        "|    C |   map | unit                   |    params | GFLOPs | fwd+bwd ms | FLOPs x | time x |"
    )
    print(
        "|-----:|------:|:-----------------------|----------:|-------:|-----------:|--------:|-------:|"
    )
    run(args.widths, args.sizes, args.repeats, args.quick, LayerFactory(args.norm, args.sn))


if __name__ == "__main__":
    main()
