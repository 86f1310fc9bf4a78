"""``spap eval``: FID / KID / IS, FID statistics, FCN-score, paired PSNR / SSIM."""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

from spap.cli import add_device_option
from spap.errors import SpapError

log = logging.getLogger(__name__)

INCEPTION = "inception-v3-compat"  # spap.eval.fidelity.INCEPTION (not imported: keeps --help fast)


def _fidelity_args(p: argparse.ArgumentParser, real: bool, fake: bool) -> None:
    if real:
        p.add_argument(
            "--real",
            required=True,
            help="reference: image folder, FID statistics (.npz) or generator checkpoint",
        )
    if fake:
        p.add_argument(
            "--fake",
            required=True,
            help="generated images: image folder, GAN checkpoint file or run folder",
        )
    p.add_argument(
        "--num",
        type=int,
        default=10000,
        help="images drawn from a checkpoint input (default 10000)",
    )
    p.add_argument(
        "--weights",
        help="feature-extractor weights file (Inception: default $SPAP_INCEPTION_WEIGHTS, "
        "else torch.hub's checkpoints folder)",
    )
    p.add_argument(
        "--feature-extractor",
        default=INCEPTION,
        help=f"registered feature extractor (default {INCEPTION}; 'spap-segnet' = a "
        "`spap seg train` checkpoint given as --weights)",
    )
    p.add_argument("--feature-layer", help="feature used for FID/KID (default: the extractor's)")
    p.add_argument(
        "--size",
        type=int,
        help="resize folder images to SIZE x SIZE (resize + centre crop)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    add_device_option(p)
    p.add_argument("--seed", type=int, default=2020, help="torch-fidelity rng seed (default 2020)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument(
        "--cache-dir",
        help="features/statistics cache (default $SPAP_CACHE_DIR or ~/.cache/spap/fidelity)",
    )


def _metric_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fid", action="store_true", help="also report FID")
    p.add_argument("--kid", action="store_true", help="also report KID")
    p.add_argument("--is", dest="isc", action="store_true", help="also report IS")
    p.add_argument("--kid-subsets", type=int, default=100, help="default 100")
    p.add_argument(
        "--kid-subset-size",
        type=int,
        default=1000,
        help="default 1000 (capped at the number of images)",
    )
    p.add_argument("--splits", type=int, default=10, help="IS splits (default 10)")
    p.add_argument("--json", help="also write the numbers to this JSON file")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate: FID/KID/IS, FCN-score, PSNR/SSIM",
        description="Evaluation metrics. See docs/evaluation.md for the commands of each "
        "table of the paper.",
    )
    ev = p.add_subparsers(dest="eval_command", metavar="METRIC", required=True)

    for name, what in (
        ("fid", "Frechet Inception Distance"),
        ("kid", "Kernel Inception Distance"),
        ("is", "Inception Score"),
    ):
        q = ev.add_parser(
            name,
            help=what,
            description=f"{what} through torch-fidelity. Prints '{name.upper()}: <value>'. "
            "Nothing is downloaded: the Inception weights come from --weights, "
            "$SPAP_INCEPTION_WEIGHTS or torch.hub's checkpoints folder.",
        )
        _fidelity_args(q, real=name != "is", fake=True)
        _metric_args(q)
        q.set_defaults(func=fidelity_main, metric=name)

    q = ev.add_parser(
        "stats",
        help="compute and save FID statistics of a real dataset (.npz)",
        description="Compute mu/sigma of the features of --real once and save them; pass "
        "the .npz as --real of `spap eval fid` afterwards.",
    )
    _fidelity_args(q, real=True, fake=False)
    q.add_argument("--out", required=True, help="output .npz file")
    q.set_defaults(func=stats_main)

    q = ev.add_parser(
        "fcn",
        help="FCN-score of a CycleGAN on an aligned test set",
        description="Translate the aligned test pairs with the CycleGAN checkpoint and score: "
        "labels2photo = segment generated photos with --segnet; photo2labels = generated "
        "label images mapped to the nearest palette colour. Per-pixel accuracy, per-class "
        "accuracy and class IoU against the ground-truth ids.",
    )
    q.add_argument("--checkpoint", required=True, help="CycleGAN checkpoint file or run folder")
    q.add_argument("--data", required=True, help="aligned folder (holding test/) or split folder")
    q.add_argument("--segnet", help="segmentation checkpoint (`spap seg train`); labels2photo")
    q.add_argument(
        "--direction",
        default="both",
        choices=("labels2photo", "photo2labels", "both"),
        help="default both",
    )
    q.add_argument(
        "--size",
        type=int,
        help="translate at SIZE x SIZE (default: the data's size; 128 for the paper's Cityscapes)",
    )
    q.add_argument(
        "--palette",
        help="label colours: cityscapes | scenes (default: the seg net's, else cityscapes)",
    )
    q.add_argument(
        "--labels-domain",
        default="A",
        choices=("A", "B"),
        help="labels are the left half / domain A (default, built-in scenes) or the right "
        "half / domain B (pix2pix's cityscapes)",
    )
    q.add_argument("--phase", default="test", help="split folder name (default test)")
    q.add_argument("--gt-ids", help="folder of ground-truth id maps (default <split>_ids/ if any)")
    q.add_argument(
        "--ids-format",
        default="train",
        choices=("train", "cityscapes-label"),
        help="id maps hold train ids (default) or Cityscapes labelIds",
    )
    q.add_argument("--segnet-arch", help="architecture of a plain state dict given as --segnet")
    q.add_argument("--num-classes", type=int, help="classes of a plain state dict")
    q.add_argument("--max-images", type=int, help="score only the first N pairs")
    q.add_argument("--batch-size", type=int, default=8, help="default 8")
    add_device_option(q)
    q.add_argument("--no-real", action="store_true", help="skip scoring the real photos")
    q.add_argument("--per-class", action="store_true", help="print the per-class table")
    q.add_argument("--save-images", help="write the generated images to this folder")
    q.add_argument("--json", help="write all scores to this JSON file")
    q.set_defaults(func=fcn_main)

    q = ev.add_parser(
        "paired",
        help="PSNR and SSIM against ground truth (facades, maps)",
        description="PSNR (dB) and SSIM against ground truth, averaged over images. Either "
        "two folders (--real, --fake: images matched by file name, suffix ignored; "
        "<name>_fake_B style names also match), or a CycleGAN checkpoint and an aligned "
        "folder (--checkpoint, --data): one half of each test image is translated and "
        "compared with the other half.",
    )
    q.add_argument("--real", help="folder of ground-truth images")
    q.add_argument("--fake", help="folder of generated images")
    q.add_argument(
        "--real-half",
        choices=("A", "B"),
        help="take the left (A) or right (B) half of aligned real images",
    )
    q.add_argument("--checkpoint", help="CycleGAN checkpoint file or run folder")
    q.add_argument("--data", help="aligned folder (holding test/) or split folder")
    q.add_argument(
        "--source-half",
        choices=("A", "B"),
        default="A",
        help="half translated with --checkpoint: left A (default) or right B",
    )
    q.add_argument(
        "--direction",
        choices=("AtoB", "BtoA"),
        default="AtoB",
        help="translator direction from the source half's domain (default AtoB)",
    )
    q.add_argument("--phase", default="test", help="split folder name (default test)")
    q.add_argument("--max-images", type=int, help="score only the first N images")
    q.add_argument("--batch-size", type=int, default=8, help="default 8")
    add_device_option(q)
    q.add_argument("--save-images", help="write the translated images to this folder")
    q.add_argument(
        "--size",
        type=int,
        help="resize to SIZE x SIZE (folders: default fake resized to the real size; "
        "checkpoint: default the data's size)",
    )
    q.add_argument("--json", help="also write the numbers (and per-image values) to this file")
    q.set_defaults(func=paired_main)


