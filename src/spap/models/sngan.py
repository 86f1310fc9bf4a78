"""SNGAN-style ResNet generator and discriminator with optional attention units.

The networks follow Miyato et al. 2018 (spectral normalisation) in the ResNet form used by
the SNGAN, SAGAN, BigGAN and Mimicry code bases:

- **Generator**: ``z -> linear -> 4x4xC``, then up-ResBlocks (BN, ReLU, nearest 2x
  upsample, 3x3 conv, BN, ReLU, 3x3 conv; 1x1 conv shortcut), then BN, ReLU, 3x3 conv
  to RGB and ``tanh``.
- **Discriminator**: an "optimised" first block (conv, ReLU, conv, avg-pool; no
  pre-activation), pre-activation down-ResBlocks (ReLU, conv, ReLU, conv, 2x2 avg-pool;
  1x1 conv shortcut), ReLU, global sum pooling, linear to one logit. Spectral norm on every
  conv and linear of D; optional in G (as in SAGAN).

Channel widths per resolution come from the BigGAN architecture table (:data:`G_ARCH`,
:data:`D_ARCH`), scaled by the width ``ch``. Every conv/linear/norm/activation is made by
a :class:`spap.layers.LayerFactory`, so BN/SN are switched in one place.

Attention units (SAGAN self-attention or SPAP) are placed after the block whose output
has a given resolution, e.g. ``g_attention={64: "spap"}`` puts one SPAP unit after the
generator block that outputs 64x64 features.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from spap.config import option
from spap.errors import ConfigError
from spap.layers import ATTENTION_KINDS, LayerFactory, build_attention
from spap.layers.attention import check_attention_options
from spap.models.init import init_weights
from spap.seeds import derive_seed

__all__ = [
    "ATTENTION_KINDS",
    "D_ARCH",
    "G_ARCH",
    "SNGANConfig",
    "SNGANDiscriminator",
    "SNGANGenerator",
    "build_discriminator",
    "build_generator",
    "latents",
]

#: Generator channel multipliers per resolution (BigGAN table): entry 0 is the width of
#: the 4x4 input, entry i>0 the output width of up-block i (each block doubles the size).
G_ARCH: dict[int, tuple[int, ...]] = {
    32: (4, 4, 4, 4),
    64: (16, 16, 8, 4, 2),
    128: (16, 16, 8, 4, 2, 1),
    256: (16, 16, 8, 8, 4, 2, 1),
}

#: Discriminator per resolution (BigGAN table): output width multiplier of each block and
#: whether the block halves the size. The first block is the "optimised" one.
D_ARCH: dict[int, tuple[tuple[int, ...], tuple[bool, ...]]] = {
    32: ((4, 4, 4, 4), (True, True, False, False)),
    64: ((1, 2, 4, 8, 16), (True, True, True, True, False)),
    128: ((1, 2, 4, 8, 16, 16), (True, True, True, True, True, False)),
    256: ((1, 2, 4, 8, 8, 16, 16), (True, True, True, True, True, True, False)),
}


def g_block_resolutions(resolution: int) -> list[int]:
    """Output resolution of each generator block (where attention may go)."""
    return [4 * 2 ** (i + 1) for i in range(len(G_ARCH[resolution]) - 1)]


def d_block_resolutions(resolution: int) -> list[int]:
    """Output resolution of each discriminator block (where attention may go)."""
    out, size = [], resolution
    for down in D_ARCH[resolution][1]:
        size = size // 2 if down else size
        out.append(size)
    return out


# ----------------------------------------------------------------------------- noise


def latents(seed: int, indices: Iterable[int], z_dim: int) -> torch.Tensor:
    """Latents ``z ~ N(0, I)`` on the CPU, one row per index.

    Row ``k`` depends only on ``(seed, indices[k])``: sample ``i`` is the same image however
    the samples are batched, and a resumed sampling run continues with the same images.
    """
    rows = [
        torch.randn(z_dim, generator=torch.Generator().manual_seed(derive_seed(seed, i)))
        for i in indices
    ]
    return torch.stack(rows) if rows else torch.empty(0, z_dim)


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass
class SNGANConfig:
    """SNGAN-style ResNet G and D, with attention units at chosen resolutions."""

    resolution: int = option(128, "image size (G output, D input)", choices=tuple(G_ARCH))
    z_dim: int = option(128, "latent size", min=1)
    g_ch: int = option(64, "generator width: channels = g_ch x the architecture table", min=1)
    d_ch: int = option(64, "discriminator width: channels = d_ch x the architecture table", min=1)
    g_spectral_norm: bool = option(False, "spectral norm on the generator's convs (as SAGAN)")
    init: str = option(
        "xavier",
        "weight init of the ResNet layers: xavier (SNGAN code: gain sqrt(2) in residual "
        "convs, 1 elsewhere), orthogonal (BigGAN) or default (PyTorch's)",
        choices=("xavier", "orthogonal", "default"),
    )
    g_attention: dict[int, str] = option(
        default_factory=dict,
        help="attention units in G: {resolution: none|sagan|spap}, placed after the block "
        "that outputs that resolution (e.g. {64: spap})",
    )
    d_attention: dict[int, str] = option(
        default_factory=dict,
        help="attention units in D: {resolution: none|sagan|spap}, placed after the first "
        "block that outputs that resolution",
    )
    spap_options: dict[str, Any] = option(
        default_factory=dict,
        help="constructor options of every SPAP unit (e.g. {order: fine_to_coarse, rates: [1, 2, 4]})",
    )
    sagan_options: dict[str, Any] = option(
        default_factory=dict, help="constructor options of every SAGAN self-attention unit"
    )

    def validate(self) -> None:
        check_attention_options("spap", self.spap_options, "model.spap_options")
        check_attention_options("sagan", self.sagan_options, "model.sagan_options")
        self.g_attention = _attention_map(
            self.g_attention,
            g_block_resolutions(self.resolution),
            "model.g_attention",
            self.resolution,
        )
        self.d_attention = _attention_map(
            self.d_attention,
            d_block_resolutions(self.resolution),
            "model.d_attention",
            self.resolution,
        )


def _attention_map(
    value: Mapping[Any, Any], valid: list[int], key: str, resolution: int
) -> dict[int, str]:
    """Normalise ``{resolution: kind}`` (keys may be strings after a round trip) and check it."""
    out: dict[int, str] = {}
    for k, kind in value.items():
        try:
            res = int(k)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: resolution {k!r} is not an integer") from None
        if kind is None:
            kind = "none"
        if kind not in ATTENTION_KINDS:
            raise ConfigError(f"{key}.{res}: {kind!r} is not one of {', '.join(ATTENTION_KINDS)}")
        if res not in valid:
            raise ConfigError(
                f"{key}: no block outputs {res}x{res} features at resolution {resolution} "
                f"(choose from {sorted(set(valid))})"
            )
        out[res] = kind
    return out


# ----------------------------------------------------------------------------- blocks


class GBlock(nn.Module):
    """Pre-activation up-ResBlock: BN-ReLU-up-conv3-BN-ReLU-conv3 + up-conv1 shortcut."""

    def __init__(self, cin: int, cout: int, factory: LayerFactory) -> None:
        super().__init__()
        self.bn1 = factory.norm_layer(cin)
        self.act1 = factory.act()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv1 = factory.conv(cin, cout, kernel_size=3, padding=1)
        self.bn2 = factory.norm_layer(cout)
        self.act2 = factory.act()
        self.conv2 = factory.conv(cout, cout, kernel_size=3, padding=1)
        self.shortcut = factory.conv(cin, cout, kernel_size=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.up(self.act1(self.bn1(x))))
        h = self.conv2(self.act2(self.bn2(h)))
        return h + self.shortcut(self.up(x))


class DBlock(nn.Module):
    """Down-ResBlock. ``optimized`` (first block): no pre-activation, shortcut pools first."""

    def __init__(
        self,
        cin: int,
        cout: int,
        factory: LayerFactory,
        downsample: bool = True,
        optimized: bool = False,
    ) -> None:
        super().__init__()
        self.optimized = optimized
        self.pre_act = nn.Identity() if optimized else factory.act()
        self.conv1 = factory.conv(cin, cout, kernel_size=3, padding=1)
        self.act = factory.act()
        self.conv2 = factory.conv(cout, cout, kernel_size=3, padding=1)
        self.pool = nn.AvgPool2d(2) if downsample else nn.Identity()
        learnable = cin != cout or downsample or optimized
        self.shortcut = (
            factory.conv(cin, cout, kernel_size=1, padding=0) if learnable else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre_act(x)  # LayerFactory activations are out of place
        h = self.pool(self.conv2(self.act(self.conv1(h))))
        sc = self.shortcut(self.pool(x)) if self.optimized else self.pool(self.shortcut(x))
        return h + sc


# ----------------------------------------------------------------------------- networks


def _sngan_gain(name: str, m: nn.Module) -> float:
    # the SNGAN code's xavier gains: sqrt(2) in the residual 3x3 convs, 1 elsewhere
    return (
        math.sqrt(2.0)
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and "conv" in name
        else 1.0
    )


def _init_layers(modules: list[nn.Module], scheme: str) -> None:
    """SNGAN/BigGAN init of the ResNet layers (attention units keep their own init)."""
    schemes = {"xavier": ("xavier_uniform", _sngan_gain), "orthogonal": ("orthogonal", 1.0)}
    if scheme == "default":
        return
    name, gain = schemes[scheme]
    for root in modules:
        init_weights(root, name, gain, batch_norm=False)


class _AttentionHost(nn.Module):
    """Shared helpers for networks holding attention units in ``self.attention``."""

    attention: nn.ModuleDict

    def attention_units(self) -> dict[str, nn.Module]:
        """The attention units by name (``"g64"`` style: network and resolution)."""
        return dict(self.attention.items())


class SNGANGenerator(_AttentionHost):
    """SNGAN/BigGAN-style ResNet generator: ``z (N, z_dim) -> image (N, 3, R, R)`` in [-1, 1]."""

    def __init__(
        self,
        resolution: int = 128,
        z_dim: int = 128,
        ch: int = 64,
        spectral_norm: bool = False,
        attention: Mapping[int, str] | None = None,
        attention_options: Mapping[str, Mapping[str, Any]] | None = None,
        init: str = "xavier",
    ) -> None:
        super().__init__()
        if resolution not in G_ARCH:
            raise ConfigError(
                f"unsupported generator resolution {resolution} (choose from {sorted(G_ARCH)})"
            )
        self.resolution, self.z_dim = resolution, z_dim
        factory = LayerFactory(norm="batch", spectral_norm=spectral_norm, activation="relu")
        widths = [ch * m for m in G_ARCH[resolution]]
        self.bottom = 4
        self.linear = factory.linear(z_dim, widths[0] * self.bottom * self.bottom)
        self.blocks = nn.ModuleList(
            GBlock(widths[i], widths[i + 1], factory) for i in range(len(widths) - 1)
        )
        self.out_bn = factory.norm_layer(widths[-1])
        self.out_act = factory.act()
        self.out_conv = factory.conv(widths[-1], 3, kernel_size=3, padding=1)
        _init_layers([self.linear, self.blocks, self.out_conv], init)
        self.attention = nn.ModuleDict()
        self._attention_after: dict[int, str] = {}
        _place_attention(
            self,
            "g",
            g_block_resolutions(resolution),
            widths[1:],
            attention,
            attention_options,
            factory,
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.linear(z).view(z.shape[0], -1, self.bottom, self.bottom)
        for i, block in enumerate(self.blocks):
            h = block(h)
            name = self._attention_after.get(i)
            if name is not None:
                h = self.attention[name](h)
        return torch.tanh(self.out_conv(self.out_act(self.out_bn(h))))

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``n`` images in [-1, 1]; ``z`` is drawn on the CPU.

        With ``seed``, image ``i`` uses :func:`latents` ``(seed, i)`` (the images
        ``spap sample --seed`` writes); otherwise ``torch.randn`` with ``generator``.
        Uses the current train/eval mode (call ``.eval()`` for batch-independent BN).
        """
        if seed is not None:
            z = latents(seed, range(n), self.z_dim)
        else:
            z = torch.randn(n, self.z_dim, generator=generator)
        device = device if device is not None else next(self.parameters()).device
        return self(z.to(device))


