"""``spap data``: get the paper's datasets, prepare Cityscapes, generate the built-in scenes."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="datasets: download the paper's, prepare Cityscapes, generate the built-in scenes",
        description="Dataset tools.",
    )
    data_sub = p.add_subparsers(dest="data_command", metavar="TOOL", required=True)

    g = data_sub.add_parser(
        "get",
        help="download and unpack public datasets (facades, maps, horse2zebra, ...)",
        description="Download the public archives the reference CycleGAN / pix2pix scripts "
        "use and unpack each into OUT/<name>/: facades and maps as pix2pix's aligned A|B "
        "images (train/ val/ test/; --source cyclegan for the unaligned zip), the other "
        "CycleGAN sets unaligned (trainA/ trainB/ testA/ testB/). Downloads resume after a "
        "cut connection or a new run (OUT/<archive>.part); each archive is verified complete "
        "before anything is unpacked, and refused whole if a member would land outside "
        "OUT/<name>/. Cityscapes needs a registration: `get cityscapes` says how, and "
        "`spap data prepare cityscapes` converts the official download.",
    )
    g.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help="facades, maps, horse2zebra, cityscapes, or another set of the reference scripts "
        "(apple2orange, summer2winter_yosemite, monet2photo, cezanne2photo, ukiyoe2photo, "
        "vangogh2photo, iphone2dslr_flower, ae_photos, night2day, edges2handbags, edges2shoes)",
    )
    g.add_argument("--out", required=True, help="folder that receives OUT/<name>/ (created)")
    g.add_argument(
        "--from",
        dest="archive",
        metavar="FILE",
        help="an archive downloaded elsewhere (one NAME): verified and unpacked, not deleted",
    )
    g.add_argument(
        "--source",
        choices=("pix2pix", "cyclegan"),
        help="facades / maps: pix2pix's aligned tarball (default) or the CycleGAN zip",
    )
    g.add_argument("--url", help="download from this address instead (a mirror; one NAME)")
    g.add_argument("--keep-archive", action="store_true", help="keep the archive after unpacking")
    g.add_argument("--retries", type=int, default=5, help="retries of a cut connection (default 5)")
    g.add_argument(
        "--timeout", type=float, default=60.0, help="network timeout in seconds (default 60)"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=get_main)

    pr = data_sub.add_parser(
        "prepare",
        help="convert a registered download (Cityscapes) into the layouts spap trains on",
        description="Convert the official Cityscapes folders (leftImg8bit/ and gtFine/, "
        "unzipped from leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip) into the "
        "aligned layout (train/ test/: photo | label colours, as the reference's "
        "prepare_cityscapes_dataset.py, val written as test), the unaligned layout "
        "(trainA/ = photos, trainB/ = label colours, testA/ testB/) and train-id maps "
        "(train_ids/ test_ids/) for `spap seg train` and `spap eval fcn --labels-domain B`.",
    )
    pr.add_argument("dataset", choices=("cityscapes",), help="cityscapes")
    pr.add_argument(
        "--from", dest="source", required=True, help="folder holding leftImg8bit/ and gtFine/"
    )
    pr.add_argument("--out", required=True, help="output folder (created)")
    pr.add_argument(
        "--size",
        type=int,
        default=128,
        help="side of the written images (default 128, the CycleGAN paper's Cityscapes "
        "size; 256: the reference script's / pix2pix's)",
    )
    pr.add_argument(
        "--label-filter",
        choices=("nearest", "bicubic"),
        default="nearest",
        help="resize filter of the label colours: nearest (default: exact class colours) or "
        "bicubic (the reference script's)",
    )
    pr.add_argument("--max-images", type=int, help="convert only the first N images per split")
    pr.add_argument(
        "--workers", type=int, default=0, help="parallel processes (default 0: in one process)"
    )
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.set_defaults(func=prepare_main)

    s = data_sub.add_parser(
        "scenes",
        help="generate the built-in street scenes (label maps and photos)",
        description="Generate seeded street scenes: Cityscapes-coloured label maps and "
        "matching photos, in the CycleGAN layout (trainA/ trainB/ testA/ testB/, A = labels, "
        "B = photos; valA/ valB/ the held-out validation split), the aligned layout (train/ "
        "val/ test/, label | photo) and class-id maps (train_ids/ val_ids/ test_ids/), plus "
        "scenes.json.",
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
    s.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="validation scenes written on top of the n (valA/ valB/ val/ val_ids/, from "
        "their own seeds), as a share of n; 0: none (default 0.1)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=scenes_main)


def get_main(args: argparse.Namespace) -> int:
    from spap.cli import check_output_folder, progress_bar
    from spap.data.download import get_dataset, resolve
    from spap.errors import SpapError

    check_output_folder(args.out, "--out")
    if (args.archive or args.url) and len(args.names) > 1:
        raise SpapError("--from and --url take one dataset NAME")
    if args.retries < 0:
        raise SpapError(f"--retries must be at least 0, got {args.retries}")
    for name in args.names:  # every name checked before anything is downloaded
        resolve(name, args.source if name in ("facades", "maps") else None, args.url)
    for name in dict.fromkeys(args.names):
        with progress_bar(
            not args.no_progress, unit="B", unit_scale=True, desc=f"get {name}"
        ) as progress:
            record = get_dataset(
                name,
                args.out,
                source=args.source if name in ("facades", "maps") else None,
                url=args.url,
                archive=args.archive,
                keep_archive=args.keep_archive,
                retries=args.retries,
                timeout=args.timeout,
                progress=progress,
            )
        where = f"{args.out.rstrip('/')}/{name}"
        if record.get("already"):
            print(f"{name}: already in {where} ({record.get('folders', '')})")
        else:
            print(
                f"{name}: {record['files']} files ({record['layout']}: {record['folders']}) in "
                f"{where}; archive sha256 {record['sha256']}"
            )
    return 0


def prepare_main(args: argparse.Namespace) -> int:
    from spap.cli import check_output_folder, progress_bar
    from spap.data.cityscapes import prepare_cityscapes
    from spap.errors import SpapError

    check_output_folder(args.out, "--out")
    if args.max_images is not None and args.max_images < 1:
        raise SpapError(f"--max-images must be at least 1, got {args.max_images}")
    if args.workers < 0:
        raise SpapError(f"--workers must be at least 0, got {args.workers}")
    start = time.perf_counter()
    with progress_bar(not args.no_progress, unit="img", desc="prepare cityscapes") as progress:
        record = prepare_cityscapes(
            args.source,
            args.out,
            size=args.size,
            label_filter=args.label_filter,
            max_images=args.max_images,
            workers=args.workers,
            progress=progress,
        )
    counts = ", ".join(f"{n} {split}" for split, n in record["counts"].items())
    print(
        f"wrote {counts} Cityscapes images ({args.size}x{args.size}: train/ test/ aligned, "
        f"trainA/ trainB/ testA/ testB/, train_ids/ test_ids/) to {args.out} in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0


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
        val_fraction=args.val_fraction,
    )
    print(
        f"wrote {meta['n_train']} train + {meta['n_test']} test + {meta['n_val']} validation "
        "scenes "
        f"({args.size}x{args.size}, seed {args.seed}) to {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0
