"""CycleGAN networks (Zhu et al. 2017) with attention units placed by config.

- :class:`ResnetGenerator`: ``c7s1-ngf, d2ngf, d4ngf, n_blocks x R4ngf, u2ngf, ungf, c7s1-C,
  tanh`` with instance norm (no affine parameters) and reflection padding, as in the
  widely used PyTorch reference implementation (junyanz/pytorch-CycleGAN-and-pix2pix).
- :class:`PatchDiscriminator`: the 70x70 PatchGAN for ``n_layers_d=3`` (4x4 convs, stride 2
  then 1, LeakyReLU 0.2, instance norm except on the first layer, a 1-channel logit map).

Both build every conv/norm/activation through one :class:`spap.layers.LayerFactory`
(generator: ``norm`` + ReLU; discriminator: ``norm`` + LeakyReLU 0.2, optionally spectral
norm), initialise the host layers N(0, 0.02) like the reference's ``init_weights('normal')``
and, with no attention configured, are exactly the plain CycleGAN networks (same parameters,
same forward; see :func:`convert_reference_generator`).

Attention placement ([ours]: names and choices of this project)
---------------------------------------------------------------
Generator, ``g_attention_at`` (any number of distinct places):

=================  ==========================================================  ============
``down:i``         after downsampling layer ``i`` (0 or 1)                       2ngf / 4ngf
``trunk_start``    before the first residual block (= ``down:1``)               4ngf, H/4
``block:i``        after residual block ``i`` (0-based)                        4ngf, H/4
``trunk_end``      after the last residual block (= ``block:<n_blocks-1>``)     4ngf, H/4
``replace:i``      in place of residual block ``i`` (the block is removed)     4ngf, H/4
``up:i``           after upsampling layer ``i`` (0 or 1)                         2ngf / ngf
=================  ==========================================================  ============

Discriminator, ``d_attention_at``: layer indices ``i`` in ``0..n_layers_d``: the unit goes
after feature layer ``i`` (layer 0 is the first 4x4 stride-2 conv, layer ``n_layers_d`` the
stride-1 conv before the logit conv).

Units are built by :func:`spap.layers.build_attention` with the *host network's* factory:
in G instance norm + ReLU, in D instance norm + LeakyReLU (spectral norm only if
``d_spectral_norm``), since the CycleGAN discriminator uses instance norm and no spectral
norm ([ours]). Units keep their own initialisation (SPAP and SAGAN start with ``gamma = 0``,
i.e. as the identity). They are stored in a separate ``attention`` module dict so that the
plain network's parameter names do not move: weights of a plain CycleGAN load unchanged
into one with attention (:func:`load_weights`).

Reference checkpoints
---------------------
:func:`load_reference_generator` reads a bare state dict of the reference implementation
(``latest_net_G_A.pth``, keys ``model.1.weight``, ``model.10.conv_block.1.weight`` ...),
infers the architecture (ngf, number of blocks, norm, dropout, channels) and returns an
equivalent :class:`ResnetGenerator`; :func:`load_reference_discriminator` does the same for
``*_net_D_A.pth``. :func:`architecture_mismatches` compares an inferred architecture with a
configured one (:func:`generator_architecture`, :func:`discriminator_architecture`) and
:func:`load_problems` lists what a non-strict :func:`load_weights` left that a strict
start must not (the checks of ``train.init_networks`` and of reference files given to
``spap translate`` / ``spap export``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from spap.config import from_dict, option, suggest
from spap.errors import CheckpointError, ConfigError
from spap.layers import ATTENTION_KINDS, LayerFactory, build_attention
from spap.layers.attention import check_attention_options
from spap.models.init import init_weights

log = logging.getLogger(__name__)

__all__ = [
    "CycleGANModelConfig",
    "LoadReport",
    "PatchDiscriminator",
    "ResnetBlock",
    "ResnetGenerator",
    "architecture_mismatches",
    "build_discriminator",
    "build_generator",
    "convert_reference_discriminator",
    "convert_reference_generator",
    "discriminator_architecture",
    "generator_architecture",
    "load_problems",
    "load_reference_discriminator",
    "load_reference_generator",
    "load_weights",
]

NORMS = ("instance", "batch", "group", "none")
PADDING_MODES = ("reflect", "replicate", "zeros")
INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")


@dataclass
class CycleGANModelConfig:
    """The ``model`` section of a CycleGAN config (both generators and discriminators)."""

    input_nc: int = option(3, "channels of domain A images", min=1)
    output_nc: int = option(3, "channels of domain B images", min=1)
    ngf: int = option(64, "generator width (filters of the first conv)", min=1)
    ndf: int = option(64, "discriminator width (filters of the first conv)", min=1)
    # At most 1000 [ours]: more are built one by one until memory runs out, which no
    # single allocation would report; checked wherever a model config is read.
    n_blocks: int = option(
        9, "residual blocks in the generator (6 for 128px, 9 for 256px)", min=0, max=1000
    )
    n_layers_d: int = option(
        3, "stride-2 layers of the PatchGAN (3 = 70x70 receptive field)", min=1
    )
    norm: str = option("instance", "norm layer of G and D", choices=NORMS)
    dropout: bool = option(False, "dropout 0.5 in the residual blocks (off in CycleGAN)")
    padding_mode: str = option(
        "reflect", "padding of the residual-block convs", choices=PADDING_MODES
    )
    init_type: str = option("normal", "weight init of the host layers", choices=INIT_TYPES)
    init_gain: float = option(0.02, "std of the normal init (gain for xavier/orthogonal)", min=0)
    d_spectral_norm: bool = option(
        False, "[ours] spectral norm on every discriminator conv (off in CycleGAN)"
    )
    attention: str = option("none", "attention units: none | sagan | spap", choices=ATTENTION_KINDS)
    g_attention_at: list[str] = option(
        default_factory=list,
        help="where the generator's units go: trunk_start, trunk_end, block:i, replace:i, "
        "down:i, up:i (ignored when attention is none)",
    )
    d_attention_at: list[int] = option(
        default_factory=list,
        help="discriminator feature layers (0..n_layers_d) followed by a unit "
        "(ignored when attention is none)",
    )
    g_attention_options: dict[str, Any] = option(
        default_factory=dict, help="options of the generator's units (see docs/spap.md)"
    )
    d_attention_options: dict[str, Any] = option(
        default_factory=dict, help="options of the discriminator's units"
    )

    def validate(self) -> None:
        if self.attention == "none":
            return
        if not self.g_attention_at and not self.d_attention_at:
            raise ConfigError(
                f"model.attention is {self.attention!r} but no place is given: set "
                "model.g_attention_at (e.g. [trunk_end]) and/or model.d_attention_at (e.g. [2])"
            )
        generator_slots(self.g_attention_at, self.n_blocks)
        discriminator_slots(self.d_attention_at, self.n_layers_d)
        check_attention_options(
            self.attention, self.g_attention_options, "model.g_attention_options"
        )
        check_attention_options(
            self.attention, self.d_attention_options, "model.d_attention_options"
        )


def _as_config(cfg: CycleGANModelConfig | Mapping[str, Any] | None) -> CycleGANModelConfig:
    if cfg is None:
        return CycleGANModelConfig()
    if isinstance(cfg, CycleGANModelConfig):
        return cfg

    return from_dict(CycleGANModelConfig, cfg)


# ----------------------------------------------------------------------------- placement

_G_PLACE = re.compile(r"^(down|block|replace|up):(-?\d+)$")


def generator_slots(places: list[str], n_blocks: int) -> dict[str, str]:
    """Map ``g_attention_at`` names to internal slots (``down_i``, ``block_i``, ``up_i``).

    Returns ``{slot: place}``; ``replace:i`` maps to ``block_i`` (the block itself is dropped).
    Raises :class:`ConfigError` for unknown names, out-of-range indices and two names that
    denote the same place.
    """
    valid = ["trunk_start", "trunk_end", "block:i", "replace:i", "down:i", "up:i"]
    slots: dict[str, str] = {}
    for place in places:
        if not isinstance(place, str):
            raise ConfigError(
                f"model.g_attention_at: expected names like 'trunk_end', got {place!r}"
            )
        name = place.strip()
        if name == "trunk_start":
            slot = "down_1"
        elif name == "trunk_end":
            slot = f"block_{n_blocks - 1}" if n_blocks > 0 else "down_1"
        else:
            m = _G_PLACE.match(name)
            if not m:
                raise ConfigError(
                    f"model.g_attention_at: unknown place {place!r}{suggest(name, valid)}; "
                    f"valid: {', '.join(valid)}"
                )
            kind, idx = m.group(1), int(m.group(2))
            limit = n_blocks if kind in ("block", "replace") else 2
            if not 0 <= idx < limit:
                raise ConfigError(
                    f"model.g_attention_at: {place!r} is out of range "
                    f"({kind}:0..{limit - 1} with n_blocks={n_blocks})"
                    if limit
                    else f"model.g_attention_at: {place!r}: the generator has no residual blocks"
                )
            slot = f"{'block' if kind == 'replace' else kind}_{idx}"
        if slot in slots:
            raise ConfigError(
                f"model.g_attention_at: {slots[slot]!r} and {place!r} are the same place"
            )
        slots[slot] = name
    return slots


def discriminator_slots(places: list[int], n_layers: int) -> dict[str, int]:
    """``{"layer_i": i}`` for ``d_attention_at``; :class:`ConfigError` for bad indices."""
    slots: dict[str, int] = {}
    for idx in places:
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx <= n_layers:
            raise ConfigError(
                f"model.d_attention_at: {idx!r} is not a layer index in 0..{n_layers} "
                f"(n_layers_d={n_layers})"
            )
        if f"layer_{idx}" in slots:
            raise ConfigError(f"model.d_attention_at: layer {idx} is given twice")
        slots[f"layer_{idx}"] = idx
    return slots


# ----------------------------------------------------------------------------- init


# ----------------------------------------------------------------------------- networks


def _conv_bias(norm: str) -> bool:
    # The reference gives every conv followed by instance norm a bias (use_bias = IN) and
    # none before batch norm; without a norm a bias is needed anyway.
    return norm in ("instance", "none")


class ResnetBlock(nn.Module):
    """``x + [conv3x3, norm, ReLU, (dropout), conv3x3, norm](x)``, same-size padding."""

    def __init__(
        self, dim: int, factory: LayerFactory, padding_mode: str = "reflect", dropout: bool = False
    ) -> None:
        super().__init__()
        bias = _conv_bias(factory.norm)
        layers: list[nn.Module] = [
            factory.conv(dim, dim, 3, padding=1, bias=bias, padding_mode=padding_mode),
            factory.norm_layer(dim),
            factory.act(),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [
            factory.conv(dim, dim, 3, padding=1, bias=bias, padding_mode=padding_mode),
            factory.norm_layer(dim),
        ]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class _AttentionHost(nn.Module):
    """Shared bits of the two networks: the attention units, applied by slot name.

    Their maps are recorded with :func:`spap.layers.record_attention` (names
    ``attention.<slot>``), as for any network holding units."""

    attention: nn.ModuleDict

    def _attend(self, slot: str, x: Tensor) -> Tensor:
        return self.attention[slot](x) if slot in self.attention else x

    @property
    def has_attention(self) -> bool:
        return len(self.attention) > 0


class ResnetGenerator(_AttentionHost):
    """CycleGAN ResNet generator with optional attention units (see module doc).

    Input (N, input_nc, H, W) with H, W multiples of 4; output (N, output_nc, H, W) in [-1, 1].
    """

    def __init__(self, cfg: CycleGANModelConfig, input_nc: int, output_nc: int) -> None:
        super().__init__()
        ngf, norm = cfg.ngf, cfg.norm
        factory = LayerFactory(norm=norm, activation="relu")
        bias = _conv_bias(norm)
        self.factory = factory
        self.input_nc, self.output_nc = input_nc, output_nc

        self.stem = nn.Sequential(
            factory.conv(input_nc, ngf, 7, padding=3, bias=bias, padding_mode="reflect"),
            factory.norm_layer(ngf),
            factory.act(),
        )
        self.down = nn.ModuleList(
            nn.Sequential(
                factory.conv(ngf * 2**i, ngf * 2 ** (i + 1), 3, stride=2, padding=1, bias=bias),
                factory.norm_layer(ngf * 2 ** (i + 1)),
                factory.act(),
            )
            for i in range(2)
        )
        slots = generator_slots(cfg.g_attention_at, cfg.n_blocks) if cfg.attention != "none" else {}
        replaced = {s for s, place in slots.items() if place.startswith("replace:")}
        self.trunk = nn.ModuleList(
            nn.Identity()
            if f"block_{i}" in replaced
            else ResnetBlock(ngf * 4, factory, cfg.padding_mode, cfg.dropout)
            for i in range(cfg.n_blocks)
        )
        self.up = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose2d(
                    ngf * 2 ** (2 - i),
                    ngf * 2 ** (1 - i),
                    3,
                    stride=2,
                    padding=1,
                    output_padding=1,
                    bias=bias,
                ),
                factory.norm_layer(ngf * 2 ** (1 - i)),
                factory.act(),
            )
            for i in range(2)
        )
        self.head = nn.Sequential(
            factory.conv(ngf, output_nc, 7, padding=3, bias=True, padding_mode="reflect"),
            nn.Tanh(),
        )
        init_weights(self, cfg.init_type, cfg.init_gain)  # host layers only: no units yet

        width = {"down_0": 2 * ngf, "down_1": 4 * ngf, "up_0": 2 * ngf, "up_1": ngf}
        self.attention = nn.ModuleDict(
            {
                slot: build_attention(
                    cfg.attention,
                    width.get(slot, 4 * ngf),
                    factory,
                    **dict(cfg.g_attention_options),
                )
                for slot in _ordered(slots, cfg.n_blocks)
            }
        )
        self.places = {slot: slots[slot] for slot in self.attention}

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i, layer in enumerate(self.down):
            x = self._attend(f"down_{i}", layer(x))
        for i, block in enumerate(self.trunk):
            x = self._attend(f"block_{i}", block(x))
        for i, layer in enumerate(self.up):
            x = self._attend(f"up_{i}", layer(x))
        return self.head(x)


def _ordered(slots: Mapping[str, Any], n_blocks: int) -> list[str]:
    """Slots in forward order (so the module dict reads like the network)."""
    order = ["down_0", "down_1"] + [f"block_{i}" for i in range(n_blocks)] + ["up_0", "up_1"]
    return [s for s in order if s in slots]


class PatchDiscriminator(_AttentionHost):
    """PatchGAN: (N, C, H, W) -> (N, 1, H', W') logits (70x70 receptive field for 3 layers)."""

    def __init__(self, cfg: CycleGANModelConfig, input_nc: int) -> None:
        super().__init__()
        ndf, n_layers = cfg.ndf, cfg.n_layers_d
        factory = LayerFactory(norm=cfg.norm, activation="lrelu", spectral_norm=cfg.d_spectral_norm)
        bias = _conv_bias(cfg.norm)
        self.factory = factory
        self.input_nc = input_nc

        layers = [nn.Sequential(factory.conv(input_nc, ndf, 4, stride=2, padding=1), factory.act())]
        widths = [ndf]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers.append(
                nn.Sequential(
                    factory.conv(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                    factory.norm_layer(ndf * mult),
                    factory.act(),
                )
            )
            widths.append(ndf * mult)
        self.layers = nn.ModuleList(layers)
        self.head = factory.conv(ndf * mult, 1, 4, stride=1, padding=1)
        init_weights(self, cfg.init_type, cfg.init_gain)

        slots = discriminator_slots(cfg.d_attention_at, n_layers) if cfg.attention != "none" else {}
        self.attention = nn.ModuleDict(
            {
                f"layer_{i}": build_attention(
                    cfg.attention, widths[i], factory, **dict(cfg.d_attention_options)
                )
                for i in sorted(slots.values())
            }
        )

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = self._attend(f"layer_{i}", layer(x))
        return self.head(x)


def build_generator(
    cfg: CycleGANModelConfig | Mapping[str, Any] | None = None,
    input_nc: int | None = None,
    output_nc: int | None = None,
) -> ResnetGenerator:
    """The generator of a ``model`` config section (G_A: A->B by default; swap the channel
    counts for G_B)."""
    cfg = _as_config(cfg)
    g = ResnetGenerator(
        cfg,
        cfg.input_nc if input_nc is None else input_nc,
        cfg.output_nc if output_nc is None else output_nc,
    )
    g.model_config = cfg  # what an export stores beside the weights
    return g


def build_discriminator(
    cfg: CycleGANModelConfig | Mapping[str, Any] | None = None, input_nc: int | None = None
) -> PatchDiscriminator:
    """The PatchGAN of a ``model`` config section (D_A judges domain B: pass output_nc)."""
    cfg = _as_config(cfg)
    return PatchDiscriminator(cfg, cfg.output_nc if input_nc is None else input_nc)


# ----------------------------------------------------------------------------- weights

#: Tensors a network holds that a weights file may lack without changing the function:
#: spectral norm's power-iteration vectors, batch norm's batch counter (absent from files
#: saved before PyTorch 0.4.1).
_STATE_ONLY = ("._u", "._v", ".num_batches_tracked")


def _natural(key: str) -> list[tuple[int, Any]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in key.split(".")]


def module_names(keys: list[str], limit: int | None = 6) -> str:
    """``"trunk.6, trunk.7, ..."``: the modules (first two name parts) of tensor ``keys``,
    in network order; at most ``limit`` of them (None: all)."""
    prefixes = sorted({".".join(k.split(".")[:2]) for k in keys}, key=_natural)
    if limit is None or len(prefixes) <= limit:
        return ", ".join(prefixes)
    return ", ".join(prefixes[:limit]) + f", ... ({len(prefixes)} modules)"


@dataclass
class LoadReport:
    """What :func:`load_weights` did: copied, new (kept at init), dropped (no place in the
    network) and, with ``skip_mismatched``, mismatched (another shape; kept at init) tensor
    names."""

    loaded: list[str]
    new: list[str]
    dropped: list[str]
    mismatched: list[str] = dataclasses.field(default_factory=list)

    def summary(self, limit: int | None = 6) -> str:
        """One line; ``limit`` modules per list (None: all)."""
        out = f"{len(self.loaded)} tensors loaded"
        if self.new:
            out += (
                f"; {len(self.new)} new, kept at their initial values "
                f"({module_names(self.new, limit)})"
            )
        if self.mismatched:
            out += (
                f"; {len(self.mismatched)} of another shape, kept at their initial values "
                f"({module_names(self.mismatched, limit)})"
            )
        if self.dropped:
            out += f"; {len(self.dropped)} not used ({module_names(self.dropped, limit)})"
        return out


@torch.no_grad()
def load_weights(
    model: nn.Module,
    state: Mapping[str, Tensor],
    source: str = "weights",
    skip_mismatched: bool = False,
) -> LoadReport:
    """Copy every tensor of ``state`` whose name exists in ``model`` (non-strict).

    Names missing from ``state`` (e.g. attention units added to a plain network) keep their
    values; names of ``state`` absent from ``model`` (e.g. a block replaced by a unit) are
    reported as dropped. A shape mismatch raises :class:`CheckpointError` (the architectures
    differ), or with ``skip_mismatched`` leaves that tensor at its value and reports it; no
    name in common at all raises either way.
    """
    own = model.state_dict()
    loaded, dropped, mismatched = [], [], []
    for key, value in state.items():
        target = key
        if target not in own and target.endswith(".weight"):
            sn_key = target[: -len("weight")] + "parametrizations.weight.original"
            target = sn_key if sn_key in own else target
        if target not in own:
            dropped.append(key)
            continue
        if own[target].shape != value.shape:
            if skip_mismatched:
                mismatched.append(target)
                continue
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(value.shape)} but the network expects "
                f"{tuple(own[target].shape)} (a different architecture: check ngf/ndf/n_blocks)"
            )
        own[target].copy_(value)
        loaded.append(target)
    if not loaded:
        raise CheckpointError(f"{source}: no tensor matches this network (wrong file or network?)")
    done = set(loaded) | set(mismatched)
    new = [k for k in own if k not in done]
    return LoadReport(loaded, new, dropped, mismatched)


def load_problems(model: nn.Module, report: LoadReport) -> list[str]:
    """What a load left that a *strict* fine-tuning start must not: host tensors the file
    lacks (they kept their initial values), tensors of the file the network has no place
    for, tensors of another shape. Allowed: attention units absent from the file (added on
    purpose), blocks the network replaces by units (``replace:i``) and state-only tensors
    (spectral norm's vectors, batch norm's counter)."""
    replaced = tuple(
        f"trunk.{i}."
        for i, b in enumerate(getattr(model, "trunk", ()))
        if isinstance(b, nn.Identity)
    )
    new = [k for k in report.new if not k.startswith("attention.") and not k.endswith(_STATE_ONLY)]
    dropped = [
        k for k in report.dropped if not k.startswith(replaced) and not k.endswith(_STATE_ONLY)
    ]
    out = []
    if new:
        out.append(f"not in the file: {module_names(new)}")
    if dropped:
        out.append(f"in the file, not in the network: {module_names(dropped)}")
    if report.mismatched:
        out.append(f"other shapes in the file: {module_names(report.mismatched)}")
    return out


def generator_architecture(
    cfg: CycleGANModelConfig | Mapping[str, Any] | None = None,
    input_nc: int | None = None,
    output_nc: int | None = None,
) -> dict[str, Any]:
    """A generator's architecture in the keys :func:`convert_reference_generator` reports
    (channels as :func:`build_generator` takes them)."""
    cfg = _as_config(cfg)
    return {
        "ngf": cfg.ngf,
        "n_blocks": cfg.n_blocks,
        "norm": cfg.norm,
        "dropout": cfg.dropout,
        "padding_mode": cfg.padding_mode,
        "input_nc": cfg.input_nc if input_nc is None else input_nc,
        "output_nc": cfg.output_nc if output_nc is None else output_nc,
    }


def discriminator_architecture(
    cfg: CycleGANModelConfig | Mapping[str, Any] | None = None, input_nc: int | None = None
) -> dict[str, Any]:
    """A PatchGAN's architecture in the keys :func:`convert_reference_discriminator` reports."""
    cfg = _as_config(cfg)
    return {
        "ndf": cfg.ndf,
        "n_layers_d": cfg.n_layers_d,
        "norm": cfg.norm,
        "input_nc": cfg.output_nc if input_nc is None else input_nc,
    }


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def architecture_mismatches(
    found: Mapping[str, Any],
    expected: Mapping[str, Any],
    found_in: str = "in the file",
    expected_in: str = "in the config",
) -> list[str]:
    """``["n_blocks 9 in the file, 6 in the config", ...]``: every key of ``expected`` to
    which ``found`` gives another value (keys ``found`` lacks are not compared)."""
    return [
        f"{key} {_show(found[key])} {found_in}, {_show(value)} {expected_in}"
        for key, value in expected.items()
        if key in found and found[key] != value
    ]