class SNGANDiscriminator(_AttentionHost):
    """SNGAN/BigGAN-style ResNet discriminator: ``image (N, 3, R, R) -> logit (N,)``."""

    def __init__(
        self,
        resolution: int = 128,
        ch: int = 64,
        attention: Mapping[int, str] | None = None,
        attention_options: Mapping[str, Mapping[str, Any]] | None = None,
        init: str = "xavier",
    ) -> None:
        super().__init__()
        if resolution not in D_ARCH:
            raise ConfigError(
                f"unsupported discriminator resolution {resolution} (choose from {sorted(D_ARCH)})"
            )
        self.resolution = resolution
        factory = LayerFactory(norm="none", spectral_norm=True, activation="relu")
        mults, downs = D_ARCH[resolution]
        widths = [ch * m for m in mults]
        cins = [3, *widths[:-1]]
        self.blocks = nn.ModuleList(
            DBlock(cin, cout, factory, downsample=down, optimized=i == 0)
            for i, (cin, cout, down) in enumerate(zip(cins, widths, downs))
        )
        self.out_act = factory.act()
        self.linear = factory.linear(widths[-1], 1)
        _init_layers([self.blocks, self.linear], init)
        self.attention = nn.ModuleDict()
        self._attention_after: dict[int, str] = {}
        _place_attention(
            self,
            "d",
            d_block_resolutions(resolution),
            widths,
            attention,
            attention_options,
            factory,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            name = self._attention_after.get(i)
            if name is not None:
                h = self.attention[name](h)
        h = self.out_act(h).sum(dim=(2, 3))
        return self.linear(h).flatten()


def _place_attention(
    net: _AttentionHost,
    prefix: str,
    block_res: list[int],
    block_ch: list[int],
    attention: Mapping[int, str] | None,
    options: Mapping[str, Mapping[str, Any]] | None,
    factory: LayerFactory,
) -> None:
    """Build one unit after the first block with each requested output resolution."""
    for res, kind in sorted((attention or {}).items()):
        res = int(res)
        if kind == "none":
            continue
        if kind not in ATTENTION_KINDS:
            raise ConfigError(f"attention kind {kind!r} is not one of {', '.join(ATTENTION_KINDS)}")
        if res not in block_res:
            raise ConfigError(
                f"no {prefix.upper()} block outputs {res}x{res} features (choose from {sorted(set(block_res))})"
            )
        i = block_res.index(res)
        name = f"{prefix}{res}"
        opts = dict((options or {}).get(kind, {}))
        net.attention[name] = build_attention(kind, block_ch[i], factory=factory, **opts)
        net._attention_after[i] = name


# ----------------------------------------------------------------------------- builders


def _options(cfg: SNGANConfig) -> dict[str, dict[str, Any]]:
    return {"spap": dict(cfg.spap_options), "sagan": dict(cfg.sagan_options)}


def build_generator(cfg: SNGANConfig) -> SNGANGenerator:
    """The generator described by a model config section."""
    g = SNGANGenerator(
        resolution=cfg.resolution,
        z_dim=cfg.z_dim,
        ch=cfg.g_ch,
        spectral_norm=cfg.g_spectral_norm,
        attention=cfg.g_attention,
        attention_options=_options(cfg),
        init=cfg.init,
    )
    g.model_config = cfg  # what an export stores beside the weights
    return g


def build_discriminator(cfg: SNGANConfig) -> SNGANDiscriminator:
    """The discriminator described by a model config section."""
    return SNGANDiscriminator(
        resolution=cfg.resolution,
        ch=cfg.d_ch,
        attention=cfg.d_attention,
        attention_options=_options(cfg),
        init=cfg.init,
    )
