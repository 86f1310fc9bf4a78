"""``spap translate``: translate an image or a folder of images with a trained CycleGAN."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from typing import Any

from spap.cli import add_device_option, add_runtime_option
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
        help="CycleGAN checkpoint file, run folder (latest checkpoint), exported .safetensors, "
        "a Hugging Face folder (spap export --format huggingface) / hf://USER/NAME, or a "
        "reference CycleGAN generator file (latest_net_G_A.pth: its architecture is read "
        "from the weights; a *G_B.pth file translates BtoA)",
    )
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument(
        "--direction",
        choices=("AtoB", "BtoA"),
        help="default AtoB, or the one direction of a file holding one generator",
    )
    add_model_argument(p)
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
    p.add_argument(
        "--bit-depth",
        type=int,
        default=8,
        choices=(8, 16),
        help="bits per channel of the written images (default 8; 16: 16-bit PNGs, grayscale "
        "for one-channel models)",
    )
    p.add_argument(
        "--value-range",
        metavar="LO,HI",
        help="input pixel values mapped to -1 and 1, as the training run's data.value_range "
        "(default: the checkpoint's, else auto: 0..255 / 0..65535 / 0..1 by the file)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="image-decoding worker processes (default: 0 on the CPU, where a background "
        "thread decodes ahead of the generator; 2 on CUDA)",
    )
    p.add_argument(
        "--tile",
        type=int,
        metavar="N",
        help="translate each image in tiles of N pixels (a multiple of 4), in bounded memory "
        "and without seams: normalisation statistics cover the whole image, tiles are "
        "blended (docs/deploy.md)",
    )
    p.add_argument(
        "--overlap",
        default="auto",
        metavar="M",
        help="with --tile: context pixels on each side of a tile (a multiple of 4); auto "
        "(default) is the smallest that makes the output equal the whole-image translation",
    )
    p.add_argument(
        "--tile-stats",
        choices=("exact", "downscaled"),
        default="exact",
        help="with --tile: normalisation statistics from passes over all tiles (exact, "
        "default) or from one pass over a copy scaled to 1024 px (faster, approximate)",
    )
    add_device_option(p)
    add_runtime_option(p)
    p.set_defaults(func=main)


def add_model_argument(p: argparse.ArgumentParser) -> None:
    """``--model KEY=VALUE ...``: model settings of a reference generator file."""
    p.add_argument(
        "--model",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="model settings of a reference CycleGAN generator file (model.* keys of a "
        "CycleGAN config, e.g. n_blocks=9 norm=instance): the architecture is read from the "
        "weights and a setting it contradicts fails, naming it; other keys default to the "
        "reference's (reflection padding, no attention units)",
    )


def model_settings(pairs: list[str]) -> dict[str, Any]:
    """``--model`` words -> model-section keys (a ``model.`` prefix is optional)."""
    from spap.config import parse_overrides

    return parse_overrides([p[len("model.") :] if p.startswith("model.") else p for p in pairs])


def load_translator(checkpoint: str, model: list[str], device: str, runtime: str = "torch") -> Any:
    """The :class:`~spap.inference.translate.Translator` of ``--checkpoint`` (``--model``
    settings for a reference generator file), running its generators by ``runtime``."""
    from spap.inference.loading import load_generators
    from spap.inference.translate import Translator

    loaded = load_generators(checkpoint, kind="cyclegan", model=model_settings(model))
    return Translator(
        loaded.generators, device, info=loaded.info, source=loaded.source, runtime=runtime
    )


def pick_direction(direction: str | None, generators: Mapping[str, Any]) -> str:
    """``--direction``, else AtoB, else the one direction a single-generator file has."""
    if direction is not None:
        return direction
    return "AtoB" if "AtoB" in generators or len(generators) != 1 else next(iter(generators))


def main(args: argparse.Namespace) -> int:
    from spap.cli import check_output_folder

    check_output_folder(args.output)
    if args.batch_size < 1:
        raise SpapError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        raise SpapError(f"--workers must be at least 0, got {args.workers}")
    value_range = _value_range(args.value_range)
    overlap = _overlap(args.overlap)
    if args.tile is not None and (args.tile < 8 or args.tile % 4):
        raise SpapError(f"--tile must be a multiple of 4 and at least 8, got {args.tile}")
    if args.tile is not None and args.attention:
        raise SpapError("--attention overlays are not written with --tile; drop one of them")
    translator = load_translator(args.checkpoint, args.model, args.device, args.runtime)
    direction = pick_direction(args.direction, translator.generators)
    has_units = any(len(getattr(g, "attention", ())) for g in translator.generators.values())
    if args.attention and not has_units:
        log.warning("--attention: this model has no attention units; writing translations only")
    result = translator.translate_folder(
        args.input,
        args.output,
        direction=direction,
        batch_size=args.batch_size,
        attention=args.attention,
        num_workers=args.workers,
        progress=True,
        half=args.input_half,
        bit_depth=args.bit_depth,
        value_range=value_range,
        tile=args.tile,
        overlap=overlap,
        tile_stats=args.tile_stats,
    )
    msg = f"translated {result.written} image(s) {direction} into {result.output}"
    if result.attention_written:
        msg += f" (+{result.attention_written} attention overlays)"
    if result.skipped:
        msg += f"; skipped {len(result.skipped)} unreadable file(s)"
    print(msg)
    return 0 if result.written else 1


def _overlap(text: str) -> int | str:
    """``--overlap``: auto or a non-negative multiple of 4."""
    if text.strip() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0 or value % 4:
        raise SpapError(f"--overlap must be auto or a non-negative multiple of 4, got {text!r}")
    return value


def _value_range(text: str | None) -> object:
    """``--value-range``: None, ``auto`` or ``LO,HI`` -> None, "auto" or [lo, hi]."""
    if text is None or text.strip() == "auto":
        return None if text is None else "auto"
    parts = text.replace("[", "").replace("]", "").split(",")
    try:
        lo, hi = (float(v) for v in parts)
    except ValueError:
        raise SpapError(
            f"--value-range must be auto or LO,HI (e.g. 0,4095), got {text!r}"
        ) from None
    if not lo < hi:
        raise SpapError(f"--value-range: LO must be below HI, got {text!r}")
    return [lo, hi]
