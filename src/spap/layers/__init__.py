"""Building blocks: the SPAP unit, SAGAN self-attention, and conv/norm/spectral-norm factories.

Imports only PyTorch (and :mod:`spap.errors`): a network that uses the units needs nothing
else of the project.
"""

from __future__ import annotations

from spap.layers.attention import (
    ATTENTION_KINDS,
    attention_options,
    attention_units,
    build_attention,
    record_attention,
    spatial_attention,
)
from spap.layers.base import AttentionUnit
from spap.layers.factories import (
    LayerFactory,
    discriminator_factory,
    generator_factory,
    group_norm,
    remove_spectral_norm,
)
from spap.layers.layer_spec import LayerSpec
from spap.layers.sagan import SelfAttention
from spap.layers.spap import SPAP, AttentiveFuse

__all__ = [
    "ATTENTION_KINDS",
    "SPAP",
    "AttentionUnit",
    "AttentiveFuse",
    "LayerFactory",
    "LayerSpec",
    "SelfAttention",
    "attention_options",
    "attention_units",
    "build_attention",
    "discriminator_factory",
    "generator_factory",
    "group_norm",
    "record_attention",
    "remove_spectral_norm",
    "spatial_attention",
]
