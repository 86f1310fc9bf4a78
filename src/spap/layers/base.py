"""Common base of the attention units (SPAP, SAGAN): optional recording of attention maps.

A unit computes its maps anyway; a plain ``forward`` simply drops them. Only while a
:func:`spap.layers.attention.record_attention` context is active does a unit keep a
reference to the maps of its latest forward pass, so recording costs nothing otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["AttentionUnit"]


class AttentionUnit(nn.Module):
    """An ``nn.Module`` whose ``forward_with_attention(x)`` returns ``(y, maps)``."""

    def __init__(self) -> None:
        super().__init__()
        # Python-only hook target, set by ``record_attention``; never part of the state dict.
        self._attention_sink = None  # dict | None
        self._attention_key: str = ""
        self._attention_detach: bool = True

    @torch.jit.unused
    def _record(self, maps: list[Tensor]) -> None:
        sink = self._attention_sink
        if sink is None:
            return
        sink[self._attention_key] = [m.detach() if self._attention_detach else m for m in maps]

    def _store(self, maps: list[Tensor]) -> None:
        if not torch.jit.is_scripting() and self._attention_sink is not None:
            self._record(maps)
