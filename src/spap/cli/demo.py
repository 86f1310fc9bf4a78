"""``spap demo``: built-in scenes -> SPAP CycleGAN -> scores -> HTML report."""

from __future__ import annotations

import argparse

from spap.cli import add_device_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="end-to-end demo: train a SPAP CycleGAN on the built-in scenes and write a report",
        description="Generate the built-in street scenes, train a CycleGAN with SPAP units for "
        "about --minutes, score photo->labels and labels->photo on the test split, and write "
        "OUT/report/index.html (translations, reconstructions, attention maps, loss curves, "
        "metric table) and OUT/report/metrics.json. Running it again into the same --out "
        "replaces the earlier demo.",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=5.0,
        help="time budget of the whole demo in minutes (default 5; tiny budgets still run a "
        "few iterations of everything)",
    )
    p.add_argument("--size", type=int, default=64, help="image size (32..256, multiple of 4)")
    p.add_argument("--out", default="spap-demo", help="output folder (default ./spap-demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed of data and training")
    add_device_option(p)
    p.add_argument(
        "--threads",
        type=int,
        help="PyTorch CPU threads (default: PyTorch's choice, or 1 when the machine is busy)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from spap.apps.demo import run_demo

    run_demo(
        args.out,
        minutes=args.minutes,
        size=args.size,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
    )
    return 0
