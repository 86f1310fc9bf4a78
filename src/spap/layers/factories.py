"""Layer factories: one object decides how a network builds its conv, norm and activation.

In the spirit of BigGAN-PyTorch's ``which_conv`` / ``which_bn``: a host network creates a
:class:`LayerFactory` once (batch/instance norm in a generator, spectral norm and no norm in
a discriminator) and hands it to every block it builds. The attention units themselves take
layer callables (``conv_layer``, ``norm_layer``, ``act_layer``, ``spectral_norm``) as
torchvision and timm blocks do; :meth:`LayerFactory.layer_kwargs` gives the callables that
build exactly the factory's layers, so ``SPAP(c, **factory.layer_kwargs())`` is the unit the
networks get from :func:`spap.layers.build_attention`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from spap.errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "LayerFactory",
    "check_choice",
    "discriminator_factory",
    "generator_factory",
    "group_norm",
    "remove_spectral_norm",
    "sigma_max",
]

#: Norm layer names understood by :class:`LayerFactory`.
NORMS = ("none", "batch", "instance", "group")
#: Activation names understood by :class:`LayerFactory` (``lrelu`` has slope 0.2).
ACTIVATIONS = ("relu", "lrelu", "none")


def check_choice(what: str, value: object, choices: Iterable[str]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices`` (suggesting the closest)."""
    choices = tuple(choices)
    if isinstance(value, str) and value in choices:
        return
    hint = ""
    if isinstance(value, str):
        close = difflib.get_close_matches(value, choices, n=1)
        if close:
            hint = f"; did you mean {close[0]!r}?"
    raise ConfigError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}{hint}")


