"""Weight initialisation of the host networks: one scheme function for every network.

The CycleGAN networks use the reference's ``init_weights`` (``normal`` N(0, 0.02) by
default; ``xavier`` (normal), ``kaiming`` (fan-in), ``orthogonal`` with a gain); the SNGAN
networks use the SNGAN/BigGAN code's (``xavier_uniform`` with gain sqrt(2) in residual
convs and 1 elsewhere, or ``orthogonal``). Attention units keep their own initialisation:
the networks call this before adding them, or on their host layers only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import init
from torch.nn.utils import parametrize

from spap.errors import ConfigError

__all__ = ["SCHEMES", "init_weights"]

#: Initialisation schemes :func:`init_weights` knows.
SCHEMES = ("normal", "xavier", "xavier_uniform", "kaiming", "orthogonal", "default")


def _raw_weight(m: nn.Module) -> torch.Tensor | None:
    """The trainable weight of a conv/linear, also under spectral norm."""
    if parametrize.is_parametrized(m, "weight"):
        return m.parametrizations.weight.original
    return getattr(m, "weight", None)


def _restart_power_iteration(m: nn.Module) -> None:
    """Re-estimate the spectral-norm vectors of ``m`` for its (new) raw weight."""
    for p in m.parametrizations.weight:
        if hasattr(p, "_power_method") and hasattr(p, "_reshape_weight_to_matrix"):
            p._power_method(p._reshape_weight_to_matrix(m.parametrizations.weight.original), 15)


@torch.no_grad()
def init_weights(
    module: nn.Module,
    scheme: str = "normal",
    gain: float | Callable[[str, nn.Module], float] = 0.02,
    *,
    batch_norm: bool = True,
) -> None:
    """Initialise every conv / transposed conv / linear below ``module`` (in module order).

    Weights: N(0, gain) (``normal``), Xavier-normal (``xavier``), Xavier-uniform
    (``xavier_uniform``), Kaiming-normal fan-in (``kaiming``, no gain) or orthogonal with
    ``gain``; ``default`` leaves PyTorch's initialisation. ``gain`` may be a function of the
    layer's name and module. Biases become 0. With ``batch_norm``, affine batch norms get
    weight N(1, gain) and bias 0 (the reference's rule). A spectrally normalised layer has its
    raw weight initialised and its power iteration restarted.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown init scheme {scheme!r}; one of {', '.join(SCHEMES)}")
    if scheme == "default":
        return
    for name, m in module.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            w = _raw_weight(m)
            if w is None:
                continue
            g = gain(name, m) if callable(gain) else gain
            if scheme == "normal":
                init.normal_(w, 0.0, g)
            elif scheme == "xavier":
                init.xavier_normal_(w, gain=g)
            elif scheme == "xavier_uniform":
                init.xavier_uniform_(w, gain=g)
            elif scheme == "kaiming":
                init.kaiming_normal_(w, a=0, mode="fan_in")
            else:
                init.orthogonal_(w, gain=g)
            if m.bias is not None:
                init.zeros_(m.bias)
            if parametrize.is_parametrized(m, "weight"):
                _restart_power_iteration(m)
        elif batch_norm and isinstance(m, nn.BatchNorm2d) and m.affine:
            g = gain(name, m) if callable(gain) else gain
            init.normal_(m.weight, 1.0, g)
            init.zeros_(m.bias)
