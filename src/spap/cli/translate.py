"""``spap translate``: translate an image or a folder of images with a trained CycleGAN."""

from __future__ import annotations

import argparse
import logging

from spap.errors import SpapError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "translate",
        help="translate images with a trained CycleGAN",
        description="Translate every image of --input (a file, or a folder searched "
        "recursively) and write OUTPUT/<same relative path>.png. Any image size: images are "
        "padded to a multiple of 4 and cropped back. AtoB goes from the run's domain A "
        "(trainA, or the left half of aligned images) to domain B.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="CycleGAN checkpoint file, run folder (latest checkpoint) or exported .safetensors",
    )
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"), help="default AtoB")
    p.add_argument(
        "--attention",
        action="store_true",
        help="also write OUTPUT/attention/<name>_<unit>.png: each attention map as a coloured "
        "overlay on the input image",
    )
    p.add_argument(
        "--input-half",
        choices=("A", "B"),
        help="the inputs are aligned A|B images: translate their left (A) or right (B) half",
    )
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="image-decoding worker processes (default: 0 on the CPU, where a background "
        "thread decodes ahead of the generator; 2 on CUDA)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from spap.inference.translate import Translator

    if args.batch_size < 1:
        raise SpapError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        raise SpapError(f"--workers must be at least 0, got {args.workers}")
    translator = Translator.from_checkpoint(args.checkpoint, device=args.device)
    has_units = any(len(getattr(g, "attention", ())) for g in translator.generators.values())
    if args.attention and not has_units:
        log.warning("--attention: this model has no attention units; writing translations only")
    result = translator.translate_folder(
        args.input,
        args.output,
        direction=args.direction,
        batch_size=args.batch_size,
        attention=args.attention,
        num_workers=args.workers,
        progress=True,
        half=args.input_half,
    )
    msg = f"translated {result.written} image(s) {args.direction} into {result.output}"
    if result.attention_written:
        msg += f" (+{result.attention_written} attention overlays)"
    if result.skipped:
        msg += f"; skipped {len(result.skipped)} unreadable file(s)"
    print(msg)
    return 0 if result.written else 1
