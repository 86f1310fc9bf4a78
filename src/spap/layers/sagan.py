"""SAGAN self-attention (Zhang et al. 2019), the competitor SPAP is measured against.

As in the authors' BigGAN-PyTorch code: 1x1 projections theta / phi to ``C // 8`` and g to
``C // 2`` channels, 2x2 max-pooling of phi and g (4x fewer keys), softmax over positions,
a 1x1 output conv back to ``C``, and ``y = x + gamma * o`` with ``gamma`` initialised to 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spap.errors import ConfigError
from spap.layers.base import AttentionUnit
from spap.layers.layer_spec import ConvLayer, LayerSpec

__all__ = ["SelfAttention"]


class SelfAttention(AttentionUnit):
    """Self-attention over positions: (N, C, H, W) -> (N, C, H, W).

    Args:
        channels: input (= output) channels ``C``.
        reduction: theta/phi width is ``max(1, C // reduction)``; g width is ``max(1, C // 2)``.
        pool: 2x2 max-pool keys and values (``ceil_mode``, so odd and 1-pixel maps work).
        conv_layer: builds the four 1x1 convs (no bias), called as ``conv_layer(in_ch, out_ch,
            1, padding=0, dilation=1, bias=False, device=, dtype=)`` (``nn.Conv2d``-compatible).
        spectral_norm: wrap them in :func:`torch.nn.utils.parametrizations.spectral_norm`
            (in a discriminator, and in SAGAN's generator).
        device, dtype: where and in what precision the parameters are created.

    There is no norm and no activation.

    ``forward_with_attention(x)`` returns ``(y, [attn])`` with ``attn`` of shape
    (N, H*W, H'*W'): row ``i`` (query position ``i`` in row-major order) is a softmax over the
    key positions of the pooled map (H' = ceil(H / 2) with ``pool``, else H), summing to 1.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 8,
        pool: bool = True,
        *,
        conv_layer: ConvLayer = nn.Conv2d,
        spectral_norm: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ConfigError(f"channels must be an integer >= 1, got {channels!r}")
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ConfigError(f"reduction must be an integer >= 1, got {reduction!r}")
        spec = LayerSpec(conv_layer, None, None, spectral_norm, device, dtype)
        self.channels = channels
        self.reduction = reduction
        self.pool = bool(pool)
        qk = max(1, channels // reduction)
        vc = max(1, channels // 2)
        self.theta = spec.conv(channels, qk, 1, bias=False)
        self.phi = spec.conv(channels, qk, 1, bias=False)
        self.g = spec.conv(channels, vc, 1, bias=False)
        self.o = spec.conv(vc, channels, 1, bias=False)
        self.gamma = spec.scalar(0.0)

    def forward_with_attention(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(y, [attn])`` with ``attn`` of shape (N, H*W, H'*W'), rows summing to 1."""
        theta = self.theta(x).flatten(2)  # (N, C/8, HW)
        phi = self.phi(x)
        g = self.g(x)
        if self.pool:
            phi = F.max_pool2d(phi, 2, 2, ceil_mode=True)
            g = F.max_pool2d(g, 2, 2, ceil_mode=True)
        phi = phi.flatten(2)  # (N, C/8, HW')
        g = g.flatten(2)  # (N, C/2, HW')
        attn = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)  # (N, HW, HW')
        o = torch.bmm(g, attn.transpose(1, 2))  # (N, C/2, HW)
        o = self.o(o.unflatten(2, (x.shape[2], x.shape[3])))
        return x + self.gamma * o, [attn]

    def forward(self, x: Tensor) -> Tensor:
        y, maps = self.forward_with_attention(x)
        self._store(maps)
        return y

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}, pool={self.pool}"