def _read_state(
    path_or_state: str | os.PathLike | Mapping[str, Tensor], source: str | None = None
) -> tuple[dict[str, Tensor], str]:
    if isinstance(path_or_state, Mapping):
        state = dict(path_or_state)
        name = source or "state dict"
    else:
        name = os.fspath(path_or_state)
        try:
            state = torch.load(name, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"no such file: {name}") from None
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(
                f"{name}: not a readable PyTorch state dict ({first[:200]})"
            ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        if isinstance(state, Mapping) and state.get("format") == "spap-checkpoint":
            raise CheckpointError(f"{name}: a spap checkpoint, not a reference CycleGAN state dict")
        raise CheckpointError(
            f"{name}: not a bare state dict of tensors (a reference CycleGAN weights file)"
        )
    # Saved from nn.DataParallel: "module.model.1.weight".
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    return state, name


def _modules(state: Mapping[str, Tensor], name: str) -> dict[int, dict[str, Tensor]]:
    """``model.<i>.<rest>`` keys grouped by ``i``."""
    out: dict[int, dict[str, Tensor]] = {}
    for key, value in state.items():
        m = re.match(r"^model\.(\d+)\.(.+)$", key)
        if not m:
            unet = key.startswith("model.model.")
            raise CheckpointError(
                f"{name}: a U-Net generator (pix2pix's unet_128 / unet_256), not a CycleGAN "
                "ResNet generator"
                if unet
                else f"{name}: unexpected key {key!r}: not a reference CycleGAN state dict "
                "(keys model.<i>.*)"
            )
        out.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return out


def _reference_kind(mods: Mapping[int, Mapping[str, Tensor]]) -> str | None:
    """ "generator" (its first conv is ``model.1``, after a padding layer), "discriminator"
    (``model.0``) or None."""

    def conv(i: int) -> bool:
        w = mods.get(i, {}).get("weight")
        return w is not None and w.dim() == 4

    if conv(0):
        return "discriminator"
    if conv(1):
        return "generator"
    return None


_RUNNING = ("running_mean", "running_var", "num_batches_tracked")


def _norm_params(params: Mapping[str, Tensor], norm: str) -> dict[str, Tensor]:
    """Norm-layer tensors to keep: all of BatchNorm's; none of an affine-free InstanceNorm
    (old reference checkpoints carry running statistics that its loader deletes too)."""
    if norm == "batch":
        return dict(params)
    return {k: v for k, v in params.items() if k not in _RUNNING}


def _zero_biases(out: dict[str, Tensor], transposed: tuple[str, ...] = ()) -> None:
    """``norm='none'``: the reference's convs have no bias there, ours have one; a zero
    bias is the same function."""
    for key in [k for k in out if k.endswith(".weight")]:
        bias = key[: -len("weight")] + "bias"
        if bias not in out:
            w = out[key]
            out[bias] = w.new_zeros(w.shape[1] if key.startswith(transposed) else w.shape[0])


def convert_reference_generator(
    state: str | os.PathLike | Mapping[str, Tensor], source: str | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Reference ``ResnetGenerator`` state dict -> (our state dict, architecture).

    The architecture dict holds ``ngf, n_blocks, norm, dropout, padding_mode, input_nc,
    output_nc`` as read from the tensors (``norm``: batch if the norm layers have weights,
    instance if the convs have biases, none otherwise; ``padding_mode`` is always
    ``reflect``, the only padding of the reference's generator). Raises
    :class:`CheckpointError` naming the file if the layout is not the reference's
    generator's (a discriminator's, a U-Net's, a spap checkpoint). ``source`` names a
    state dict given as a mapping in messages (a file is named by its path).
    """
    raw, name = _read_state(state, source)
    mods = _modules(raw, name)
    if _reference_kind(mods) == "discriminator":
        raise CheckpointError(
            f"{name}: a reference PatchGAN discriminator (NLayerDiscriminator), not a "
            "ResNet generator"
        )
    try:
        stem = mods[1]["weight"]
        ngf, input_nc = int(stem.shape[0]), int(stem.shape[1])
        blocks = sorted(i for i, p in mods.items() if any(k.startswith("conv_block.") for k in p))
        n_blocks = len(blocks)
        if blocks and blocks != list(range(10, 10 + n_blocks)):
            raise KeyError("residual blocks are not model.10 ...")
        if "weight" in mods.get(2, {}):
            norm = "batch"
        elif "bias" in mods[1]:
            norm = "instance"
        else:
            norm = "none"
        dropout = (
            bool(blocks)
            and "conv_block.6.weight" in mods[blocks[0]]
            and mods[blocks[0]]["conv_block.6.weight"].dim() == 4
        )
        head = 10 + n_blocks + 7
        output_nc = int(mods[head]["weight"].shape[0])
    except (KeyError, IndexError) as exc:
        raise CheckpointError(
            f"{name}: not a reference CycleGAN ResNet generator state dict (missing {exc})"
        ) from None

    conv2 = 6 if dropout else 5
    # reference module index -> (our module prefix, is a norm layer)
    table: dict[int, tuple[str, bool]] = {
        1: ("stem.0", False),
        2: ("stem.1", True),
        4: ("down.0.0", False),
        5: ("down.0.1", True),
        7: ("down.1.0", False),
        8: ("down.1.1", True),
        10 + n_blocks: ("up.0.0", False),
        11 + n_blocks: ("up.0.1", True),
        13 + n_blocks: ("up.1.0", False),
        14 + n_blocks: ("up.1.1", True),
        head: ("head.0", False),
    }
    block_table = {
        "conv_block.1": ("conv_block.0", False),
        "conv_block.2": ("conv_block.1", True),
        f"conv_block.{conv2}": (f"conv_block.{4 if dropout else 3}", False),
        f"conv_block.{conv2 + 1}": (f"conv_block.{5 if dropout else 4}", True),
    }
    out: dict[str, Tensor] = {}
    for idx, params in mods.items():
        if 10 <= idx < 10 + n_blocks:
            for key, value in params.items():
                sub, leaf = key.rsplit(".", 1)
                if sub not in block_table:
                    raise CheckpointError(f"{name}: unexpected reference key model.{idx}.{key}")
                ours, is_norm = block_table[sub]
                if is_norm and norm != "batch" and leaf in _RUNNING:
                    continue
                out[f"trunk.{idx - 10}.{ours}.{leaf}"] = value
            continue
        if idx not in table:
            raise CheckpointError(
                f"{name}: unexpected reference key model.{idx}.{next(iter(params))}"
            )
        ours, is_norm = table[idx]
        kept = _norm_params(params, norm) if is_norm else params
        for leaf, value in kept.items():
            out[f"{ours}.{leaf}"] = value
    if norm == "none":
        _zero_biases(out, transposed=("up.",))
    arch = {
        "ngf": ngf,
        "n_blocks": n_blocks,
        "norm": norm,
        "dropout": dropout,
        "padding_mode": "reflect",
        "input_nc": input_nc,
        "output_nc": output_nc,
    }
    return out, arch


def convert_reference_discriminator(
    state: str | os.PathLike | Mapping[str, Tensor], source: str | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Reference ``NLayerDiscriminator`` state dict -> (our state dict, architecture:
    ``ndf, n_layers_d, norm, input_nc``)."""
    raw, name = _read_state(state, source)
    mods = _modules(raw, name)
    if _reference_kind(mods) == "generator":
        raise CheckpointError(f"{name}: a reference ResNet generator, not a PatchGAN discriminator")
    convs = sorted(i for i, p in mods.items() if "weight" in p and p["weight"].dim() == 4)
    n_layers = len(convs) - 2
    if n_layers < 1 or convs[0] != 0:
        raise CheckpointError(
            f"{name}: not a reference CycleGAN PatchGAN (NLayerDiscriminator) state dict"
        )
    middle = convs[1:-1]
    if any(
        "running_mean" in mods.get(i + 1, {}) and "weight" in mods.get(i + 1, {}) for i in middle
    ):
        norm = "batch"
    elif all("bias" in mods[i] for i in middle):
        norm = "instance"
    else:
        norm = "none"
    table: dict[int, tuple[str, bool]] = {0: ("layers.0.0", False), convs[-1]: ("head", False)}
    for k, idx in enumerate(middle, start=1):
        table[idx] = (f"layers.{k}.0", False)
        table[idx + 1] = (f"layers.{k}.1", True)
    out: dict[str, Tensor] = {}
    for idx, params in mods.items():
        if idx not in table:
            raise CheckpointError(
                f"{name}: unexpected reference key model.{idx}.{next(iter(params))}"
            )
        ours, is_norm = table[idx]
        for leaf, value in (_norm_params(params, norm) if is_norm else params).items():
            out[f"{ours}.{leaf}"] = value
    if norm == "none":
        _zero_biases(out)
    arch = {
        "ndf": int(mods[0]["weight"].shape[0]),
        "n_layers_d": n_layers,
        "norm": norm,
        "input_nc": int(mods[0]["weight"].shape[1]),
    }
    return out, arch


def _load_strict(net: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{source}: weights do not fit ({first[:200]})") from None


def _fail_on(problems: list[str], source: str) -> None:
    if problems:
        raise CheckpointError(f"{source}: {'; '.join(problems)}")


def load_reference_generator(
    path: str | os.PathLike | Mapping[str, Tensor],
    n_blocks: int | None = None,
    ngf: int | None = None,
    norm: str | None = None,
    dropout: bool | None = None,
    model_cfg: CycleGANModelConfig | Mapping[str, Any] | None = None,
) -> ResnetGenerator:
    """A :class:`ResnetGenerator` holding a reference CycleGAN generator's weights.

    The architecture is read from the file; ``n_blocks`` / ``ngf`` / ``norm`` / ``dropout``,
    if given, are checked against it. With ``model_cfg`` (e.g. one with SPAP units) that
    network is built instead (channels from the file) and its architecture checked against
    the file's (ngf, n_blocks, norm, dropout, padding); it is loaded non-strictly: the
    attention units stay at their initial values (SPAP is the identity at init, so the
    outputs are unchanged). Every difference is named in one :class:`CheckpointError`.
    """
    source = "state dict" if isinstance(path, Mapping) else os.fspath(path)
    state, arch = convert_reference_generator(path)
    given = {"n_blocks": n_blocks, "ngf": ngf, "norm": norm, "dropout": dropout}
    given = {k: v for k, v in given.items() if v is not None}
    _fail_on(architecture_mismatches(arch, given, expected_in="given"), source)
    if model_cfg is None:
        cfg = CycleGANModelConfig(
            ngf=arch["ngf"],
            n_blocks=arch["n_blocks"],
            norm=arch["norm"],
            dropout=arch["dropout"],
            input_nc=arch["input_nc"],
            output_nc=arch["output_nc"],
        )
        g = build_generator(cfg)
        _load_strict(g, state, source)
        return g
    cfg = _as_config(model_cfg)
    expected = generator_architecture(cfg, arch["input_nc"], arch["output_nc"])
    _fail_on(architecture_mismatches(arch, expected, expected_in="in the model config"), source)
    g = build_generator(cfg, arch["input_nc"], arch["output_nc"])
    report = load_weights(g, state, source, skip_mismatched=True)
    _fail_on(load_problems(g, report), source)
    log.info("%s: %s", source, report.summary())
    return g


def load_reference_discriminator(
    path: str | os.PathLike | Mapping[str, Tensor],
    model_cfg: CycleGANModelConfig | Mapping[str, Any] | None = None,
) -> PatchDiscriminator:
    """A :class:`PatchDiscriminator` holding a reference PatchGAN's weights (see
    :func:`load_reference_generator`)."""
    source = "state dict" if isinstance(path, Mapping) else os.fspath(path)
    state, arch = convert_reference_discriminator(path)
    if model_cfg is None:
        cfg = dataclasses.replace(
            CycleGANModelConfig(), ndf=arch["ndf"], n_layers_d=arch["n_layers_d"], norm=arch["norm"]
        )
        d = build_discriminator(cfg, arch["input_nc"])
        _load_strict(d, state, source)
        return d
    cfg = _as_config(model_cfg)
    expected = discriminator_architecture(cfg, arch["input_nc"])
    _fail_on(architecture_mismatches(arch, expected, expected_in="in the model config"), source)
    d = build_discriminator(cfg, arch["input_nc"])
    report = load_weights(d, state, source, skip_mismatched=True)
    _fail_on(load_problems(d, report), source)
    log.info("%s: %s", source, report.summary())
    return d
