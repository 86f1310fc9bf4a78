"""``spap sample``: write N images of a trained GAN (resumable), a grid, attention overlays."""

from __future__ import annotations

import argparse
import logging

from spap.cli import add_device_option, add_runtime_option
from spap.errors import SpapError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="write images sampled from a trained GAN",
        description="Write NUM images 000000.png, 000001.png ... sampled from a GAN checkpoint "
        "(EMA generator weights by default). Image i depends only on (--seed, i): running the "
        "command again on the same folder keeps the finished files and writes the missing ones.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="GAN checkpoint file, run folder (latest checkpoint), exported .safetensors, or "
        "a Hugging Face folder (spap export --format huggingface) / hf://USER/NAME",
    )
    p.add_argument("--num", type=int, required=True, help="number of images")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument(
        "--grid", action="store_true", help="also write grid.png of the first (up to 64) images"
    )
    p.add_argument(
        "--attention",
        action="store_true",
        help="also write attention/NNNNNN.png: the sample and an overlay of each SPAP/SAGAN map",
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument(
        "--batch-size", type=int, default=16, help="images per forward pass (default 16)"
    )
    p.add_argument(
        "--no-ema", action="store_true", help="use the raw generator instead of its weight average"
    )
    add_device_option(p)
    add_runtime_option(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from spap.cli import check_output_folder
    from spap.inference.sample import Sampler

    check_output_folder(args.output)
    if args.num < 1:
        raise SpapError(f"--num must be at least 1, got {args.num}")
    if args.batch_size < 1:
        raise SpapError(f"--batch-size must be at least 1, got {args.batch_size}")
    sampler = Sampler.from_checkpoint(
        args.checkpoint, device=args.device, ema=not args.no_ema, runtime=args.runtime
    )
    with tqdm(total=args.num, desc="sample", unit="img", dynamic_ncols=True) as bar:
        summary = sampler.write(
            args.output,
            num=args.num,
            seed=args.seed,
            batch_size=args.batch_size,
            grid=args.grid,
            attention=args.attention,
            progress=bar.update,
        )
    log.info(
        "%d images in %s (%d new, %d already there), step %d %s weights",
        args.num,
        summary["dir"],
        summary["written"],
        summary["kept"],
        sampler.step,
        "EMA" if sampler.ema else "raw",
    )
    return 0
