"""``spap export``: write a CycleGAN generator as ONNX, TorchScript or safetensors, checked
against the eager model."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a generator (ONNX, TorchScript, safetensors)",
        description="Export one generator of a CycleGAN checkpoint, or a GAN's (EMA) generator, "
        "and check it numerically against the eager model (max abs difference <= 1e-4, "
        "printed). A CycleGAN generator takes (N, C, H, W) in [-1, 1], H and W multiples of 4 "
        "(ONNX: dynamic N, H, W); a GAN generator takes latents (N, z_dim) ~ N(0, 1) (ONNX: "
        "dynamic N).",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="CycleGAN or GAN checkpoint file, or run folder (latest checkpoint)",
    )
    p.add_argument(
        "--format",
        required=True,
        choices=("onnx", "torchscript", "safetensors"),
        help="file format",
    )
    p.add_argument("--output", required=True, help="file to write")
    p.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"), help="default AtoB")
    p.add_argument(
        "--size",
        type=int,
        help="square input size used to trace and check (multiple of 4; default: training crop)",
    )
    p.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from spap.inference.export import export_generator

    result = export_generator(
        args.checkpoint,
        args.format,
        args.output,
        direction=args.direction,
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
