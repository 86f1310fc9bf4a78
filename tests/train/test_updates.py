"""Updates through the run context: ``backward`` (accumulating) + ``step`` (all-reduce,
clip, finite check, step, zero_grad) and ``optimize`` (one loss); ``train.clip_grad_norm``
in both tasks."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from spap.config import RunConfig, from_dict
from spap.errors import ConfigError, NonFiniteLossError
from spap.train.context import RunContext
from spap.train.distributed import DistInfo


def _ctx(**run: Any) -> RunContext:
    return RunContext(RunConfig(**run), torch.device("cpu"), DistInfo())


def _net(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)


def _data(n: int, seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=dtype)
    return x, x.sum(1, keepdim=True) ** 3  # large targets: large gradients


def _flat(tensors: Any) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return scale * (net(x) - y).square().sum()


# ----------------------------------------------------------------------------- clipping


def test_clipping_bounds_the_applied_gradient() -> None:
    """With SGD(lr=1) the update is minus the applied gradient: it is the gradient scaled
    to the global L2 norm ``max_norm`` (a hand-computed float64 reference)."""
    net = _net()
    x, y = _data(6, 0)
    grads = torch.autograd.grad(_loss(net, x, y), list(net.parameters()))
    g = _flat(grads)
    max_norm = 0.5
    assert g.norm() > 10 * max_norm  # clipping has something to do
    before = _flat(net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    assert _ctx().optimize(_loss(net, x, y), opt, "loss", max_norm=max_norm)
    applied = before - _flat(net.parameters())
    torch.testing.assert_close(applied, g * (max_norm / (g.norm() + 1e-6)), rtol=1e-12, atol=0)
    assert applied.norm() <= max_norm
    assert all(p.grad is None for p in net.parameters())  # step() cleared them


def test_clipped_adam_matches_a_hand_computed_step() -> None:
    """Two Adam updates (a large loss, clipped; then a small one, below the bound) equal a
    float64 Adam by hand on the clipped gradients, and differ from unclipped updates."""
    lr, betas, eps, max_norm = 1e-2, (0.9, 0.999), 1e-8, 1.0
    losses = [(_data(6, 0), 1.0), (_data(6, 1), 1e-4)]

    def by_hand(clip: bool) -> torch.Tensor:
        net = _net()
        w = _flat(net.parameters()).clone()
        m, v = torch.zeros_like(w), torch.zeros_like(w)
        for t, ((x, y), scale) in enumerate(losses, start=1):
            offset = 0
            for p in net.parameters():  # load w into the network
                p.data.copy_(w[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
            g = _flat(torch.autograd.grad(_loss(net, x, y, scale), list(net.parameters())))
            if clip:
                g = g * min(1.0, max_norm / (float(g.norm()) + 1e-6))
            m = betas[0] * m + (1 - betas[0]) * g
            v = betas[1] * v + (1 - betas[1]) * g * g
            m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
            w = w - lr * m_hat / (v_hat.sqrt() + eps)
        return w

    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=betas, eps=eps, foreach=False)
    ctx = _ctx()
    for (x, y), scale in losses:
        assert ctx.optimize(_loss(net, x, y, scale), opt, "loss", max_norm=max_norm)
    got = _flat(net.parameters())
    torch.testing.assert_close(got, by_hand(clip=True), rtol=1e-10, atol=1e-12)
    assert (got - by_hand(clip=False)).abs().max() > 1e-4  # clipping changed the result


# ----------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_half_batches_equal_one_full_batch(optimizer: str) -> None:
    x, y = _data(8, 2, torch.float32)
    results = []
    for halves in (False, True):
        net = _net(torch.float32)
        opt = (
            torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
            if optimizer == "sgd"
            else torch.optim.Adam(net.parameters(), lr=1e-2)
        )
        ctx = _ctx()
        for _ in range(3):
            if halves:
                for xs, ys in zip(x.split(4), y.split(4)):
                    ctx.backward(_loss(net, xs, ys), "loss")
                assert ctx.step(opt, "loss")
            else:
                assert ctx.optimize(_loss(net, x, y), opt, "loss")
        results.append(_flat(net.parameters()))
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-6)


def test_accumulated_gradients_are_clipped_together() -> None:
    net = _net()
    x, y = _data(8, 3)
    g = _flat(torch.autograd.grad(_loss(net, x, y), list(net.parameters())))
    before = _flat(net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    ctx = _ctx()
    for xs, ys in zip(x.split(4), y.split(4)):
        ctx.backward(_loss(net, xs, ys), "loss")
    assert ctx.step(opt, "loss", max_norm=0.25)
    applied = before - _flat(net.parameters())
    torch.testing.assert_close(applied, g * (0.25 / (g.norm() + 1e-6)), rtol=1e-10, atol=0)


# ----------------------------------------------------------------------------- NaN policies


def _bad_micro_batches(ctx: RunContext, net: nn.Module, where: str) -> None:
    x, y = _data(8, 4)
    ctx.backward(_loss(net, x[:4], y[:4]), "loss_x")
    loss = _loss(net, x[4:], y[4:])
    if where == "loss":
        loss = loss * math.nan
    else:  # finite loss, infinite gradient (sqrt' at 0)
        w = next(net.parameters())
        loss = loss + (w - w.detach()).sum().sqrt()
    ctx.backward(loss, "loss_x")


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_skip_drops_the_whole_accumulated_update(where: str) -> None:
    net = _net()
    before = _flat(net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    ctx = _ctx(nan_policy="skip")
    ctx.iteration = 7
    _bad_micro_batches(ctx, net, where)
    assert ctx.step(opt, "loss_x") is False
    assert ctx.skipped_updates == 1
    assert torch.equal(_flat(net.parameters()), before)
    assert all(p.grad is None for p in net.parameters())
    assert not opt.state  # the optimizer never stepped
    # the next update is a normal one
    x, y = _data(4, 5)
    assert ctx.optimize(_loss(net, x, y), opt, "loss_x")
    assert ctx.skipped_updates == 1 and not torch.equal(_flat(net.parameters()), before)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_stop_names_the_loss_and_the_step(where: str) -> None:
    net = _net()
    before = _flat(net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    ctx = _ctx(nan_policy="stop")
    ctx.iteration = 7
    if where == "loss":
        with pytest.raises(NonFiniteLossError, match=r"^loss loss_x is nan at step 7 "):
            _bad_micro_batches(ctx, net, where)
    else:
        _bad_micro_batches(ctx, net, where)
        with pytest.raises(
            NonFiniteLossError, match=r"^gradient of loss loss_x is not finite at step 7 "
        ):
            ctx.step(opt, "loss_x")
    assert torch.equal(_flat(net.parameters()), before)


# ----------------------------------------------------------------------------- the tasks


def _clip_calls(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record every clip (its bound) and check the clipped gradients respect it."""
    calls: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params: Any, max_norm: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        params = list(params)
        out = clip(params, max_norm, *args, **kwargs)
        norm = _flat(p.grad for p in params if p.grad is not None).norm()
        assert norm <= max_norm * (1 + 1e-5)
        calls.append(max_norm)
        return out

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    return calls


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_every_update_of_both_tasks_clips_when_configured(
    monkeypatch: pytest.MonkeyPatch, clip: float | None
) -> None:
    from spap.systems.cyclegan import CycleGANConfig
    from spap.systems.gan import GANConfig
    from spap.train.cyclegan import CycleGANTask
    from spap.train.gan import GANTask

    calls = _clip_calls(monkeypatch)
    cyclegan = {
        "data": {"root": "unused", "crop_size": 32, "load_size": 36},
        "model": {"ngf": 4, "ndf": 4, "n_blocks": 1},
        "train": {"clip_grad_norm": clip},
    }
    cfg = from_dict(CycleGANConfig, cyclegan)
    task = CycleGANTask(cfg, RunContext(cfg.run, torch.device("cpu"), DistInfo()))
    g = torch.Generator().manual_seed(0)
    task.train_step({k: torch.rand(1, 3, 32, 32, generator=g) * 2 - 1 for k in "AB"}, 0)
    assert calls == ([] if clip is None else [clip, clip])  # G, D

    calls.clear()
    gan = {
        "data": {"root": "unused", "size": 32},
        "model": {"resolution": 32, "z_dim": 8, "g_ch": 4, "d_ch": 4},
        "train": {"batch_size": 2, "n_dis": 2, "clip_grad_norm": clip},
    }
    cfg = from_dict(GANConfig, gan)
    task = GANTask(cfg, RunContext(cfg.run, torch.device("cpu"), DistInfo()))
    task.train_step({"image": torch.rand(4, 3, 32, 32, generator=g) * 2 - 1}, 0)
    assert calls == ([] if clip is None else [clip] * 3)  # D, D, G


