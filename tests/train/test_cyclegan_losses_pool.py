"""GAN losses (values against hand-computed numbers) and the image pool."""

from __future__ import annotations

import math

import pytest
import torch

from spap.errors import ConfigError
from spap.train.losses import d_loss, g_loss, gan_loss
from spap.train.pool import ImagePool

REAL = torch.tensor([[2.0, 0.0], [1.0, -1.0]])
FAKE = torch.tensor([[-1.0, 0.5], [0.0, 3.0]])


def _sp(x: float) -> float:  # softplus
    return math.log1p(math.exp(x))


def test_lsgan_values() -> None:
    # real: (1,1,0,4)/4 = 1.5 ; fake: (1,.25,0,9)/4 = 2.5625
    assert d_loss("lsgan", REAL, FAKE).item() == pytest.approx(0.5 * (1.5 + 2.5625))
    # (4 + .25 + 1 + 4)/4
    assert g_loss("lsgan", FAKE).item() == pytest.approx(9.25 / 4)


def test_vanilla_values() -> None:
    real = sum(_sp(-v) for v in REAL.flatten().tolist()) / 4
    fake = sum(_sp(v) for v in FAKE.flatten().tolist()) / 4
    assert d_loss("vanilla", REAL, FAKE).item() == pytest.approx(0.5 * (real + fake), rel=1e-6)
    gen = sum(_sp(-v) for v in FAKE.flatten().tolist()) / 4
    assert g_loss("vanilla", FAKE).item() == pytest.approx(gen, rel=1e-6)


def test_hinge_values() -> None:
    # relu(1-real) = (0,1,0,2) -> .75 ; relu(1+fake) = (0,1.5,1,4) -> 1.625
    assert d_loss("hinge", REAL, FAKE).item() == pytest.approx(0.5 * (0.75 + 1.625))
    assert g_loss("hinge", FAKE).item() == pytest.approx(-2.5 / 4)


def test_losses_float32_and_grad() -> None:
    fake = FAKE.clone().to(torch.bfloat16).requires_grad_()
    for name in ("lsgan", "vanilla", "hinge"):
        loss = g_loss(name, fake)
        assert loss.dtype == torch.float32
        (grad,) = torch.autograd.grad(loss, fake)
        assert torch.isfinite(grad.float()).all()


def test_unknown_loss() -> None:
    with pytest.raises(ConfigError, match="lsgan"):
        gan_loss("wgan")


def _img(v: float) -> torch.Tensor:
    return torch.full((1, 3, 2, 2), v)


def test_pool_fills_then_swaps() -> None:
    pool = ImagePool(3, seed=1)
    for v in range(3):  # filling: returned as is
        assert torch.equal(pool.query(_img(v)), _img(v))
    assert len(pool) == 3
    seen_old = seen_new = 0
    for v in range(3, 200):
        out = pool.query(_img(v))
        if out[0, 0, 0, 0].item() == v:
            seen_new += 1
        else:
            seen_old += 1
            assert out[0, 0, 0, 0].item() < v
        assert len(pool) == 3
    # about half of each (binomial, n=197)
    assert 60 < seen_old < 140 and 60 < seen_new < 140


def test_pool_batch_and_zero_size() -> None:
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    assert ImagePool(0).query(x) is not x and not ImagePool(0).query(x).requires_grad
    pool = ImagePool(2)
    out = pool.query(x)
    assert out.shape == x.shape and not out.requires_grad
    assert len(pool) == 2


def test_pool_state_round_trip() -> None:
    a = ImagePool(4, seed=7)
    for v in range(10):
        a.query(_img(v))
    b = ImagePool(4, seed=123)
    b.load_state_dict(a.state_dict())
    for v in range(10, 40):
        assert torch.equal(a.query(_img(v)), b.query(_img(v)))
    assert all(torch.equal(x, y) for x, y in zip(a.images, b.images))


def test_pool_state_is_weights_only_loadable(tmp_path) -> None:
    pool = ImagePool(2, seed=3)
    pool.query(torch.randn(3, 3, 2, 2))
    torch.save(pool.state_dict(), tmp_path / "p.pt")
    state = torch.load(tmp_path / "p.pt", weights_only=True)
    other = ImagePool(2)
    other.load_state_dict(state)
    assert torch.equal(other.generator.get_state(), pool.generator.get_state())
