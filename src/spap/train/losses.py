"""Adversarial losses, selectable by name.

``d_loss(name, real_logits, fake_logits)`` is the discriminator loss and
``g_loss(name, fake_logits)`` the generator loss of one of:

- ``"lsgan"``: least squares (Mao et al. 2017), targets 1 (real) and 0 (fake); the CycleGAN
  default. ``D = 0.5 * (mean((D(x)-1)^2) + mean(D(G(z))^2))``, ``G = mean((D(G(z))-1)^2)``.
- ``"vanilla"``: the original GAN loss as binary cross-entropy on logits, targets 1/0;
  the generator uses the non-saturating form ``-log sigmoid(D(G(z)))``.
- ``"hinge"``: ``D = 0.5 * (mean(relu(1-D(x))) + mean(relu(1+D(G(z)))))``,
  ``G = -mean(D(G(z)))`` (SNGAN / SAGAN).

The discriminator loss is the mean of its real and fake terms (the factor 0.5 of the
CycleGAN reference implementation). Losses are computed in float32 whatever the logits'
dtype (mixed precision). Logits may be any shape (PatchGAN maps): every element counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spap.errors import ConfigError

__all__ = ["GANLoss", "LOSSES", "d_loss", "g_loss", "gan_loss"]


def _lsgan_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((real - 1).square().mean() + fake.square().mean())


def _lsgan_g(fake: torch.Tensor) -> torch.Tensor:
    return (fake - 1).square().mean()


def _vanilla_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (
        F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    )


def _vanilla_g(fake: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def _hinge_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())


def _hinge_g(fake: torch.Tensor) -> torch.Tensor:
    return -fake.mean()


@dataclass(frozen=True)
class GANLoss:
    """A named pair of discriminator / generator losses on logits."""

    name: str
    d: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    g: Callable[[torch.Tensor], torch.Tensor]


LOSSES: dict[str, GANLoss] = {
    "lsgan": GANLoss("lsgan", _lsgan_d, _lsgan_g),
    "vanilla": GANLoss("vanilla", _vanilla_d, _vanilla_g),
    "hinge": GANLoss("hinge", _hinge_d, _hinge_g),
}


def gan_loss(name: str) -> GANLoss:
    """The loss pair called ``name`` (``lsgan`` | ``vanilla`` | ``hinge``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown GAN loss {name!r}; choose one of {', '.join(LOSSES)}") from None


def d_loss(name: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss (scalar, float32): mean of the real and the fake term."""
    return gan_loss(name).d(real_logits.float(), fake_logits.float())


def g_loss(name: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss (scalar, float32) on the discriminator's logits of generated images."""
    return gan_loss(name).g(fake_logits.float())
