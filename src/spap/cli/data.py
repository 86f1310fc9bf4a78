"""``spap data scenes``: generate the built-in procedural street scenes."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="dataset tools (generate the built-in scenes)",
        description="Dataset tools.",
    )
    data_sub = p.add_subparsers(dest="data_command", metavar="TOOL", required=True)
    s = data_sub.add_parser(
        "scenes",
        help="generate the built-in street scenes (label maps and photos)",
        description="Generate seeded street scenes: Cityscapes-coloured label maps and "
        "matching photos, in the CycleGAN layout (trainA/ trainB/ testA/ testB/, A = labels, "
        "B = photos), the aligned layout (train/ test/, label | photo) and class-id maps "
        "(train_ids/ test_ids/), plus scenes.json.",
    )
    s.add_argument(
        "--out",
        required=True,
        help="output folder (created; must be empty or a "
        "previous scenes output, which is replaced)",
    )
    s.add_argument(
        "--n", type=int, default=1000, help="number of scenes, train + test (default 1000)"
    )
    s.add_argument("--size", type=int, default=64, help="image side, 32..256 (default 64)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="share of the scenes written as the test split (default 0.1)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=scenes_main)


def scenes_main(args: argparse.Namespace) -> int:
    from spap.data.scenes import write_scenes

    start = time.perf_counter()
    meta = write_scenes(
        args.out,
        n=args.n,
        size=args.size,
        seed=args.seed,
        test_fraction=args.test_fraction,
        progress=not args.no_progress,
    )
    print(
        f"wrote {meta['n_train']} train + {meta['n_test']} test scenes "
        f"({args.size}x{args.size}, seed {args.seed}) to {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0