def test_clip_grad_norm_is_checked() -> None:
    from spap.systems.cyclegan import CycleGANConfig
    from spap.systems.gan import GANConfig

    for cls in (CycleGANConfig, GANConfig):
        assert from_dict(cls, {}).train.clip_grad_norm is None
        assert from_dict(cls, {"train": {"clip_grad_norm": 2}}).train.clip_grad_norm == 2.0
        with pytest.raises(ConfigError, match="train.clip_grad_norm"):
            from_dict(cls, {"train": {"clip_grad_norm": -1.0}})


# ----------------------------------------------------------------------------- fp16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 needs a CUDA device")
def test_fp16_clips_the_unscaled_gradients() -> None:
    ctx = RunContext(RunConfig(precision="fp16"), torch.device("cuda"), DistInfo())
    net = _net(torch.float32).cuda()
    x, y = (t.float().cuda() for t in _data(8, 0))
    g = _flat(torch.autograd.grad(_loss(net, x, y), list(net.parameters())))
    before = _flat(net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    for xs, ys in zip(x.split(4), y.split(4)):
        ctx.backward(_loss(net, xs, ys), "loss")
    assert ctx.step(opt, "loss", max_norm=0.5)
    applied = before - _flat(net.parameters())
    torch.testing.assert_close(applied, g * (0.5 / g.norm()), rtol=1e-4, atol=1e-6)
    assert set(ctx.scaler_states()) == {"loss"}
