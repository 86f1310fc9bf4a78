"""The GAN system: its configuration schema and its networks.

What training (:mod:`spap.train.gan`) and sampling (:mod:`spap.inference`) share: the
``data`` / ``model`` / ``train`` sections of a GAN config, what ``--size N`` sets, and the
networks of a model config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from spap.config import RunConfig, option
from spap.data.transforms import (
    PREPROCESS_OPTIONS,
    check_transform_options,
    check_value_range,
)
from spap.errors import ConfigError
from spap.models.sngan import SNGANConfig, build_discriminator, build_generator
from spap.systems.base import ADVERSARIAL_LOSSES

__all__ = ["GANConfig", "GANDataConfig", "GANTrainConfig", "apply_size", "build_networks"]


@dataclasses.dataclass
class GANDataConfig:
    """Training images: any folder of images (searched recursively)."""

    root: str | None = option(None, "image folder, searched recursively (--data sets it)")
    size: int = option(
        128, "training image size (equals model.resolution; --size sets both)", min=4
    )
    preprocess: str = option(
        "resize_and_crop",
        "resize_and_crop (resize to load_size, random size x size crop) | crop | scale_width | "
        "scale_width_and_crop | none; see spap.data.transforms",
        choices=PREPROCESS_OPTIONS,
    )
    load_size: int | None = option(
        None, "resize target before cropping (default: size, i.e. no crop)", min=1
    )
    flip: bool = option(True, "random horizontal flips")
    value_range: str | list[float] = option(
        "auto",
        "pixel values mapped to -1 and 1: auto (0..255 for 8-bit files, 0..65535 for 16-bit, "
        "0..1 for float) or [lo, hi] (values outside clipped); see docs/data.md",
    )

    def validate(self) -> None:
        if self.preprocess in ("none", "scale_width"):
            raise ConfigError(
                f"data.preprocess={self.preprocess} keeps each image's own size, but the GAN "
                f"learns size x size images (data.size={self.size}); use resize_and_crop, "
                "crop or scale_width_and_crop"
            )
        check_transform_options(
            self.preprocess, self.load_size or self.size, self.size, prefix="data.", crop_key="size"
        )
        check_value_range(self.value_range, prefix="data.")


@dataclasses.dataclass
class GANTrainConfig:
    """Losses, optimisers, schedule and weight averaging."""

    iterations: int = option(
        100_000, "generator updates of the full schedule (run.steps caps it)", min=1
    )
    batch_size: int = option(64, "images per discriminator update and per generator update", min=1)
    n_dis: int = option(
        1, "discriminator updates per generator update (each on its own real batch)", min=1
    )
    loss: str = option(
        "hinge",
        "adversarial loss: hinge (SNGAN/SAGAN), vanilla (non-saturating BCE), lsgan",
        choices=ADVERSARIAL_LOSSES,
    )
    lr_g: float = option(1e-4, "generator Adam learning rate", min=0.0)
    lr_d: float = option(4e-4, "discriminator Adam learning rate (TTUR: higher than lr_g)", min=0.0)
    betas_g: tuple[float, float] = option((0.0, 0.999), "generator Adam betas", min=0.0, max=1.0)
    betas_d: tuple[float, float] = option(
        (0.0, 0.999), "discriminator Adam betas", min=0.0, max=1.0
    )
    gamma_lr_mult: float = option(
        1.0,
        "learning-rate multiplier of the attention units' blend scalars gamma (SPAP, SAGAN) "
        "[ours; not in the paper]: >1 lets gamma move away from 0 sooner",
        min=0.0,
    )
    clip_grad_norm: float | None = option(
        None,
        "clip each update's gradients to this global L2 norm (torch.nn.utils.clip_grad_norm_); "
        "null: no clipping",
        min=0.0,
    )
    lr_decay: str = option(
        "none",
        "learning-rate schedule: none (constant) or linear (to 0 over train.iterations)",
        choices=("none", "linear"),
    )
    ema_decay: float = option(0.9999, "decay of the generator weight average", min=0.0, max=1.0)
    ema_start: int = option(
        1000,
        "generator updates before the average starts (it copies the weights until then)",
        min=0,
    )
    num_fixed: int = option(
        16, "fixed-noise samples shown in the sample grids (latents of seed run.seed)", min=1
    )

    def validate(self) -> None:
        for key in ("betas_g", "betas_d"):
            if len(getattr(self, key)) != 2:
                raise ConfigError(f"train.{key}: expected two numbers, got {getattr(self, key)!r}")


@dataclasses.dataclass
class GANConfig:
    """Unconditional GAN: SNGAN-style ResNet G and D, hinge loss, TTUR, EMA."""

    run: RunConfig = option(default_factory=RunConfig)
    data: GANDataConfig = option(default_factory=GANDataConfig)
    model: SNGANConfig = option(default_factory=SNGANConfig)
    train: GANTrainConfig = option(default_factory=GANTrainConfig)

    def validate(self) -> None:
        if self.data.size != self.model.resolution:
            raise ConfigError(
                f"data.size ({self.data.size}) must equal model.resolution "
                f"({self.model.resolution}); --size N sets both"
            )


def _rescale_attention(value: Any, old: int, new: int) -> Any:
    if not isinstance(value, dict):
        return value
    out = {}
    for k, kind in value.items():
        try:
            out[max(1, int(k) * new // old)] = kind
        except (TypeError, ValueError):
            out[k] = kind  # left for validation to report
    return out


def build_networks(cfg: SNGANConfig) -> dict[str, nn.Module]:
    """G and D of a model config (the EMA generator is a copy of G)."""
    return {"G": build_generator(cfg), "D": build_discriminator(cfg)}


def apply_size(cfg_dict: dict[str, Any], size: int) -> None:
    """``--size N``: model.resolution and data.size become N; attention units keep their
    relative depth (a unit at 64 for 128 px moves to 16 for 32 px)."""
    model = cfg_dict.setdefault("model", {})
    old = int(model.get("resolution", SNGANConfig.resolution))
    if old != size:
        for key in ("g_attention", "d_attention"):
            if key in model:
                model[key] = _rescale_attention(model[key], old, size)
    model["resolution"] = size
    cfg_dict.setdefault("data", {})["size"] = size
