"""``spap report RUN``: the HTML report of any CycleGAN or GAN run."""

from __future__ import annotations

import argparse
import logging

from spap.cli import add_device_option

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write the HTML report of a training run",
        description="Write RUN/report/index.html (or --out DIR): evaluation curves with the "
        "best step marked, losses, each attention unit's gamma and branch weights, attention "
        "maps with their colour scale, translations in both directions (CycleGAN) or samples "
        "(GAN), and the resolved config. Images are PNG files beside the page; it needs no "
        "network access to view.",
    )
    p.add_argument("run", help="run folder (written by spap train)")
    p.add_argument("--out", help="report folder (default: RUN/report)")
    p.add_argument(
        "--checkpoint",
        choices=("best", "latest"),
        default="best",
        help="which weights show the images: best (default; latest when the run has no best) "
        "or latest",
    )
    p.add_argument("--num", type=int, default=6, help="images per row (default 6)")
    add_device_option(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from spap.apps.report import write_run_report
    from spap.errors import SpapError

    if args.num < 1:
        raise SpapError("--num must be at least 1")
    path = write_run_report(
        args.run, args.out, which=args.checkpoint, num_images=args.num, device=args.device
    )
    print(path)
    return 0
