"""Exponential moving average (EMA) of a network's weights.

``ema = EMA(G, decay=0.9999, start=1000)``; after every optimizer step of ``G`` call
``ema.update(G, step)`` with the number of updates done so far. While ``step <= start`` the
average simply copies the weights (as BigGAN's ``ema_start``); afterwards each parameter
becomes ``decay * ema + (1 - decay) * current``. Buffers (BatchNorm running statistics,
spectral-norm vectors) are always copied, so the averaged network is usable in eval mode.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


class EMA:
    """An averaged copy ``self.module`` of ``model`` (kept in eval mode, without gradients)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, start: int = 0) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.start = int(start)
        self.module = copy.deepcopy(_unwrap(model)).eval().requires_grad_(False)

    def to(self, device: torch.device | str) -> EMA:
        self.module.to(device)
        return self

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold ``model``'s current weights in; ``step`` = optimizer updates done so far."""
        src = _unwrap(model)
        params = dict(src.named_parameters())
        buffers = dict(src.named_buffers())
        copy_only = step <= self.start
        for name, p in self.module.named_parameters():
            q = params[name].detach()
            if copy_only or self.decay == 0.0:
                p.copy_(q)
            else:
                p.lerp_(q.to(p.dtype), 1.0 - self.decay)
        for name, b in self.module.named_buffers():
            b.copy_(buffers[name])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "start": self.start, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
