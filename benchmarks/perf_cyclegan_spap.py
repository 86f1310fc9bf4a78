"""Goal 2: SPAP CycleGAN iteration vs the plain CycleGAN iteration (CPU, fp32, batch 1).

Builds ``CycleGANTask`` for the plain config and its ``_spap`` twin
(``cyclegan/cityscapes`` vs ``cyclegan/cityscapes_spap`` at 128x128,
``cyclegan/facades`` vs ``cyclegan/facades_spap`` at 256x256), feeds both the same batches
and times full training iterations interleaved. Goal: SPAP <= 1.25x the plain time.

``--breakdown`` adds variants that show what each part costs: the unit in G only, in D only,
and SPAP option changes applied to both units (inner width, fuse-block depth, kernel).

    python benchmarks/perf_cyclegan_spap.py                  # 128 and 256
    python benchmarks/perf_cyclegan_spap.py --quick          # 128 only, 3 repeats
    python benchmarks/perf_cyclegan_spap.py --breakdown --sizes 128
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

import torch

import _common as C
from perf_cyclegan import make_batches, make_task

PAIRS = {
    128: ("cyclegan/cityscapes", "cyclegan/cityscapes_spap"),
    256: ("cyclegan/facades", "cyclegan/facades_spap"),
}

BREAKDOWN: dict[str, dict[str, Any]] = {
    "spap in G only": {"model": {"d_attention_at": []}},
    "spap in D only": {"model": {"g_attention_at": []}},
    "spap inner C/8": {
        "model": {
            "g_attention_options": {"inner_channels": "C/8"},
            "d_attention_options": {"inner_channels": "C/8"},
        }
    },
    "spap fuse_layers=0": {
        "model": {
            "g_attention_options": {"fuse_layers": 0},
            "d_attention_options": {"fuse_layers": 0},
        }
    },
    "spap fuse_kernel=1": {
        "model": {
            "g_attention_options": {"fuse_kernel": 1},
            "d_attention_options": {"fuse_kernel": 1},
        }
    },
}


def _resolve_inner(overrides: dict[str, Any], config: str) -> dict[str, Any]:
    """``inner_channels: "C/k"`` -> an int for the unit's width (4 ngf at the end of G's
    trunk, 4 ndf after D's layer 2: the places the ``_spap`` configs use)."""
    from spap.config import read_yaml

    model_cfg = read_yaml(config).get("model", {})
    width = {
        "g_attention_options": 4 * model_cfg.get("ngf", 64),
        "d_attention_options": 4 * model_cfg.get("ndf", 64),
    }
    model = overrides.get("model", {})
    for key, c in width.items():
        opts = model.get(key)
        if opts and isinstance(opts.get("inner_channels"), str):
            k = int(opts["inner_channels"].split("/")[1])
            opts["inner_channels"] = max(1, c // k)
    return overrides


class Stepper:
    def __init__(self, task: Any, batches: list[dict[str, torch.Tensor]]) -> None:
        self.task, self.batches, self.i = task, batches, 0

    def __call__(self) -> None:
        self.task.train_step(self.batches[self.i % len(self.batches)], self.i)
        self.i += 1


def measure(size: int, repeats: int, breakdown: bool, extra: dict[str, Any]) -> list[list[Any]]:
    plain_cfg, spap_cfg = PAIRS[size]
    variants: dict[str, tuple[str, dict[str, Any]]] = {
        "plain": (plain_cfg, {}),
        "spap (default config)": (spap_cfg, {}),
    }
    if breakdown:
        for name, o in BREAKDOWN.items():
            variants[name] = (spap_cfg, _resolve_inner(copy.deepcopy(o), spap_cfg))
    batches = make_batches(size, 4)
    steppers, flops, params = {}, {}, {}
    for name, (cfg, o) in variants.items():
        torch.manual_seed(0)
        task = make_task(cfg, C.merge_dicts(o, extra), size)
        params[name] = sum(p.numel() for net in task.nets.values() for p in net.parameters())
        steppers[name] = Stepper(task, batches)
        flops[name] = C.count_flops(steppers[name])  # also a warm-up iteration
    times = C.interleaved(steppers, repeats, warmup=0 if size >= 256 else 1)
    t_plain = C.median(times["plain"])
    rows = []
    for name in variants:
        t = C.median(times[name])
        goal = C.verdict(t / t_plain <= 1.25) if name == "spap (default config)" else ""
        rows.append([
            f"{size}px", name, params[name] / 1e6, f"{params[name] / params['plain']:.3f}x",
            flops[name] / 1e9, f"{flops[name] / flops['plain']:.3f}x", t,
            f"{t / t_plain:.3f}x", goal,
        ])  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="128 only, 3 repeats")
    C.add_clock_option(p)
    p.add_argument("--sizes", help="comma-separated subset of 128,256")
    p.add_argument("--repeats", type=int)
    p.add_argument("--breakdown", action="store_true", help="placement / option variants too")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every variant")
    args = p.parse_args(argv)
    C.apply_clock_option(args)
    from spap.config import parse_overrides

    extra = parse_overrides(args.overrides)
    sizes = [int(s) for s in (args.sizes or ("128" if args.quick else "128,256")).split(",")]
    print(C.machine_line())
    rows = []
    for size in sizes:
        repeats = args.repeats or (3 if args.quick or size >= 256 else 5)
        print(f"{size}px: {repeats} timed iterations per variant", file=sys.stderr)
        rows += measure(size, repeats, args.breakdown, extra)
    print("\nGoal 2: SPAP CycleGAN iteration vs plain (medians, interleaved):")
    headers = ["size", "variant", "M params (G+D)", "params vs plain", "GFLOP/iter",
               "FLOPs vs plain", "s/iter", "time vs plain", "<= 1.25x"]  # fmt: skip
    print(C.table(headers, rows))
    print(C.machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
