"""Segmentation networks that score translated photos (FCN-score).

- ``"small"`` (default): a tiny U-Net (three poolings, dilated bottleneck, about 0.8 M
  parameters at width 32) that trains in minutes on a CPU;
- ``"fcn_resnet50"`` / ``"deeplabv3_resnet50"``: torchvision's architectures, built with
  ``weights=None, weights_backbone=None`` (nothing is downloaded; train them here or load
  your own weights).

Checkpoints are ``weights_only``-loadable: ``{"format": "spap-segnet", "version": 1,
"config": {plain values}, "state_dict": {name: tensor}}``. Users' own weights can also be a
plain state dict, given with its architecture and number of classes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from spap.errors import CheckpointError, DataError, SpapError

__all__ = [
    "ARCHS",
    "SmallSegNet",
    "TorchvisionSegNet",
    "build_segnet",
    "evaluate_segnet",
    "load_segnet",
    "predict_ids",
    "save_segnet",
    "train_segnet",
]

log = logging.getLogger(__name__)

ARCHS: tuple[str, ...] = ("small", "fcn_resnet50", "deeplabv3_resnet50")
FORMAT = "spap-segnet"


def _block(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallSegNet(nn.Module):
    """A tiny U-Net: input ``(N, 3, H, W)`` in [-1, 1] -> logits ``(N, K, H, W)``.

    ``H`` and ``W`` must be multiples of 8. :meth:`features` returns the encoder maps
    (widths ``w, 2w, 4w, 4w`` at strides 1, 2, 4, 8), used as a feature extractor for FID.
    """

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.enc1 = _block(3, w)
        self.enc2 = _block(w, 2 * w)
        self.enc3 = _block(2 * w, 4 * w)
        self.bottleneck = _block(4 * w, 4 * w, dilation=2)
        self.dec3 = _block(8 * w, 2 * w)
        self.dec2 = _block(4 * w, w)
        self.dec1 = _block(2 * w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        b = self.bottleneck(F.max_pool2d(e3, 2))
        return [e1, e2, e3, b]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1, e2, e3, b = self.features(x)
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        d3 = self.dec3(torch.cat([up(b), e3], 1))
        d2 = self.dec2(torch.cat([up(d3), e2], 1))
        d1 = self.dec1(torch.cat([up(d2), e1], 1))
        return self.head(d1)


class TorchvisionSegNet(nn.Module):
    """torchvision FCN / DeepLabV3 (ResNet-50) without downloaded weights; returns ``out``."""

    def __init__(self, arch: str, num_classes: int) -> None:
        super().__init__()
        from torchvision.models import segmentation as tvseg

        build = {"fcn_resnet50": tvseg.fcn_resnet50, "deeplabv3_resnet50": tvseg.deeplabv3_resnet50}
        self.model = build[arch](
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
        )

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.model.backbone(x)["out"]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def build_segnet(arch: str = "small", num_classes: int = 19, width: int = 32) -> nn.Module:
    """A segmentation network of ``arch`` (one of :data:`ARCHS`), randomly initialised."""
    if arch == "small":
        return SmallSegNet(num_classes, width)
    if arch in ARCHS:
        return TorchvisionSegNet(arch, num_classes)
    raise SpapError(f"unknown segmentation architecture {arch!r}; choose one of {', '.join(ARCHS)}")


def save_segnet(path: str | Path, model: nn.Module, config: dict[str, Any]) -> Path:
    """Write a weights-only checkpoint (``config`` must hold plain values)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, "version": 1, "config": dict(config), "state_dict": state}, tmp)
    tmp.replace(path)
    return path