def _common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "feature_extractor": args.feature_extractor,
        "weights_path": args.weights,
        "feature_layer": args.feature_layer,
        "num_samples": args.num,
        "size": args.size,
        "batch_size": args.batch_size,
        "device": args.device,
        "cache": not args.no_cache,
        "cache_dir": args.cache_dir,
        "seed": args.seed,
    }


def _write_json(path: str, data: dict[str, Any]) -> None:
    from spap.eval.fcn import write_json

    write_json(data, path)
    print(f"wrote {path}")


def fidelity_main(args: argparse.Namespace) -> int:
    from spap.eval.fidelity import compute_metrics

    fid = args.fid or args.metric == "fid"
    kid = args.kid or args.metric == "kid"
    isc = args.isc or args.metric == "is"
    if (fid or kid) and not getattr(args, "real", None):
        raise SpapError("FID and KID need --real")
    if args.feature_extractor != INCEPTION:
        log.info(
            "features: %s (weights %s), not the standard Inception",
            args.feature_extractor,
            args.weights,
        )
    out = compute_metrics(
        getattr(args, "real", None),
        args.fake,
        fid=fid,
        kid=kid,
        isc=isc,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        isc_splits=args.splits,
        **_common_kwargs(args),
    )
    if "fid" in out:
        print(f"FID: {out['fid']:.4f}")
    if "kid_mean" in out:
        print(f"KID: {out['kid_mean']:.6f} +/- {out['kid_std']:.6f}")
    if "is_mean" in out:
        print(f"IS: {out['is_mean']:.4f} +/- {out['is_std']:.4f}")
    if args.json:
        _write_json(args.json, {**out, "feature_extractor": args.feature_extractor})
    return 0


