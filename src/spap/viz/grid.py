"""Image grids: one row per named visual (real, fake, reconstructed, attention ...)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image


def rows_grid(
    visuals: dict[str, torch.Tensor], max_cols: int = 8, padding: int = 2
) -> torch.Tensor:
    """Stack named image batches (n, C, h, w) in [-1, 1] as the rows of one grid.

    Rows are resized (nearest) to the first row's size, single-channel maps are repeated
    to RGB, and every row is cut or padded to the same number of columns.
    """
    rows = [v.detach().float().cpu() for v in visuals.values() if v is not None and v.numel()]
    if not rows:
        raise ValueError("no images to put in a grid")
    h, w = rows[0].shape[-2:]
    cols = min(max_cols, max(r.shape[0] for r in rows))
    out = []
    for r in rows:
        if r.dim() == 3:
            r = r.unsqueeze(1)
        if r.shape[1] == 1:
            r = r.repeat(1, 3, 1, 1)
        elif r.shape[1] > 3:
            r = r[:, :3]
        if r.shape[-2:] != (h, w):
            r = F.interpolate(r, size=(h, w), mode="nearest")
        r = r[:cols]
        if r.shape[0] < cols:
            r = torch.cat([r, -torch.ones(cols - r.shape[0], 3, h, w)])
        out.append(r)
    return make_grid(torch.cat(out), nrow=cols, padding=padding, pad_value=-1.0)


def save_grid(grid: torch.Tensor, path: str | Path) -> Path:
    """Save a grid in [-1, 1] as PNG (creating the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((grid.clamp(-1, 1) + 1) / 2, str(path))
    return path
