"""Building blocks: the SPAP unit, SAGAN self-attention, and conv/norm/spectral-norm factories."""

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
    remove_spectral_norm,
)
from spap.layers.sagan import SelfAttention
from spap.layers.spap import SPAP, AttentiveFuse

__all__ = [
    "ATTENTION_KINDS",
    "SPAP",
    "AttentionUnit",
    "AttentiveFuse",
    "LayerFactory",
    "SelfAttention",
    "attention_options",
    "attention_units",
    "build_attention",
    "discriminator_factory",
    "generator_factory",
    "record_attention",
    "remove_spectral_norm",
    "spatial_attention",
]
