"""Attention maps as pictures: one API for training visuals, ``translate``, ``sample``, the
demo and the report.

Maps are recorded from any network holding SPAP or SAGAN units with
:func:`spap.layers.record_attention` (``{unit module name: [raw maps]}``); this module turns
them into displayable maps and overlays:

- :func:`attention_maps`: ``{name: (N, 1, h, w)}`` in [0, 1], one per SPAP fuse block
  (``<unit>_<k>``: the weight the cascade gives the branch brought in at step ``k``; channel
  attention averaged over channels; unscaled, so 0.5 means an even split) and one per SAGAN
  unit (``<unit>``: the attention each key position receives, averaged over all queries,
  scaled to a maximum of 1 per image);
- :func:`overlay`: a jet-coloured map blended onto images;
- :func:`attention_overlays`: both, by row name, for grids and reports.

Unit names drop the host's ``attention.`` module prefix (``attention.block_5`` ->
``block_5``; ``g64``); dots become underscores, so names work as file names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from spap.layers import spatial_attention

__all__ = ["attention_maps", "attention_overlays", "colorize", "overlay", "unit_label"]

# Anchor colours of a jet-like colormap (blue -> cyan -> green -> yellow -> red).
_ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 0.5],
        [0.0, 0.0, 1.0],
        [0.0, 1.0, 1.0],
        [1.0, 1.0, 0.0],
        [1.0, 0.0, 0.0],
        [0.5, 0.0, 0.0],
    ]
)


def colorize(maps: Tensor) -> Tensor:
    """Maps (N, 1, h, w) in [0, 1] -> RGB heat maps (N, 3, h, w) in [0, 1]."""
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    x = maps.detach().float().clamp(0, 1)[:, 0] * (len(_ANCHORS) - 1)
    i0 = x.floor().long().clamp(max=len(_ANCHORS) - 2)
    t = (x - i0).unsqueeze(-1)
    anchors = _ANCHORS.to(maps.device)
    rgb = anchors[i0] * (1 - t) + anchors[i0 + 1] * t
    return rgb.permute(0, 3, 1, 2).contiguous()


def unit_label(name: str) -> str:
    """A recorded unit's module name as shown and used in file names."""
    if name.startswith("attention."):
        name = name[len("attention.") :]
    return name.replace(".", "_") or "unit"


def _query_grid(queries: int, image_size: tuple[int, int]) -> tuple[int, int] | None:
    """(h, w) of a SAGAN unit's query map: the power-of-2 downsampling of the image whose
    ceil-divided size has ``queries`` positions."""
    h, w = image_size
    for k in range(12):
        s = 2**k
        qh, qw = math.ceil(h / s), math.ceil(w / s)
        if qh * qw == queries:
            return qh, qw
    side = math.isqrt(queries)
    return (side, side) if side * side == queries else None


def attention_maps(
    recorded: Mapping[str, list[Tensor]], image_size: tuple[int, int]
) -> dict[str, Tensor]:
    """Displayable maps ``{name: (N, 1, h, w)}`` in [0, 1] of every recorded unit (see the
    module doc); ``image_size`` (H, W) of the network's input places SAGAN's key grid."""
    out: dict[str, Tensor] = {}
    for name, maps in recorded.items():
        label = unit_label(name)
        if len(maps) == 1 and maps[0].dim() == 3:  # SAGAN (N, H*W, keys)
            attn = maps[0].detach().float()
            grid = _query_grid(attn.shape[1], image_size)
            if grid is None:
                continue
            h, w = grid
            keys = attn.shape[2]
            kh, kw = (h, w) if keys == h * w else (math.ceil(h / 2), math.ceil(w / 2))
            if kh * kw != keys:
                continue
            m = attn.mean(dim=1).reshape(-1, 1, kh, kw)
            out[label] = m / m.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
            continue
        for k, m in enumerate(maps):
            out[f"{label}_{k}"] = spatial_attention(m.detach().float())[:, 1:2].clamp(0, 1)
    return out


def overlay(images: Tensor, maps: Tensor, alpha: float = 0.5) -> Tensor:
    """Blend jet-coloured ``maps`` (N, 1, h, w) in [0, 1] onto ``images`` (N, C, H, W) in
    [-1, 1] (maps upsampled bilinearly; grey or multi-channel images shown by their first
    three or their one channel); returns (N, 3, H, W) in [-1, 1] on the CPU."""
    images = images.detach().float().cpu()
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    m = F.interpolate(
        maps.detach().float().cpu(), size=images.shape[-2:], mode="bilinear", align_corners=False
    )
    heat = colorize(m.clamp(0, 1))
    rgb = images[:, :3] if images.shape[1] >= 3 else images[:, :1].repeat(1, 3, 1, 1)
    return ((1 - alpha) * (rgb.clamp(-1, 1) + 1) / 2 + alpha * heat) * 2 - 1


def attention_overlays(
    images: Tensor, recorded: Mapping[str, list[Tensor]], prefix: str = ""
) -> dict[str, Tensor]:
    """``{"<prefix>_attn_<name>": overlay}`` for every map of :func:`attention_maps` of
    ``recorded`` (maps recorded while the network ran on ``images``)."""
    maps = attention_maps(recorded, tuple(images.shape[-2:]))
    head = f"{prefix}_attn" if prefix else "attn"
    return {f"{head}_{name}": overlay(images, m) for name, m in sorted(maps.items())}
