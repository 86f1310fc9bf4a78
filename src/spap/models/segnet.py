"""Segmentation networks that score translated photos (FCN-score), and their checkpoints.

- ``"small"`` (default): a tiny U-Net (three poolings, dilated bottleneck, about 0.8 M
  parameters at width 32) that trains in minutes on a CPU;
- ``"fcn_resnet50"`` / ``"deeplabv3_resnet50"``: torchvision's architectures, built with
  ``weights=None, weights_backbone=None`` (nothing is downloaded; train them with
  :func:`spap.train.segnet.train_segnet` or load your own weights).

Checkpoints are ``weights_only``-loadable: ``{"format": "spap-segnet", "version": 1,
"config": {plain values}, "state_dict": {name: tensor}}`` (written by
:func:`spap.train.segnet.save_segnet`). Users' own weights can also be a plain state dict,
given with its architecture (width and number of classes are read off the tensor shapes).
Anything else, including a stored config of the wrong shape, is refused with one
:class:`~spap.errors.CheckpointError` line.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from spap.errors import CheckpointError, SpapError

__all__ = [
    "ARCHS",
    "FORMAT",
    "SmallSegNet",
    "TorchvisionSegNet",
    "build_segnet",
    "fit_size",
    "load_segnet",
    "predict_ids",
    "predict_logits",
    "weights_only_failure",
]

ARCHS: tuple[str, ...] = ("small", "fcn_resnet50", "deeplabv3_resnet50")
#: ``"format"`` of the checkpoints of :func:`spap.train.segnet.save_segnet`.
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
        from torchvision.models import segmentation as tvseg  # noqa: PLC0415 - torchvision: ~1.3 s to import, only for these nets

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


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def weights_only_failure(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in a few words (PyTorch's
    own message goes on for lines, with advice to load the file unsafely)."""
    text = str(exc)
    if "Weights only" in text and "Unsupported operand" not in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (
            f"it holds pickled Python objects that could run code{what}; only tensors and "
            "plain values are accepted"
        )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "Unsupported operand" in ln), None)
    if detail is None:
        detail = lines[0].split(". ")[0] if lines else type(exc).__name__
    return f"truncated or corrupt ({detail[:200]})"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Stored config entries that are read back: key -> (check, what it must be).
_CONFIG_CHECKS: dict[str, tuple[Any, str]] = {
    "arch": (lambda v: isinstance(v, str) and v in ARCHS, f"one of {', '.join(ARCHS)}"),
    "num_classes": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "width": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "size": (lambda v: v is None or (_is_int(v) and v >= 1), "an int >= 1 or null"),
    "palette": (lambda v: v is None or isinstance(v, str), "a name"),
    "class_names": (
        lambda v: isinstance(v, (list, tuple)) and all(isinstance(c, str) for c in v),
        "a list of names",
    ),
    "ignore_index": (_is_int, "an int"),
    "test_scores": (
        lambda v: (
            isinstance(v, dict)
            and all(_is_number(v.get(k)) for k in ("pixel_acc", "class_acc", "class_iou"))
        ),
        "a dict of pixel_acc, class_acc, class_iou numbers",
    ),
    "test_images": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
}


def _check_config(path: Path, config: Any) -> dict[str, Any]:
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise CheckpointError(
            f"{path}: the stored config is a {type(config).__name__}, not a dict of settings"
        )
    for key, (ok, what) in _CONFIG_CHECKS.items():
        if key in config and not ok(config[key]):
            raise CheckpointError(
                f"{path}: the stored config's {key} must be {what}, got {config[key]!r:.60}"
            )
    return dict(config)


def _check_state(path: Path, state: Any) -> dict[str, torch.Tensor]:
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return state