def load_segnet(
    path: str | Path,
    device: str | torch.device = "cpu",
    arch: str | None = None,
    num_classes: int | None = None,
    size: int | None = None,
    palette: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a segmentation checkpoint -> ``(model in eval mode, config)``.

    ``path`` is a file written by :func:`save_segnet` (``spap seg train``), a run folder
    holding ``segnet.pt``, or users' own plain state dict (or ``{"state_dict": ...}`` /
    ``{"model": ...}``), for which ``arch`` must be given (width and number of classes are
    read off the tensor shapes). Keyword arguments override the stored config.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "segnet.pt"
    if not path.is_file():
        raise CheckpointError(f"segmentation checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise CheckpointError(
            f"cannot load {path} as a weights-only checkpoint: "
            f"{(str(exc).splitlines() or [type(exc).__name__])[0]}"
        ) from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        config, state = dict(obj["config"]), obj["state_dict"]
    elif isinstance(obj, dict):
        state = obj.get("state_dict", obj.get("model", obj))
        config = {}
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise CheckpointError(f"{path} holds no state dict of tensors")
    else:
        raise CheckpointError(f"{path} is not a segmentation checkpoint")
    overrides = {"arch": arch, "num_classes": num_classes, "size": size, "palette": palette}
    config.update({k: v for k, v in overrides.items() if v is not None})
    if "arch" not in config:
        raise CheckpointError(
            f"{path} is a plain state dict: give its architecture (--segnet-arch, one of "
            f"{', '.join(ARCHS)})"
        )
    inferred = _infer_shape(config["arch"], state)
    for key, value in inferred.items():
        config.setdefault(key, value)
    if "num_classes" not in config:
        raise CheckpointError(f"{path}: cannot tell the number of classes; give --num-classes")
    config.setdefault("width", 32)
    config.setdefault("size", None)
    model = build_segnet(config["arch"], int(config["num_classes"]), int(config["width"]))
    if isinstance(model, TorchvisionSegNet) and not any(k.startswith("model.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}  # a bare torchvision state dict
    if isinstance(model, TorchvisionSegNet):  # the auxiliary head is not used for scoring
        state = {k: v for k, v in state.items() if not k.startswith("model.aux_classifier.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path} does not fit a {config['arch']} net with {config['num_classes']} classes: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), config


def _infer_shape(arch: str, state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Width / number of classes read off a state dict's tensor shapes."""
    out = {}
    if arch == "small":
        if "enc1.0.weight" in state:
            out["width"] = int(state["enc1.0.weight"].shape[0])
        if "head.weight" in state:
            out["num_classes"] = int(state["head.weight"].shape[0])
    else:
        for key in ("model.classifier.4.weight", "classifier.4.weight"):
            if key in state:
                out["num_classes"] = int(state[key].shape[0])
    return out


def _fit(size: int, arch: str) -> int:
    return int(math.ceil(size / 8) * 8) if arch == "small" else size


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    net_size: int | None = None,
    out_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Logits of ``(N, 3, H, W)`` images in [-1, 1], computed at ``net_size`` (square; default:
    the input size rounded up to a multiple of 8) and resized (bilinear) to ``out_size`` (H, W)."""
    h, w = images.shape[-2:]
    arch = "small" if isinstance(model, SmallSegNet) else "tv"
    size = (_fit(net_size, arch),) * 2 if net_size else (_fit(h, arch), _fit(w, arch))
    x = images
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    logits = model(x)
    target = out_size or (h, w)
    if tuple(logits.shape[-2:]) != tuple(target):
        logits = F.interpolate(logits, size=target, mode="bilinear", align_corners=False)
    return logits


def predict_ids(
    model: nn.Module,
    images: torch.Tensor,
    net_size: int | None = None,
    out_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Class ids ``(N, H', W')`` of images in [-1, 1] (see :func:`predict_logits`)."""
    return predict_logits(model, images, net_size, out_size).argmax(1)


# ----------------------------------------------------------------------------- training


def _load_pairs(pairs: Any, size: int, max_images: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    from spap.eval.pairs import resize_ids, resize_rgb

    n = len(pairs) if max_images is None else min(len(pairs), max_images)
    photos = torch.empty(n, 3, size, size, dtype=torch.uint8)
    ids = torch.empty(n, size, size, dtype=torch.uint8)
    for i in range(n):
        s = pairs[i]
        photos[i] = torch.from_numpy(resize_rgb(s["photo"], size).copy()).permute(2, 0, 1)
        ids[i] = torch.from_numpy(resize_ids(s["ids"], size).astype(np.uint8))
    return photos, ids


def _device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def evaluate_segnet(
    model: nn.Module,
    pairs: Any,
    net_size: int | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    max_images: int | None = None,
) -> dict[str, Any]:
    """FCN-score of real photos (the segmentation net's own accuracy, an upper bound)."""
    from spap.eval.pairs import resize_rgb, to_tensor
    from spap.eval.segmentation import ConfusionMatrix

    dev = _device(device)
    model = model.to(dev).eval()
    space = pairs.space
    cm = ConfusionMatrix(space.num_classes, space.ignore_index)
    n = len(pairs) if max_images is None else min(len(pairs), max_images)
    for start in range(0, n, batch_size):
        batch = [pairs[i] for i in range(start, min(n, start + batch_size))]
        for s in batch:  # photos may differ in size: one at a time
            x = to_tensor(resize_rgb(s["photo"], net_size))[None].to(dev)
            pred = predict_ids(model, x, net_size, tuple(s["ids"].shape))
            cm.update(pred[0], s["ids"])
    return cm.scores(space.class_names)


def train_segnet(
    data: str | Path,
    out: str | Path,
    arch: str = "small",
    palette: str = "cityscapes",
    size: int = 64,
    steps: int = 2000,
    batch_size: int = 16,
    lr: float | None = None,
    width: int = 32,
    labels_domain: str = "A",
    phase: str = "train",
    gt_ids: str | Path | None = None,
    ids_format: str = "train",
    device: str | torch.device | None = None,
    seed: int = 0,
    max_images: int | None = None,
    eval_phase: str | None = "test",
    log_every: int = 100,
    progress: Callable[[int, float], None] | None = None,
) -> Path:
    """Train a segmentation net on the real photo/label pairs of an aligned folder.

    Photos are resized to ``size x size`` (bicubic), ids with nearest neighbour; the only
    augmentation is a horizontal flip. Loss: cross-entropy ignoring void pixels; Adam
    (lr 1e-3 for ``small``, 1e-4 for the ResNet-50 nets). The whole split is held in memory
    as uint8. Writes ``out/segnet.pt`` (and scores it on ``eval_phase`` if that split
    exists) and returns its path.
    """
    from spap.eval.pairs import AlignedPairs
    from spap.eval.segmentation import get_label_space

    if steps < 1 or size < 8 or batch_size < 1:
        raise SpapError("steps and batch size must be >= 1 and size >= 8")
    space = get_label_space(palette)
    pairs = AlignedPairs(data, space, phase, labels_domain, gt_ids, ids_format)
    dev = _device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    photos, ids = _load_pairs(pairs, _fit(size, arch), max_images)
    if not (ids < space.num_classes).any():
        raise DataError(f"no labelled pixel in {pairs.dir} for the {space.name} palette")
    model = build_segnet(arch, space.num_classes, width).to(dev).train()
    lr = lr if lr is not None else (1e-3 if arch == "small" else 1e-4)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = photos.shape[0]
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        x = photos[idx].float().div_(127.5).sub_(1.0)
        y = ids[idx].long()
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        x, y = x.to(dev), y.to(dev)
        logits = model(x)
        loss = F.cross_entropy(logits, y, ignore_index=space.ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = loss.item()
        if progress is not None:
            progress(step, loss_value)
        if step % log_every == 0 or step == steps:
            log.info(
                "seg step %d/%d  loss %.4f  (%.1fs)",
                step,
                steps,
                loss_value,
                time.perf_counter() - t0,
            )
    model.eval()
    config: dict[str, Any] = {
        "arch": arch,
        "num_classes": space.num_classes,
        "width": width,
        "size": _fit(size, arch),
        "palette": space.name,
        "class_names": list(space.class_names),
        "ignore_index": space.ignore_index,
        "steps": steps,
        "train_images": n,
        "data": str(Path(data).resolve()),
        "labels_domain": labels_domain,
        "seed": seed,
    }
    if eval_phase is not None:
        try:
            test = AlignedPairs(data, space, eval_phase, labels_domain, None, ids_format)
        except DataError:
            test = None
        if test is not None and test.dir != pairs.dir:
            s = evaluate_segnet(model, test, config["size"], batch_size, dev, max_images)
            config["test_scores"] = {k: s[k] for k in ("pixel_acc", "class_acc", "class_iou")}
            config["test_images"] = len(test) if max_images is None else min(len(test), max_images)
    return save_segnet(Path(out) / "segnet.pt", model, config)