def _group_count(channels: int, max_groups: int = 32) -> int:
    """Largest divisor of ``channels`` that is at most ``max_groups``."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def group_norm(
    num_channels: int,
    *,
    max_groups: int = 32,
    affine: bool = True,
    eps: float = 1e-5,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.GroupNorm:
    """``nn.GroupNorm`` with the largest divisor of ``num_channels`` up to ``max_groups`` groups.

    A ``norm_layer`` callable (called with the channel count), so any width works, e.g.
    ``SPAP(c, norm_layer=group_norm)``; :class:`LayerFactory` uses it for ``norm="group"``.
    """
    return nn.GroupNorm(
        _group_count(num_channels, max_groups),
        num_channels,
        eps=eps,
        affine=affine,
        device=device,
        dtype=dtype,
    )


@dataclass(frozen=True)
class LayerFactory:
    """Builds conv / linear / norm / activation layers the same way across a network.

    Args:
        norm: ``"none"`` | ``"batch"`` | ``"instance"`` | ``"group"`` (up to 32 groups).
        spectral_norm: wrap every conv / linear in
            :func:`torch.nn.utils.parametrizations.spectral_norm`.
        activation: ``"relu"`` | ``"lrelu"`` (slope 0.2) | ``"none"``.
        norm_affine: learnable scale/shift in the norm layer; ``None`` picks the usual
            choice per norm (``True`` for batch/group, ``False`` for instance, as in CycleGAN).
    """

    norm: str = "none"
    spectral_norm: bool = False
    activation: str = "relu"
    norm_affine: bool | None = None

    def __post_init__(self) -> None:
        check_choice("norm", self.norm, NORMS)
        check_choice("activation", self.activation, ACTIVATIONS)

    @property
    def has_norm(self) -> bool:
        """Whether :meth:`norm_layer` returns a real norm (then a preceding conv needs no bias)."""
        return self.norm != "none"

    def layer_kwargs(self) -> dict[str, Any]:
        """The unit keywords that build exactly this factory's layers.

        ``{"conv_layer": nn.Conv2d, "norm_layer": ..., "act_layer": ..., "spectral_norm": ...}``
        for :class:`spap.SPAP` (``SPAP(c, **factory.layer_kwargs())``); ``norm_layer`` is
        ``None`` for ``norm="none"`` (then the convs before it have a bias), ``act_layer``
        ``None`` for ``activation="none"``. :class:`spap.SelfAttention` uses only
        ``conv_layer`` and ``spectral_norm``.
        """
        return {
            "conv_layer": nn.Conv2d,
            "norm_layer": self._norm_callable(),
            "act_layer": self._act_callable(),
            "spectral_norm": self.spectral_norm,
        }

    def _norm_callable(self) -> Callable[..., nn.Module] | None:
        if self.norm == "none":
            return None
        affine = self.norm_affine
        if self.norm == "batch":
            return partial(nn.BatchNorm2d, affine=True if affine is None else affine)
        if self.norm == "instance":
            return partial(nn.InstanceNorm2d, affine=False if affine is None else affine)
        return partial(group_norm, affine=True if affine is None else affine)

    def _act_callable(self) -> Callable[[], nn.Module] | None:
        if self.activation == "relu":
            return nn.ReLU
        if self.activation == "lrelu":
            return partial(nn.LeakyReLU, 0.2)
        return None

    def _sn(self, module: nn.Module) -> nn.Module:
        return _spectral_norm(module) if self.spectral_norm else module

    def conv(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        groups: int = 1,
    ) -> nn.Module:
        """A 2-D convolution; ``padding=None`` keeps the spatial size (for stride 1)."""
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        conv = nn.Conv2d(
            in_ch,
            out_ch,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=bias,
            padding_mode=padding_mode,
            groups=groups,
        )
        return self._sn(conv)

    def linear(self, in_f: int, out_f: int, bias: bool = True) -> nn.Module:
        """A linear layer (spectrally normalised if the factory asks for it)."""
        return self._sn(nn.Linear(in_f, out_f, bias=bias))

    def norm_layer(self, ch: int) -> nn.Module:
        """The factory's 2-D norm over ``ch`` channels (``nn.Identity`` for ``"none"``)."""
        make = self._norm_callable()
        return nn.Identity() if make is None else make(ch)

    def act(self) -> nn.Module:
        """The factory's activation (``nn.Identity`` for ``"none"``)."""
        make = self._act_callable()
        return nn.Identity() if make is None else make()

    def conv_block(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        dilation: int = 1,
        padding_mode: str = "zeros",
    ) -> nn.Sequential:
        """conv -> norm -> activation, same spatial size; the conv has a bias only without norm."""
        return nn.Sequential(
            self.conv(
                in_ch,
                out_ch,
                kernel_size,
                dilation=dilation,
                bias=not self.has_norm,
                padding_mode=padding_mode,
            ),
            self.norm_layer(out_ch),
            self.act(),
        )


def generator_factory(norm: str = "batch", activation: str = "relu") -> LayerFactory:
    """Factory for generators: a norm layer after every conv, no spectral norm."""
    return LayerFactory(norm=norm, spectral_norm=False, activation=activation)


def discriminator_factory(
    activation: str = "lrelu", spectral_norm: bool = True, norm: str = "none"
) -> LayerFactory:
    """Factory for discriminators: spectral norm, no norm layer (SNGAN D uses ``"relu"``)."""
    return LayerFactory(norm=norm, spectral_norm=spectral_norm, activation=activation)


@torch.no_grad()
def remove_spectral_norm(module: nn.Module) -> nn.Module:
    """Bake every parametrization (spectral norm) into a plain weight, in place.

    The baked weight is the one the module uses in eval mode (no power-iteration step is
    taken while baking). Returns ``module`` for chaining; use before ``torch.jit.script``
    or when exporting a model for inference.
    """
    for sub in list(module.modules()):
        if not parametrize.is_parametrized(sub):
            continue
        for name in list(sub.parametrizations.keys()):
            for p in sub.parametrizations[name]:
                p.eval()  # the removed parametrization is discarded, its mode need not be restored
            parametrize.remove_parametrizations(sub, name, leave_parametrized=True)
    return module


def sigma_max(weight: torch.Tensor) -> float:
    """Largest singular value of a weight reshaped to (out, -1) (for tests and diagnostics)."""
    w = weight.detach().reshape(weight.shape[0], -1).double()
    return float(torch.linalg.matrix_norm(w, ord=2)) if w.numel() else math.nan
