"""Attention maps as coloured heatmaps and as overlays on images."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


def normalize_map(maps: torch.Tensor, per_image: bool = True) -> torch.Tensor:
    """Scale maps (N, 1, h, w) to [0, 1] (per image by default)."""
    maps = maps.detach().float()
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if per_image:
        lo = maps.amin(dim=(1, 2, 3), keepdim=True)
        hi = maps.amax(dim=(1, 2, 3), keepdim=True)
    else:
        lo, hi = maps.min(), maps.max()
    return (maps - lo) / (hi - lo).clamp_min(1e-8)


def colorize(maps: torch.Tensor) -> torch.Tensor:
    """Maps (N, 1, h, w) in [0, 1] -> RGB heatmaps (N, 3, h, w) in [0, 1]."""
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    x = maps.clamp(0, 1)[:, 0] * (len(_ANCHORS) - 1)
    i0 = x.floor().long().clamp(max=len(_ANCHORS) - 2)
    t = (x - i0).unsqueeze(-1)
    anchors = _ANCHORS.to(maps.device)
    rgb = anchors[i0] * (1 - t) + anchors[i0 + 1] * t
    return rgb.permute(0, 3, 1, 2).contiguous()


def heatmap(maps: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Coloured heatmaps of raw maps, in [-1, 1] like the images they are shown with."""
    rgb = colorize(normalize_map(maps))
    if size is not None and rgb.shape[-2:] != tuple(size):
        rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
    return rgb * 2 - 1


def overlay(images: torch.Tensor, maps: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blend coloured maps onto images (N, 3, H, W) in [-1, 1]; returns [-1, 1]."""
    heat = heatmap(maps, size=tuple(images.shape[-2:]))
    return (1 - alpha) * images.detach().float().cpu() + alpha * heat.cpu()
