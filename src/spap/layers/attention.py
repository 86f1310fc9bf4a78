"""Building attention units by name, and collecting their attention maps.

``build_attention("spap", 128, factory, order="fine_to_coarse")`` is what the networks call
at each configured resolution (the factory's layers become the unit's layer callables, see
:meth:`LayerFactory.layer_kwargs`); ``record_attention(model)`` gathers the maps of every
unit in any model during the forward passes inside a ``with`` block.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from spap.errors import ConfigError
from spap.layers.base import AttentionUnit
from spap.layers.factories import LayerFactory, check_choice
from spap.layers.layer_spec import LAYER_ARGUMENTS
from spap.layers.sagan import SelfAttention
from spap.layers.spap import SPAP

__all__ = [
    "ATTENTION_KINDS",
    "AttentionUnit",
    "attention_options",
    "attention_units",
    "build_attention",
    "check_attention_options",
    "record_attention",
    "spatial_attention",
]

#: Names accepted by :func:`build_attention`.
ATTENTION_KINDS = ("none", "sagan", "spap")

_UNITS: dict[str, type[nn.Module]] = {"sagan": SelfAttention, "spap": SPAP}


def _unit_parameters(kind: str) -> tuple[str, ...]:
    return tuple(inspect.signature(_UNITS[kind].__init__).parameters)


def attention_options(kind: str) -> tuple[str, ...]:
    """Option names a config may pass to :func:`build_attention` for ``kind``.

    The unit's constructor arguments besides ``channels`` and the layer arguments
    (``conv_layer``, ``norm_layer``, ``act_layer``, ``spectral_norm``, ``device``,
    ``dtype``), which come from the host network's factory.
    """
    check_choice("attention kind", kind, ATTENTION_KINDS)
    if kind == "none":
        return ()
    skip = ("self", "channels", *LAYER_ARGUMENTS)
    return tuple(n for n in _unit_parameters(kind) if n not in skip)


def build_attention(
    kind: str, channels: int, factory: LayerFactory | None = None, **options: Any
) -> nn.Module:
    """An attention unit by name: ``"none"`` (``nn.Identity``), ``"sagan"`` or ``"spap"``.

    The unit builds its layers as ``factory`` does (``factory.layer_kwargs()``; SAGAN uses
    only its conv and spectral norm); ``None`` -> the unit's defaults, which are those of
    ``LayerFactory()`` (plain convs, no norm, ReLU). ``options`` go to the unit's
    constructor (e.g. ``order``, ``rates`` for SPAP); an unknown option raises
    :class:`ConfigError` naming it and the closest valid name.
    """
    valid = attention_options(kind)
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            listing = ", ".join(valid) if valid else "none"
            raise ConfigError(
                f"unknown option {key!r} for attention {kind!r}{hint} (valid: {listing})"
            )
    if factory is not None and not isinstance(factory, LayerFactory):
        raise ConfigError(f"factory must be a LayerFactory, got {type(factory).__name__}")
    if kind == "none":
        return nn.Identity()
    if "rates" in options and options["rates"] is not None:
        options["rates"] = tuple(options["rates"])  # YAML gives lists
    layers: dict[str, Any] = {}
    if factory is not None:
        params = _unit_parameters(kind)
        layers = {k: v for k, v in factory.layer_kwargs().items() if k in params}
    return _UNITS[kind](channels, **layers, **options)


def check_attention_options(kind: str, options: dict[str, Any], key: str) -> None:
    """Validate a config's options for ``kind`` by building a small unit; errors name ``key``."""
    if kind == "none":
        return
    try:
        with torch.random.fork_rng(devices=[]):  # building must not consume random numbers
            build_attention(kind, 16, **dict(options))
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def attention_units(model: nn.Module) -> Iterator[tuple[str, AttentionUnit]]:
    """``(name, unit)`` for every SPAP / SAGAN unit in ``model`` (``""`` if it is the model)."""
    for name, module in model.named_modules():
        if isinstance(module, AttentionUnit):
            yield name, module


@contextmanager
def record_attention(model: nn.Module, detach: bool = True) -> Iterator[dict[str, list[Tensor]]]:
    """Collect attention maps of every unit in ``model`` during the forward passes in the block.

    Yields a dict filled as the model runs: module name (as in ``model.named_modules()``,
    ``""`` for the model itself) -> that unit's maps from its latest forward pass (a list
    with one tensor per SPAP fuse block, or ``[attn]`` for SAGAN; shapes as documented on
    the units). Maps are detached unless ``detach=False``. Outside the block units keep
    nothing.

    Example::

        with record_attention(generator) as maps:
            fake = generator(z)
        maps["blocks.2.attention"][0]  # first fuse block, (N, 2, H, W)
    """
    sink: dict[str, list[Tensor]] = {}
    units = list(attention_units(model))
    for name, unit in units:
        if unit._attention_sink is not None:
            raise RuntimeError(f"record_attention is already active on unit {name!r}")
    try:
        for name, unit in units:
            unit._attention_sink = sink
            unit._attention_key = name
            unit._attention_detach = detach
        yield sink
    finally:
        for _, unit in units:
            unit._attention_sink = None


def spatial_attention(maps: Tensor) -> Tensor:
    """Reduce any SPAP map to (N, 2, H_a, W_a) for display (channel maps: mean over channels).

    (N, 2, H, W) is returned as is; (N, 2, C', H, W) and (N, 2, C', 1, 1) are averaged over C'.
    """
    if maps.dim() == 4:
        return maps
    if maps.dim() == 5:
        return maps.mean(dim=2)
    raise ValueError(f"expected a 4-D or 5-D SPAP attention map, got shape {tuple(maps.shape)}")