def load_segnet(
    path: str | Path,
    device: str | torch.device = "cpu",
    arch: str | None = None,
    num_classes: int | None = None,
    size: int | None = None,
    palette: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a segmentation checkpoint -> ``(model in eval mode, config)``.

    ``path`` is a file written by :func:`spap.train.segnet.save_segnet` (``spap seg train``),
    a run folder holding ``segnet.pt``, or users' own plain state dict (or ``{"state_dict":
    ...}`` / ``{"model": ...}``), for which ``arch`` must be given (width and number of
    classes are read off the tensor shapes). Keyword arguments override the stored config.
    The file is read with ``weights_only=True``; every failure is one
    :class:`~spap.errors.CheckpointError` line.
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
            f"cannot load {path} as a weights-only checkpoint: {weights_only_failure(exc)}"
        ) from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if "config" not in obj or "state_dict" not in obj:
            raise CheckpointError(f"{path}: a {FORMAT} checkpoint without config or state_dict")
        config = _check_config(path, obj["config"])
        state = _check_state(path, obj["state_dict"])
    elif isinstance(obj, dict):
        state = _check_state(path, obj.get("state_dict", obj.get("model", obj)))
        config = {}
    else:
        raise CheckpointError(f"{path} is not a segmentation checkpoint")
    if arch is not None and arch not in ARCHS:
        raise SpapError(
            f"unknown segmentation architecture {arch!r}; choose one of {', '.join(ARCHS)}"
        )
    if num_classes is not None and (not _is_int(num_classes) or num_classes < 1):
        raise SpapError(f"the number of classes must be an int >= 1, got {num_classes!r}")
    overrides = {"arch": arch, "num_classes": num_classes, "size": size, "palette": palette}
    config.update({k: v for k, v in overrides.items() if v is not None})
    if "arch" not in config:
        raise CheckpointError(
            f"{path} is a plain state dict: give its architecture (--segnet-arch, one of "
            f"{', '.join(ARCHS)})"
        )
    inferred = _infer_shape(config["arch"], state)
    if not inferred:
        raise CheckpointError(f"{path} does not hold the weights of a {config['arch']} net")
    for key, value in inferred.items():
        if config.setdefault(key, value) != value:
            what = f"{config[key]} classes" if key == "num_classes" else f"{key} {config[key]}"
            raise CheckpointError(
                f"{path} does not fit a {config['arch']} net with {what}: the weights have {value}"
            )
    if "num_classes" not in config:
        raise CheckpointError(f"{path}: cannot tell the number of classes; give --num-classes")
    config.setdefault("width", 32)
    config.setdefault("size", None)
    model = build_segnet(config["arch"], config["num_classes"], config["width"])
    if isinstance(model, TorchvisionSegNet) and not any(k.startswith("model.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}  # a bare torchvision state dict
    if isinstance(model, TorchvisionSegNet):  # the auxiliary head is not used for scoring
        state = {k: v for k, v in state.items() if not k.startswith("model.aux_classifier.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path} does not fit a {config['arch']} net with {config['num_classes']} classes: "
            f"{_first_line(exc)}"
        ) from None
    return model.to(device).eval(), config


def _infer_shape(arch: str, state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Width / number of classes read off a state dict's tensor shapes."""
    out = {}
    if arch == "small":
        w, head = state.get("enc1.0.weight"), state.get("head.weight")
        if w is not None and w.dim() == 4 and head is not None and head.dim() == 4:
            out["width"] = int(w.shape[0])
            out["num_classes"] = int(head.shape[0])
    else:
        for key in ("model.classifier.4.weight", "classifier.4.weight"):
            if key in state and state[key].dim() >= 1:
                out["num_classes"] = int(state[key].shape[0])
                break
    return out


def fit_size(size: int, arch: str) -> int:
    """The input size ``arch`` is run at for ``size``: the small net pools three times, so
    its sizes are rounded up to a multiple of 8; the torchvision nets take any size."""
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
    size = (fit_size(net_size, arch),) * 2 if net_size else (fit_size(h, arch), fit_size(w, arch))
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
