"""``spap push``: upload a trained model to the Hugging Face Hub in the Hugging Face layout."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="upload a model to the Hugging Face Hub",
        description="Write --checkpoint in the Hugging Face layout (config.json, "
        "model.safetensors, README.md model card, sample grids: as spap export --format "
        "huggingface) and upload it to the Hub repository --repo (created if needed) with "
        "huggingface_hub. Needs the hub extra (pip install 'spap[hub]') and a token (HF_TOKEN "
        "or `hf auth login`). Afterwards every --checkpoint accepts hf://USER/NAME.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint file, run folder, export or folder written by spap export --format "
        "huggingface",
    )
    p.add_argument("--repo", required=True, metavar="USER/NAME", help="Hub repository id")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--token", help="Hugging Face token (default: HF_TOKEN or the saved login)")
    p.add_argument(
        "--metrics", help="JSON file of metrics for the model card (default: RUN/metrics.json)"
    )
    p.add_argument(
        "--examples", help="an image or folder the card's sample grid translates (CycleGAN)"
    )
    p.add_argument("--license", default="mit", help="license in the card's metadata (default mit)")
    p.add_argument("--message", help="commit message (default: 'Upload spap model')")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from spap.inference.pretrained import push_to_hub

    save = {
        k: v
        for k, v in {
            "metrics": args.metrics,
            "examples": args.examples,
            "license": args.license if args.license != "mit" else None,
        }.items()
        if v is not None
    }
    url = push_to_hub(
        args.checkpoint,
        args.repo,
        private=args.private,
        token=args.token,
        commit_message=args.message,
        **save,
    )
    print(f"uploaded {args.checkpoint} to https://huggingface.co/{args.repo} ({url})")
    return 0
