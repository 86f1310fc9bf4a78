"""spap: Spatial Pyramid Attentive Pooling for GANs and unpaired image-to-image translation."""

from __future__ import annotations

from spap.layers.sagan import SelfAttention
from spap.layers.spap import SPAP

__version__ = "0.1.0"

__all__ = ["SPAP", "SelfAttention", "__version__"]