def stats_main(args: argparse.Namespace) -> int:
    from spap.eval.fidelity import save_statistics

    path = save_statistics(args.real, args.out, **_common_kwargs(args))
    print(f"wrote FID statistics to {path}")
    return 0


def fcn_main(args: argparse.Namespace) -> int:
    from spap.eval.fcn import fcn_score
    from spap.eval.segmentation import format_scores_table
    from spap.models.segnet import load_segnet

    segnet = None
    if args.segnet:
        segnet = load_segnet(
            args.segnet, arch=args.segnet_arch, num_classes=args.num_classes, palette=args.palette
        )
    res = fcn_score(
        args.checkpoint,
        args.data,
        segnet,
        direction=args.direction,
        size=args.size,
        palette=args.palette,
        labels_domain=args.labels_domain,
        phase=args.phase,
        gt_ids=args.gt_ids,
        ids_format=args.ids_format,
        batch_size=args.batch_size,
        device=args.device,
        max_images=args.max_images,
        include_real=not args.no_real,
        save_dir=args.save_images,
    )
    rows = {k: res[k] for k in ("labels2photo", "photo2labels", "real_photo") if k in res}
    print(
        f"FCN-score on {res['num_images']} test pairs at {res['size']}x{res['size']} "
        f"({res['palette']} classes)"
    )
    print(format_scores_table(rows, per_class=args.per_class))
    if args.json:
        _write_json(args.json, res)
    return 0


def paired_main(args: argparse.Namespace) -> int:
    from spap.eval.paired import paired_metrics, paired_score

    if args.checkpoint or args.data:
        if not (args.checkpoint and args.data) or args.real or args.fake:
            raise SpapError("give either --real and --fake, or --checkpoint and --data")
        out = paired_score(
            args.checkpoint,
            args.data,
            source_half=args.source_half,
            direction=args.direction,
            size=args.size,
            phase=args.phase,
            batch_size=args.batch_size,
            device=args.device,
            max_images=args.max_images,
            save_dir=args.save_images,
        )
    else:
        if not (args.real and args.fake):
            raise SpapError("give either --real and --fake, or --checkpoint and --data")
        out = paired_metrics(args.real, args.fake, real_half=args.real_half, size=args.size)
    psnr = out["psnr"]
    print(f"PSNR: {psnr:.4f} dB" if math.isfinite(psnr) else "PSNR: inf dB")
    print(f"SSIM: {out['ssim']:.4f}")
    print(f"images: {out['num_images']}")
    if args.json:
        _write_json(args.json, out)
    return 0
