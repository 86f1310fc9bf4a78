"""spap: Spatial Pyramid Attentive Pooling for GANs and unpaired image-to-image translation.

``from spap import SPAP`` gives the drop-in unit; ``from spap import SelfAttention`` the SAGAN
block it is measured against. Both are imported lazily so that ``spap --help`` stays fast,
and importing either needs nothing beyond PyTorch.
"""

__version__ = "0.2.0"

__all__ = ["SPAP", "SelfAttention", "__version__"]


def __getattr__(name: str) -> object:
    if name == "SPAP":
        from spap.layers.spap import SPAP  # noqa: PLC0415 - lazy: `spap --help` needs no torch

        return SPAP
    if name == "SelfAttention":
        from spap.layers.sagan import SelfAttention  # noqa: PLC0415 - lazy, as SPAP above

        return SelfAttention
    raise AttributeError(f"module 'spap' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
