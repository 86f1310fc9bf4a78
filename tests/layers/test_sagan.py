"""SAGAN self-attention: shapes, identity at init, attention rows, gradients."""

from __future__ import annotations

import pytest
import torch

from spap import SelfAttention
from spap.errors import ConfigError


@pytest.mark.parametrize(("c", "h", "w"), [(16, 8, 8), (8, 5, 7), (32, 1, 1), (4, 3, 2)])
def test_shapes_and_attention_rows(c: int, h: int, w: int) -> None:
    unit = SelfAttention(c)
    x = torch.randn(2, c, h, w)
    y, maps = unit.forward_with_attention(x)
    assert y.shape == x.shape
    (attn,) = maps
    hp, wp = (h + 1) // 2, (w + 1) // 2
    assert attn.shape == (2, h * w, hp * wp)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, h * w))


def test_identity_at_init_and_gradients() -> None:
    unit = SelfAttention(16, spectral_norm=True)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(unit(x), x)
    with torch.no_grad():
        unit.gamma.fill_(0.5)
    y = unit(x)
    assert not torch.equal(y, x)
    y.square().mean().backward()
    for name, p in unit.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_widths_and_no_pool() -> None:
    unit = SelfAttention(64, pool=False)
    assert unit.theta.out_channels == 8 and unit.g.out_channels == 32
    _, (attn,) = unit.forward_with_attention(torch.randn(1, 64, 4, 6))
    assert attn.shape == (1, 24, 24)


def test_bad_channels() -> None:
    with pytest.raises(ConfigError, match="channels"):
        SelfAttention(0)
