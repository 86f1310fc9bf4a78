"""How an attention unit builds its layers, from torchvision / timm style layer callables.

``conv_layer(in_ch, out_ch, kernel_size, padding=..., dilation=..., bias=..., device=...,
dtype=...)`` (``nn.Conv2d``-compatible), ``norm_layer(num_channels, device=..., dtype=...)``
(``None``: no norm), ``act_layer()`` (``None``: no activation), ``spectral_norm`` (wrap every
conv in :func:`torch.nn.utils.parametrizations.spectral_norm`), and the ``device`` / ``dtype``
every parameter is created on. A callable that takes no ``device`` / ``dtype`` keywords
(e.g. ``lambda c: nn.GroupNorm(4, c)``) is called without them and its module moved with
``.to(device, dtype)`` afterwards.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from spap.errors import ConfigError

__all__ = ["LAYER_ARGUMENTS", "ActLayer", "ConvLayer", "LayerSpec", "NormLayer"]

#: ``conv_layer(in_ch, out_ch, kernel_size, padding=, dilation=, bias=, device=, dtype=)``.
ConvLayer = Callable[..., nn.Module]
#: ``norm_layer(num_channels, device=, dtype=)``.
NormLayer = Callable[..., nn.Module]
#: ``act_layer()``.
ActLayer = Callable[[], nn.Module]

#: Constructor keywords of the units that say how layers are built (not config options).
LAYER_ARGUMENTS = ("conv_layer", "norm_layer", "act_layer", "spectral_norm", "device", "dtype")


def _takes_keywords(fn: Callable[..., Any], names: tuple[str, ...]) -> bool | None:
    """Whether ``fn`` accepts all ``names`` as keywords (``None``: its signature is unknown)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return all(
        n in params
        and params[n].kind
        in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for n in names
    )


def _check_callable(name: str, value: object, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, nn.Module):
        raise ConfigError(
            f"{name} must build a module (a class or callable such as nn.BatchNorm2d), "
            f"not a module instance ({type(value).__name__}(...))"
        )
    if not callable(value):
        none = " or None" if optional else ""
        raise ConfigError(f"{name} must be a callable{none}, got {value!r}")


@dataclass(frozen=True)
class LayerSpec:
    """The layer callables of a unit, and the ``device`` / ``dtype`` to build on.

    Builds layers in a fixed order (a conv, its spectral norm, then norm and activation), so
    that under the same seed the same spec gives the same initial weights.
    """

    conv_layer: ConvLayer = nn.Conv2d
    norm_layer: NormLayer | None = None
    act_layer: ActLayer | None = nn.ReLU
    spectral_norm: bool = False
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        _check_callable("conv_layer", self.conv_layer, optional=False)
        _check_callable("norm_layer", self.norm_layer, optional=True)
        _check_callable("act_layer", self.act_layer, optional=True)
        if not isinstance(self.spectral_norm, bool):
            raise ConfigError(f"spectral_norm must be True or False, got {self.spectral_norm!r}")
        if self.dtype is not None and not isinstance(self.dtype, torch.dtype):
            raise ConfigError(f"dtype must be a torch.dtype or None, got {self.dtype!r}")

    def kwargs(self) -> dict[str, Any]:
        """The spec as unit keywords (``conv_layer=..., ..., dtype=...``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def has_norm(self) -> bool:
        """Whether there is a norm layer (then a conv before it needs no bias)."""
        return self.norm_layer is not None

    def _dd(self) -> dict[str, Any]:
        return {k: v for k, v in (("device", self.device), ("dtype", self.dtype)) if v is not None}

    def _build(
        self,
        what: str,
        fn: Callable[..., Any],
        *args: Any,
        _device_keywords: bool = True,
        **kwargs: Any,
    ) -> nn.Module:
        """``fn(*args, **kwargs)`` on the spec's device / dtype (moved there if ``fn`` cannot)."""
        dd = self._dd()
        takes = _takes_keywords(fn, tuple(dd)) if dd and _device_keywords else False
        moved = False
        if takes:
            module = fn(*args, **kwargs, **dd)
        elif takes is None:  # signature unknown: try the keywords, else build and move
            try:
                module = fn(*args, **kwargs, **dd)
            except TypeError:
                module, moved = fn(*args, **kwargs), True
        else:
            module, moved = fn(*args, **kwargs), bool(dd)
        if not isinstance(module, nn.Module):
            raise ConfigError(f"{what} must return an nn.Module, got {type(module).__name__}")
        return module.to(**dd) if moved else module

    def conv(
        self, in_ch: int, out_ch: int, kernel_size: int, dilation: int = 1, bias: bool = True
    ) -> nn.Module:
        """A stride-1 conv keeping the spatial size (zero padding), spectrally normalised if asked."""
        conv = self._build(
            "conv_layer",
            self.conv_layer,
            in_ch,
            out_ch,
            kernel_size,
            padding=dilation * (kernel_size - 1) // 2,
            dilation=dilation,
            bias=bias,
        )
        return _spectral_norm(conv) if self.spectral_norm else conv

    def norm(self, ch: int) -> nn.Module:
        """``norm_layer(ch)`` (``nn.Identity`` without a norm)."""
        if self.norm_layer is None:
            return nn.Identity()
        return self._build("norm_layer", self.norm_layer, ch)

    def act(self) -> nn.Module:
        """``act_layer()`` (``nn.Identity`` without an activation)."""
        if self.act_layer is None:
            return nn.Identity()
        # Called without arguments; moved afterwards (e.g. nn.PReLU has a weight).
        return self._build("act_layer", self.act_layer, _device_keywords=False)

    def conv_block(
        self, in_ch: int, out_ch: int, kernel_size: int, dilation: int = 1
    ) -> nn.Sequential:
        """conv -> norm -> activation, same spatial size; the conv has a bias only without norm."""
        return nn.Sequential(
            self.conv(in_ch, out_ch, kernel_size, dilation=dilation, bias=not self.has_norm),
            self.norm(out_ch),
            self.act(),
        )

    def scalar(self, value: float) -> nn.Parameter:
        """A learned scalar (e.g. ``gamma``) on the spec's device and dtype."""
        return nn.Parameter(torch.tensor(float(value), **self._dd()))
