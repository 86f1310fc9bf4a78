"""``spap seg``: train (or score) the segmentation net used by the FCN-score."""

from __future__ import annotations

import argparse
import logging

from spap.cli import add_device_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "seg",
        help="segmentation net for the FCN-score (train, evaluate)",
        description="Segmentation networks that score translated photos (FCN-score).",
    )
    seg = p.add_subparsers(dest="seg_command", metavar="TOOL", required=True)

    q = seg.add_parser(
        "train",
        help="train a segmentation net on real photo/label pairs",
        description="Train on the real pairs of an aligned folder (train/ split). Labels "
        "come from <split>_ids/ id maps when present, else from the label half mapped to "
        "the nearest palette colour. Writes OUT/segnet.pt (weights-only loadable) and, if "
        "a test/ split exists, prints the net's scores on the real test photos.",
    )
    q.add_argument("--data", required=True, help="aligned folder (label | photo pairs)")
    q.add_argument("--out", required=True, help="output folder (segnet.pt)")
    q.add_argument(
        "--arch",
        default="small",
        choices=("small", "fcn_resnet50", "deeplabv3_resnet50"),
        help="small (default; CPU friendly) or a torchvision net (random init, no download)",
    )
    q.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    q.add_argument("--size", type=int, default=64, help="training image size (default 64)")
    q.add_argument(
        "--palette",
        default="cityscapes",
        choices=("cityscapes", "scenes"),
        help="label colours / classes (default cityscapes: 19 train ids)",
    )
    q.add_argument("--batch-size", type=int, default=16, help="default 16")
    q.add_argument("--lr", type=float, help="Adam lr (default 1e-3 small, 1e-4 ResNet-50)")
    q.add_argument("--width", type=int, default=32, help="width of the small net (default 32)")
    q.add_argument(
        "--labels-domain",
        default="A",
        choices=("A", "B"),
        help="labels are the left (A, default) or right (B) half",
    )
    q.add_argument("--phase", default="train", help="training split folder (default train)")
    q.add_argument("--gt-ids", help="folder of id maps of the training split")
    q.add_argument(
        "--ids-format",
        default="train",
        choices=("train", "cityscapes-label"),
        help="id maps hold train ids (default) or Cityscapes labelIds",
    )
    q.add_argument("--max-images", type=int, help="use only the first N pairs")
    add_device_option(q)
    q.add_argument("--seed", type=int, default=0, help="default 0")
    q.set_defaults(func=train_main)

    q = seg.add_parser(
        "eval",
        help="score a segmentation net on real photos",
        description="Per-pixel / per-class accuracy and class IoU of the net on the real "
        "photos of an aligned split (the ceiling of the labels->photo FCN-score).",
    )
    q.add_argument("--segnet", required=True, help="segmentation checkpoint or its folder")
    q.add_argument("--data", required=True, help="aligned folder")
    q.add_argument("--phase", default="test", help="split (default test)")
    q.add_argument("--size", type=int, help="resize photos to SIZE first (default: the net's)")
    q.add_argument("--labels-domain", default="A", choices=("A", "B"), help="default A")
    q.add_argument("--gt-ids", help="folder of ground-truth id maps")
    q.add_argument("--ids-format", default="train", choices=("train", "cityscapes-label"))
    q.add_argument("--segnet-arch", help="architecture of a plain state dict")
    q.add_argument("--num-classes", type=int, help="classes of a plain state dict")
    q.add_argument("--palette", choices=("cityscapes", "scenes"), help="default: the net's")
    q.add_argument("--max-images", type=int, help="score only the first N pairs")
    add_device_option(q)
    q.add_argument("--per-class", action="store_true", help="print the per-class table")
    q.set_defaults(func=eval_main)


def train_main(args: argparse.Namespace) -> int:
    from spap.eval.fcn import evaluate_segnet
    from spap.models.segnet import load_segnet
    from spap.train.segnet import train_segnet

    logging.getLogger("spap.train.segnet").setLevel(logging.INFO)
    path = train_segnet(
        args.data,
        args.out,
        arch=args.arch,
        palette=args.palette,
        size=args.size,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        width=args.width,
        labels_domain=args.labels_domain,
        phase=args.phase,
        gt_ids=args.gt_ids,
        ids_format=args.ids_format,
        device=args.device,
        seed=args.seed,
        max_images=args.max_images,
        log_every=max(1, args.steps // 10),
        score=evaluate_segnet,
    )
    _, cfg = load_segnet(path)
    print(
        f"wrote {path} ({cfg['arch']}, {cfg['num_classes']} classes, {cfg['size']}x{cfg['size']})"
    )
    s = cfg.get("test_scores")
    if s:
        print(
            f"real test photos ({cfg['test_images']}): per-pixel acc {s['pixel_acc']:.3f}  "
            f"per-class acc {s['class_acc']:.3f}  class IoU {s['class_iou']:.3f}"
        )
    return 0


def eval_main(args: argparse.Namespace) -> int:
    from spap.data.labels import get_label_space
    from spap.data.pairs import AlignedPairs
    from spap.eval.fcn import evaluate_segnet
    from spap.eval.segmentation import format_scores_table
    from spap.models.segnet import load_segnet

    model, cfg = load_segnet(
        args.segnet, arch=args.segnet_arch, num_classes=args.num_classes, palette=args.palette
    )
    space = get_label_space(cfg.get("palette") or "cityscapes")
    pairs = AlignedPairs(
        args.data, space, args.phase, args.labels_domain, args.gt_ids, args.ids_format
    )
    s = evaluate_segnet(
        model, pairs, args.size or cfg.get("size"), device=args.device, max_images=args.max_images
    )
    print(format_scores_table({"real_photo": s}, per_class=args.per_class))
    return 0
