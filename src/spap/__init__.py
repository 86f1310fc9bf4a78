"""spap: Spatial Pyramid Attentive Pooling for GANs and unpaired image-to-image translation.

``from spap import SPAP`` gives the drop-in unit; ``from spap import SelfAttention`` the SAGAN
block it is measured against. Both are imported lazily so that ``spap --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["SPAP", "SelfAttention", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "SPAP":
        from spap.layers.spap import SPAP

        return SPAP
    if name == "SelfAttention":
        from spap.layers.sagan import SelfAttention

        return SelfAttention
    raise AttributeError(f"module 'spap' has no attribute {name!r}")
