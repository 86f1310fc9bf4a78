"""The CPU's faster convolution kernels, switched on in one place for training
(``RunContext``) and inference (``Translator``, ``Sampler``)."""

from __future__ import annotations

from torch import nn

from spap.layers.thin_conv import use_thin_conv
from spap.layers.winograd import MIN_SIZE, use_winograd

__all__ = ["use_cpu_kernels"]


def use_cpu_kernels(
    module: nn.Module, winograd_min_size: int | None = MIN_SIZE, thin_conv: bool = True
) -> None:
    """Convert ``module``'s eligible convolutions in place: 3x3 stride-1 ones to
    :class:`~spap.layers.winograd.WinogradConv2d` (unless ``winograd_min_size`` is None),
    then those to or from few channels to :class:`~spap.layers.thin_conv.ThinConv2d`
    (if ``thin_conv``). Parameters and state dicts are unchanged; call it for modules that
    run on the CPU only."""
    if winograd_min_size is not None:
        use_winograd(module, winograd_min_size)
    if thin_conv:
        use_thin_conv(module)
