"""Goal 3: GAN training step at 128x128 with SPAP vs the SNGAN baseline (SAGAN beside).

Builds ``GANTask`` (the code ``spap train gan`` runs) for the shipped configs
``gan/celebahq128_{baseline,sagan,spap_c2f,spap_f2c}`` with ``train.batch_size=16`` (and
``train.n_dis`` as configured), feeds each the same random real batches, and times one
full iteration (``n_dis`` D updates + one G update + EMA) interleaved across the configs.
Reported: median s/step, FLOPs per step (FlopCounterMode, multiply-add = 2), and each
step's time as a ratio to the baseline (goal: SPAP <= 1.3x).

    python benchmarks/perf_gan.py              # width 64 as configured (heavy: ~1 min/step)
    python benchmarks/perf_gan.py --quick      # model.g_ch = model.d_ch = 16, fewer repeats
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

import _common as C

CONFIGS = {
    "baseline": "gan/celebahq128_baseline",
    "sagan": "gan/celebahq128_sagan",
    "spap_c2f": "gan/celebahq128_spap_c2f",
    "spap_f2c": "gan/celebahq128_spap_f2c",
}


def make_task(config: str, overrides: dict[str, Any]) -> Any:
    """spap's ``GANTask`` for a shipped config (CPU, one process)."""
    from spap.config import from_dict, merge, read_yaml
    from spap.train.context import RunContext
    from spap.train.distributed import DistInfo
    from spap.train.gan import GANTask

    data = merge(merge(read_yaml(config), {"run": {"device": "cpu"}}), overrides)
    cfg = from_dict(GANTask.config_class, data)
    return GANTask(cfg, RunContext(cfg.run, torch.device("cpu"), DistInfo()))


def make_batches(n: int, count: int = 2, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """``count`` random real batches of ``n`` 128x128 images in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.rand(n, 3, 128, 128, generator=g) * 2 - 1} for _ in range(count)]


class Stepper:
    def __init__(self, task: Any, batches: list[dict[str, torch.Tensor]]) -> None:
        self.task, self.batches, self.i = task, batches, 0

    def __call__(self) -> dict[str, float]:
        out = self.task.train_step(self.batches[self.i % len(self.batches)], self.i)
        self.i += 1
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="width 16 instead of 64, 2 repeats")
    C.add_clock_option(p)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int)
    p.add_argument("--variants", default="baseline,sagan,spap_c2f,spap_f2c")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = p.parse_args(argv)
    C.apply_clock_option(args)
    from spap.config import parse_overrides

    overrides: dict[str, Any] = {"train": {"batch_size": args.batch_size}}
    if args.quick:
        overrides["model"] = {"g_ch": 16, "d_ch": 16}
    overrides = C.merge_dicts(overrides, parse_overrides(args.overrides))
    names = args.variants.split(",")
    repeats = args.repeats or (2 if args.quick else 3)
    print(C.machine_line())
    width = overrides.get("model", {}).get("g_ch", "as configured (64)")
    print(f"batch {args.batch_size}, width {width}, {repeats} timed steps per variant")

    tasks, steppers, flops, params = {}, {}, {}, {}
    for name in names:
        torch.manual_seed(0)
        task = make_task(CONFIGS[name], overrides)
        batches = make_batches(task.batch_size)
        tasks[name] = task
        steppers[name] = Stepper(task, batches)
        params[name] = sum(p.numel() for p in task.G.parameters()) + sum(
            p.numel() for p in task.D.parameters()
        )
        print(
            f"  {name}: n_dis={task.cfg.train.n_dis}, {params[name] / 1e6:.1f} M parameters",
            file=sys.stderr,
        )
    for name in names:
        flops[name] = C.count_flops(steppers[name])  # also a warm-up step
    times = C.interleaved(steppers, repeats, warmup=0)
    t_base = C.median(times[names[0]])
    rows = []
    for name in names:
        t = C.median(times[name])
        ratio = t / t_base
        goal = ""
        if name.startswith("spap"):
            goal = C.verdict(ratio <= 1.3)
        base = names[0]
        rows.append([
            name, params[name] / 1e6, f"{params[name] / params[base]:.3f}x", flops[name] / 1e9,
            f"{flops[name] / flops[base]:.3f}x", t, f"{ratio:.2f}x", goal,
        ])  # fmt: skip
    print(f"\nGoal 3: GAN step at 128x128, batch {args.batch_size} (medians, interleaved):")
    headers = ["config", "M params (G+D)", "params vs baseline", "GFLOP/step",
               "FLOPs vs baseline", "s/step", "time vs baseline", "<= 1.3x"]  # fmt: skip
    print(C.table(headers, rows))
    print(C.machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
