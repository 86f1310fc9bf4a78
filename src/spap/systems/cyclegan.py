"""The CycleGAN system: its configuration schema and its networks.

What training (:mod:`spap.train.cyclegan`) and inference (:mod:`spap.inference`) share:
the ``data`` / ``model`` / ``train`` sections of a CycleGAN config, what ``--size N`` sets,
and the four networks of a model config. Naming as in the reference implementation:
``G_A: A -> B``, ``G_B: B -> A``, ``D_A`` judges domain B, ``D_B`` judges domain A.
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
from spap.models.cyclegan import CycleGANModelConfig, build_discriminator, build_generator
from spap.systems.base import ADVERSARIAL_LOSSES

__all__ = [
    "NETWORKS",
    "CycleGANConfig",
    "CycleGANDataConfig",
    "CycleGANTrainConfig",
    "apply_size",
    "build_networks",
    "inference_generators",
]

#: The four networks of a CycleGAN, as named in checkpoints.
NETWORKS = ("G_A", "G_B", "D_A", "D_B")


@dataclasses.dataclass
class CycleGANDataConfig:
    """Training images: the CycleGAN layout (trainA/ trainB/) or aligned A|B images."""

    root: str | None = option(None, "dataset folder (--data sets it)")
    layout: str = option(
        "auto",
        "unaligned (root/trainA, root/trainB) | aligned (root/train/*: A|B side by side) | "
        "auto (unaligned if root/trainA exists)",
        choices=("auto", "unaligned", "aligned"),
    )
    phase: str = option("train", "sub-folder prefix: root/{phase}A, root/{phase}B or root/{phase}")
    direction: str = option(
        "AtoB", "AtoB or BtoA (swaps the roles of the A and B images)", choices=("AtoB", "BtoA")
    )
    preprocess: str = option(
        "resize_and_crop",
        "resize_and_crop | crop | scale_width | scale_width_and_crop | none "
        "(see spap.data.transforms)",
        choices=PREPROCESS_OPTIONS,
    )
    load_size: int = option(286, "resize target before the random crop (--size sets it)", min=1)
    crop_size: int = option(256, "training crop size (--size N sets it to N)", min=4)
    flip: bool = option(True, "random horizontal flips")
    serial_batches: bool = option(
        False, "pair A image i with B image i (unaligned); default: a random B image"
    )
    interpolation: str = option(
        "bicubic", "resize filter", choices=("bicubic", "bilinear", "nearest")
    )
    value_range: str | list[float] = option(
        "auto",
        "pixel values mapped to -1 and 1: auto (0..255 for 8-bit files, 0..65535 for 16-bit, "
        "0..1 for float) or [lo, hi] (values outside clipped); see docs/data.md",
    )

    def validate(self) -> None:
        check_transform_options(self.preprocess, self.load_size, self.crop_size, prefix="data.")
        check_value_range(self.value_range, prefix="data.")
        if self.preprocess in ("resize_and_crop", "crop", "scale_width_and_crop") and (
            self.crop_size % 4
        ):
            raise ConfigError(
                f"data.crop_size must be a multiple of 4 (the generator downsamples twice), "
                f"got {self.crop_size}"
            )


@dataclasses.dataclass
class CycleGANTrainConfig:
    """Losses, optimisers, schedule, and initialisation from earlier weights."""

    batch_size: int = option(1, "images per iteration and rank (CycleGAN: 1)", min=1)
    n_epochs: int = option(100, "epochs at the initial learning rate", min=0)
    n_epochs_decay: int = option(100, "epochs of linear decay of the learning rate to 0", min=0)
    loss: str = option(
        "lsgan", "adversarial loss: lsgan (CycleGAN) | vanilla | hinge", choices=ADVERSARIAL_LOSSES
    )
    lr: float = option(2e-4, "Adam learning rate of G and D", min=0.0)
    betas: tuple[float, float] = option((0.5, 0.999), "Adam betas", min=0.0, max=1.0)
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
    lambda_A: float = option(10.0, "weight of the cycle loss A -> B -> A", min=0.0)
    lambda_B: float = option(10.0, "weight of the cycle loss B -> A -> B", min=0.0)
    lambda_identity: float = option(
        0.5,
        "identity loss weight relative to lambda_A / lambda_B (0 disables it)",
        min=0.0,
    )
    pool_size: int = option(50, "image pool size per discriminator (0: no pool)", min=0)
    init_from: str | None = option(
        None,
        "start from the weights of a spap CycleGAN checkpoint or run folder (attention "
        "units absent from it keep their initial values; see train.init_strict)",
    )
    init_networks: dict[str, str] = option(
        default_factory=dict,
        help="start single networks from files: {G_A: latest_net_G_A.pth, ...}; a reference "
        "CycleGAN state dict or a spap checkpoint (checked like init_from)",
    )
    init_strict: bool = option(
        True,
        "init_from / init_networks: fail, naming each difference, when a file's network "
        "differs from the configured one (blocks, widths, norm, dropout, padding, channels, "
        "attention units); false: load the tensors that fit and log what was dropped and "
        "what kept its initial values",
    )
    num_visuals: int = option(4, "images per row of the sample grids", min=1)
    batched_forwards: str = option(
        "auto",
        "run forwards that share a network as one batch: G_B on [B, A], G_A on [A, B, "
        "G_B(B)], each D on [real, fake] (same losses with per-sample norms): always | never | "
        "auto (for images up to 128x128: faster at 64 px, slower at 256 px on CPU); never with "
        "model.norm=batch, whose statistics would mix the images",
        choices=("auto", "always", "never"),
    )

    def validate(self) -> None:
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas: expected two numbers, got {self.betas!r}")
        if self.n_epochs + self.n_epochs_decay < 1:
            raise ConfigError("train.n_epochs + train.n_epochs_decay must be at least 1")
        for name in self.init_networks:
            if name not in NETWORKS:
                raise ConfigError(
                    f"train.init_networks: unknown network {name!r}; one of {', '.join(NETWORKS)}"
                )


@dataclasses.dataclass
class CycleGANConfig:
    """CycleGAN: ResNet generators, PatchGAN discriminators, LSGAN + cycle + identity losses."""

    run: RunConfig = option(default_factory=RunConfig)
    data: CycleGANDataConfig = option(default_factory=CycleGANDataConfig)
    model: CycleGANModelConfig = option(default_factory=CycleGANModelConfig)
    train: CycleGANTrainConfig = option(default_factory=CycleGANTrainConfig)

    def validate(self) -> None:
        n = self.model.n_layers_d
        if self.data.preprocess != "none" and self.data.crop_size < 3 * 2**n:
            raise ConfigError(
                f"data.crop_size {self.data.crop_size} is too small for a PatchGAN with "
                f"model.n_layers_d={n} (needs at least {3 * 2**n}); use a larger size or "
                f"model.n_layers_d={max(1, (self.data.crop_size // 3).bit_length() - 1)}"
            )
        if self.train.lambda_identity > 0 and self.model.input_nc != self.model.output_nc:
            raise ConfigError(
                "train.lambda_identity > 0 needs model.input_nc == model.output_nc "
                "(set train.lambda_identity=0)"
            )
        if self.data.preprocess in ("none", "scale_width") and self.train.batch_size > 1:
            raise ConfigError(
                f"train.batch_size={self.train.batch_size} with data.preprocess="
                f"{self.data.preprocess}: it keeps each image's own size, so a batch cannot "
                "hold several images; use train.batch_size=1 or a preprocess that crops "
                "(resize_and_crop, crop, scale_width_and_crop)"
            )


def build_networks(cfg: CycleGANModelConfig) -> dict[str, nn.Module]:
    """G_A (A->B), G_B (B->A), D_A (judges B), D_B (judges A) of a model config."""
    return {
        "G_A": build_generator(cfg, cfg.input_nc, cfg.output_nc),
        "G_B": build_generator(cfg, cfg.output_nc, cfg.input_nc),
        "D_A": build_discriminator(cfg, cfg.output_nc),
        "D_B": build_discriminator(cfg, cfg.input_nc),
    }


def apply_size(cfg_dict: dict[str, Any], size: int) -> None:
    """``--size N``: crop size N, load size round(N * 286 / 256) (the reference's ratio)."""
    data = cfg_dict.setdefault("data", {})
    data["crop_size"] = size
    data["load_size"] = round(size * 286 / 256)


def inference_generators(direction: str) -> dict[str, str]:
    """Which stored generator translates each way: ``{"AtoB": "G_A", "BtoA": "G_B"}``, swapped
    for a run trained with ``data.direction=BtoA`` (AtoB always means from the folder's A
    domain)."""
    if direction == "BtoA":
        return {"AtoB": "G_B", "BtoA": "G_A"}
    return {"AtoB": "G_A", "BtoA": "G_B"}
