"""``spap export``: write a CycleGAN generator as ONNX, TorchScript or safetensors, checked
against the eager model."""

from __future__ import annotations

import argparse
from typing import Any

from spap.cli.translate import add_model_argument, model_settings, pick_direction


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a generator (ONNX, TorchScript, safetensors, Hugging Face folder)",
        description="Export one generator of a CycleGAN checkpoint, or a GAN's (EMA) generator, "
        "and check it numerically against the eager model (max abs difference <= 1e-4, "
        "printed); --format huggingface writes every generator into a folder instead. A CycleGAN generator takes (N, C, H, W) in [-1, 1], H and W multiples of 4 "
        "(ONNX: dynamic N, H, W); a GAN generator takes latents (N, z_dim) ~ N(0, 1) (ONNX: "
        "dynamic N).",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="CycleGAN or GAN checkpoint file, run folder (latest checkpoint), export, "
        "Hugging Face folder / hf://USER/NAME, or a reference CycleGAN generator file (latest_net_G_A.pth: its architecture is read from the "
        "weights; a *G_B.pth file translates BtoA)",
    )
    p.add_argument(
        "--format",
        required=True,
        choices=("onnx", "torchscript", "safetensors", "huggingface"),
        help="file format; huggingface: a folder (config.json, model.safetensors, README.md "
        "model card, sample grids) with every generator, which --checkpoint accepts",
    )
    p.add_argument(
        "--output", required=True, help="file to write (a folder for --format huggingface)"
    )
    p.add_argument(
        "--direction",
        choices=("AtoB", "BtoA"),
        help="default AtoB, or the one direction of a file holding one generator",
    )
    add_model_argument(p)
    p.add_argument(
        "--size",
        type=int,
        help="square input size used to trace and check (multiple of 4; default: training crop)",
    )
    p.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from spap.inference.export import export_generator
    from spap.inference.loading import load_generators
    from spap.inference.sample import Sampler
    from spap.inference.translate import Translator

    loaded = load_generators(args.checkpoint, model=model_settings(args.model))
    if loaded.kind == "gan":
        model: Any = Sampler(
            loaded.generators["G"],
            "cpu",
            step=int(loaded.info.get("step", 0)),
            ema=bool(loaded.info.get("ema", True)),
            source=loaded.source,
            info=loaded.info,
        )
        direction = args.direction or "AtoB"
    else:
        model = Translator(loaded.generators, "cpu", info=loaded.info, source=loaded.source)
        direction = pick_direction(args.direction, model.generators)
    if args.format == "huggingface":
        from spap.inference.pretrained import save_pretrained

        saved = save_pretrained(loaded, args.output)
        print(
            f"wrote {saved.path} (huggingface: {', '.join(saved.files)}; generators "
            f"{', '.join(saved.generators)}); max abs diff of the reloaded folder: "
            f"{saved.max_abs_diff:.3g}"
        )
        return 0
    result = export_generator(
        model,
        args.format,
        args.output,
        direction=direction,
        size=args.size,
        opset=args.opset,
    )
    shapes = ", ".join("x".join(map(str, s)) for s in result.checked_shapes)
    note = "" if result.dynamic else " (fixed input shape)"
    print(
        f"wrote {result.path} ({result.format}, {result.direction}){note}; "
        f"max abs diff vs eager: {result.max_abs_diff:.3g} on inputs {shapes}"
    )
    return 0
