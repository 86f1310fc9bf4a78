"""The SPAP unit: Spatial Pyramid Attentive Pooling (Sun & Wu, arXiv 1901.06322).

From the paper's architecture figure: an atrous spatial pyramid (K parallel dilated convs),
a cascade of K-1 *attentive fuse* blocks that merge the branches two at a time with
attention maps normalised across each pair, and a residual blend
``y = gamma * h + (1 - gamma) * x`` with a learned scalar ``gamma``.

Everything the figure does not fix (rates, widths, the conv stacks inside a fuse block,
the attention shape and normaliser, the cascade order's exact meaning) is a constructor
argument; the defaults are this project's choices, see ``docs/spap.md``. Conv, norm and
activation come from layer callables as in torchvision / timm blocks (``conv_layer``,
``norm_layer``, ``act_layer``, ``spectral_norm``, ``device``, ``dtype``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spap.errors import ConfigError
from spap.layers.base import AttentionUnit
from spap.layers.factories import check_choice
from spap.layers.layer_spec import ActLayer, ConvLayer, LayerSpec, NormLayer
from spap.layers.pretrained import PretrainedUnitMixin

__all__ = [
    "ATTENTION_SHAPES",
    "DEFAULT_RATES",
    "NORMALIZERS",
    "ORDERS",
    "SPAP",
    "AttentiveFuse",
    "default_inner_channels",
]

#: Cascade orders: start from the two largest rates, or from the two smallest.
ORDERS = ("coarse_to_fine", "fine_to_coarse")
#: Attention shapes: one map per input (N,1,H,W), one weight per channel (N,C',1,1), or both.
ATTENTION_SHAPES = ("spatial", "channel", "both")
#: How the two maps of a pair are made complementary.
NORMALIZERS = ("softmax", "sigmoid")
#: Default branch rates: a 1x1 branch (rate 0) and four 3x3 branches with dilation 1, 2, 4, 8
#: (K = 5 as in the paper's figure; every rate is below 16, so 16x16 maps and up are not
#: degenerate).
DEFAULT_RATES: tuple[int, ...] = (0, 1, 2, 4, 8)


def default_inner_channels(channels: int) -> int:
    """Default branch width: a quarter of the input width, at least 8 (never above ``channels``)."""
    return min(channels, max(8, channels // 4))


class AttentiveFuse(nn.Module):
    """One attentive fuse block: ``(u, v) -> (out, maps)``.

    ``e = embed(cat[u, v])`` (``layers`` conv-norm-act, kernel ``kernel``); a 1x1 head turns
    ``e`` (spatial) and/or its global average (channel) into pair logits; the pair is
    normalised (softmax over the two, or ``a, 1 - a`` with a sigmoid);
    ``f = a_u * u + a_v * v``; ``out = refine(f)`` (``layers`` conv-norm-act).

    ``maps`` has shape (N, 2, H, W) for ``spatial``, (N, 2, C, 1, 1) for ``channel`` and
    (N, 2, C, H, W) for ``both``; index 0 along dim 1 weights ``u``, index 1 weights ``v``,
    and the two sum to 1 everywhere.

    The keyword-only layer arguments are those of :class:`SPAP`.
    """

    def __init__(
        self,
        channels: int,
        attention: str = "spatial",
        normalizer: str = "softmax",
        layers: int = 1,
        kernel: int = 3,
        *,
        conv_layer: ConvLayer = nn.Conv2d,
        norm_layer: NormLayer | None = None,
        act_layer: ActLayer | None = nn.ReLU,
        spectral_norm: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        spec = LayerSpec(conv_layer, norm_layer, act_layer, spectral_norm, device, dtype)
        self.channels = channels
        self.use_spatial = attention in ("spatial", "both")
        self.use_channel = attention in ("channel", "both")
        self.softmax = normalizer == "softmax"
        n_logits = 2 if self.softmax else 1
        self.n_logits = n_logits

        self.embed = nn.Sequential(
            *[
                spec.conv_block(channels * (2 if i == 0 else 1), channels, kernel)
                for i in range(layers)
            ]
        )
        in_ch = channels if layers else 2 * channels
        self.spatial_head: nn.Module = (
            spec.conv(in_ch, n_logits, 1) if self.use_spatial else nn.Identity()
        )
        self.channel_head: nn.Module = (
            spec.conv(in_ch, n_logits * channels, 1) if self.use_channel else nn.Identity()
        )
        self.refine = nn.Sequential(
            *[spec.conv_block(channels, channels, kernel) for _ in range(layers)]
        )

    def _logits(self, e: Tensor) -> Tensor:
        """Pair logits of shape (N, n_logits, C_a, H_a, W_a)."""
        if not self.use_channel:
            return self.spatial_head(e).unsqueeze(2)
        pooled = F.adaptive_avg_pool2d(e, 1)
        chan = self.channel_head(pooled).unflatten(1, (self.n_logits, self.channels))
        if not self.use_spatial:
            return chan
        return self.spatial_head(e).unsqueeze(2) + chan

    def forward(self, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        logits = self._logits(self.embed(torch.cat([u, v], dim=1)))
        if self.softmax:
            a = torch.softmax(logits, dim=1)
        else:
            p = torch.sigmoid(logits)
            a = torch.cat([p, 1.0 - p], dim=1)
        f = a[:, 0] * u + a[:, 1] * v
        out = self.refine(f)
        if not self.use_channel:
            a = a.squeeze(2)
        return out, a


class SPAP(AttentionUnit, PretrainedUnitMixin):
    """Spatial Pyramid Attentive Pooling unit: (N, C, H, W) -> (N, C, H, W).

    Args:
        channels: input (= output) channels ``C``.
        rates: strictly increasing, non-negative dilation rates, one branch each; rate 0 is a
            1x1 branch, rate ``r >= 1`` a 3x3 conv with dilation ``r`` and zero padding ``r``
            (so any input size works; a rate at or above the map size degenerates to the
            centre tap). At least two.
        inner_channels: width ``C'`` of the branches and the cascade; ``None`` ->
            :func:`default_inner_channels` (``max(8, C // 4)``, capped at ``C``).
        order: ``"coarse_to_fine"`` (fuse the two largest rates first, then bring in ever
            smaller rates) or ``"fine_to_coarse"`` (the reverse).
        attention: ``"spatial"`` (one map per input), ``"channel"`` (one weight per channel,
            from globally pooled features) or ``"both"`` (logits added, then normalised).
        normalizer: ``"softmax"`` over the pair, or ``"sigmoid"`` giving ``(a, 1 - a)``.
        fuse_layers: conv-norm-act layers in each of the two conv stacks of a fuse block
            (before the attention head and after the weighted sum); 0 allowed.
        fuse_kernel: kernel size of those layers (odd).
        conv_layer: builds every conv, called as ``conv_layer(in_ch, out_ch, kernel_size,
            padding=, dilation=, bias=, device=, dtype=)`` (``nn.Conv2d``-compatible).
        norm_layer: builds the norm of every conv-norm-act layer (branches, fuse stacks),
            called with the channel count (and ``device=`` / ``dtype=`` if it takes them),
            e.g. ``nn.BatchNorm2d``, ``partial(nn.GroupNorm, 8)``, ``nn.SyncBatchNorm``;
            ``None`` -> no norm (``nn.Identity``), and then those convs have a bias (with a
            norm they have none). The attention heads and the projection always have one.
        act_layer: builds each activation, called with no arguments, e.g. ``nn.ReLU``,
            ``partial(nn.LeakyReLU, 0.2)``, ``nn.SiLU``; ``None`` -> no activation.
        spectral_norm: wrap every conv the unit builds in
            :func:`torch.nn.utils.parametrizations.spectral_norm` (as in a GAN discriminator).
        gamma_init: initial value of the learned blend scalar ``gamma``; 0 makes a new unit
            exactly the identity.
        device, dtype: where and in what precision every parameter is created (``"meta"``
            works); a ``norm_layer`` / ``conv_layer`` that takes no such keywords is called
            without them and its module moved with ``.to(device, dtype)``.

    ``spap.layers.LayerFactory(...).layer_kwargs()`` gives the four layer arguments that build
    a factory's layers (``SPAP(c, **factory.layer_kwargs())``).

    ``forward_with_attention(x)`` returns ``(y, maps)`` with one tensor per fuse block, in
    cascade order, each of shape (N, 2, H, W) / (N, 2, C', 1, 1) / (N, 2, C', H, W) for
    spatial / channel / both attention; ``maps[k][:, 0]`` weights the running (cascade)
    input, ``maps[k][:, 1]`` the branch brought in at step k, and they sum to 1.

    ``unit.save_pretrained(folder)`` / ``SPAP.from_pretrained(folder or "user/name")`` store
    and rebuild a unit in the Hugging Face layout (:mod:`spap.layers.pretrained`).
    """

    def __init__(
        self,
        channels: int,
        rates: Sequence[int] = DEFAULT_RATES,
        inner_channels: int | None = None,
        order: str = "coarse_to_fine",
        attention: str = "spatial",
        normalizer: str = "softmax",
        fuse_layers: int = 1,
        fuse_kernel: int = 3,
        *,
        conv_layer: ConvLayer = nn.Conv2d,
        norm_layer: NormLayer | None = None,
        act_layer: ActLayer | None = nn.ReLU,
        spectral_norm: bool = False,
        gamma_init: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_int("channels", channels, 1)
        rates = _check_rates(rates)
        if inner_channels is None:
            inner_channels = default_inner_channels(channels)
        _check_int("inner_channels", inner_channels, 1)
        check_choice("order", order, ORDERS)
        check_choice("attention", attention, ATTENTION_SHAPES)
        check_choice("normalizer", normalizer, NORMALIZERS)
        _check_int("fuse_layers", fuse_layers, 0)
        _check_int("fuse_kernel", fuse_kernel, 1)
        if fuse_kernel % 2 == 0:
            raise ConfigError(f"fuse_kernel must be odd (same-size convs), got {fuse_kernel}")
        spec = LayerSpec(conv_layer, norm_layer, act_layer, spectral_norm, device, dtype)

        self.channels = channels
        self.rates = rates
        self.inner_channels = inner_channels
        self.order = order
        self.attention = attention
        self.normalizer = normalizer
        self.fuse_layers = fuse_layers
        self.fuse_kernel = fuse_kernel
        self._init_args = {  # for save_pretrained
            "channels": channels,
            "rates": rates,
            "inner_channels": inner_channels,
            "order": order,
            "attention": attention,
            "normalizer": normalizer,
            "fuse_layers": fuse_layers,
            "fuse_kernel": fuse_kernel,
            "conv_layer": conv_layer,
            "norm_layer": norm_layer,
            "act_layer": act_layer,
            "spectral_norm": spectral_norm,
            "gamma_init": gamma_init,
        }

        # Branches are stored in rate order (branches.i <-> rates[i]) whatever the order.
        self.branches = nn.ModuleList(
            [
                spec.conv_block(channels, inner_channels, 1 if r == 0 else 3, dilation=max(r, 1))
                for r in rates
            ]
        )
        idx = list(range(len(rates)))
        # Branch indices in cascade order (a plain list: TorchScript infers List[int]).
        self.cascade = idx[::-1] if order == "coarse_to_fine" else idx
        self.fuse = nn.ModuleList(
            [
                AttentiveFuse(
                    inner_channels, attention, normalizer, fuse_layers, fuse_kernel, **spec.kwargs()
                )
                for _ in range(len(rates) - 1)
            ]
        )
        self.project = spec.conv(inner_channels, channels, 1)
        self.gamma = spec.scalar(gamma_init)

    def forward_with_attention(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(y, maps)``: the output and one attention tensor per fuse block (cascade order)."""
        feats: list[Tensor] = []
        for branch in self.branches:
            feats.append(branch(x))
        h = feats[self.cascade[0]]
        maps: list[Tensor] = []
        step = 1
        for block in self.fuse:
            h, a = block(h, feats[self.cascade[step]])
            maps.append(a)
            step += 1
        h = self.project(h)
        # At gamma == 0 this is 0 * h + 1 * x == x exactly (h is finite).
        y = self.gamma * h + (1.0 - self.gamma) * x
        return y, maps

    def forward(self, x: Tensor) -> Tensor:
        y, maps = self.forward_with_attention(x)
        self._store(maps)
        return y

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, rates={self.rates}, inner_channels={self.inner_channels}, "
            f"order={self.order!r}, attention={self.attention!r}, "
            f"normalizer={self.normalizer!r}, fuse_layers={self.fuse_layers}, "
            f"fuse_kernel={self.fuse_kernel}"
        )


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_rates(rates: object) -> tuple[int, ...]:
    if isinstance(rates, (str, bytes)) or not isinstance(rates, Sequence):
        raise ConfigError(f"rates must be a sequence of integers, got {rates!r}")
    rates = tuple(rates)
    if len(rates) < 2:
        what = "is empty" if not rates else f"has only {len(rates)} branch"
        raise ConfigError(f"rates {what}: SPAP needs at least two branches, e.g. {DEFAULT_RATES}")
    for r in rates:
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ConfigError(
                f"rates must be non-negative integers (0 = 1x1 branch), got {r!r} in {rates}"
            )
    if any(a >= b for a, b in zip(rates, rates[1:])):
        raise ConfigError(f"rates must be strictly increasing (sorted, no duplicates), got {rates}")
    return rates
