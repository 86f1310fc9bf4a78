"""``spap app``: a local web demo of a trained model (Gradio), or a Hugging Face Space folder."""

from __future__ import annotations

import argparse

from spap.cli import add_device_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="web demo of a model (Gradio), or write a Hugging Face Space for it",
        description="Serve a web page for --checkpoint: upload an image and choose the direction "
        "(CycleGAN) or choose a seed (GAN), see the result and the attention maps of each unit "
        "with its gamma, download the output. With --space DIR, write a ready Hugging Face "
        "Space folder (app.py, pinned requirements.txt, README.md front matter, the model, "
        "the spap package) instead. Needs the app extra: pip install 'spap[app]'.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint file, run folder, export, or Hugging Face folder / hf://USER/NAME",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    add_device_option(p)
    p.add_argument("--space", metavar="DIR", help="write a Hugging Face Space folder and exit")
    p.add_argument("--title", help="page title (default: spap <checkpoint name>)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from spap.errors import SpapError

    if not 0 <= args.port <= 65535:
        raise SpapError(f"--port must be 0..65535, got {args.port}")
    if args.space:
        from spap.apps.app import write_space

        out = write_space(args.checkpoint, args.space, title=args.title)
        print(f"wrote the Space {out} (app.py, requirements.txt, README.md, model/, spap/)")
        return 0
    from spap.apps.app import launch

    launch(args.checkpoint, host=args.host, port=args.port, device=args.device, title=args.title)
    return 0
