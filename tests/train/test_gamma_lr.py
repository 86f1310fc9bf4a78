"""``train.gamma_lr_mult`` [ours]: the attention units' blend scalars get their own Adam
parameter group at ``lr * gamma_lr_mult`` (both tasks); at 1 nothing changes."""

from __future__ import annotations

import pytest
import torch
from test_cyclegan_task import SPAP, batch, make_task
from test_gan import _batch, _task, image_dir  # noqa: F401 - image_dir is a fixture

from spap.layers import attention_units


def _gammas(*nets: torch.nn.Module) -> set[int]:
    return {id(u.gamma) for n in nets for _, u in attention_units(n)}


def test_cyclegan_gammas_move_at_the_multiplied_rate() -> None:
    plain = make_task({"model": SPAP})
    assert len(plain.opt_G.param_groups) == len(plain.opt_D.param_groups) == 1
    task = make_task({"model": SPAP, "train": {"gamma_lr_mult": 10.0}})
    lr = task.cfg.train.lr
    for opt, nets in ((task.opt_G, (task.G_A, task.G_B)), (task.opt_D, (task.D_A, task.D_B))):
        rest, gam = opt.param_groups
        assert {id(p) for p in gam["params"]} == _gammas(*nets) and len(gam["params"]) == 2
        assert not _gammas(*nets) & {id(p) for p in rest["params"]}
        assert rest["initial_lr"] == lr and gam["initial_lr"] == pytest.approx(10 * lr)
        assert gam["lr"] == pytest.approx(10 * rest["lr"])  # the schedule's factor on both
    step_lr = task.opt_G.param_groups[1]["lr"]
    task.train_step(batch(0), 0)
    # Adam's first step moves every parameter with a non-zero gradient by lr (up to eps)
    for _, unit in attention_units(task.G_A):
        assert abs(unit.gamma.item()) == pytest.approx(step_lr, rel=1e-3)
    # the linear decay scales both groups alike
    task.on_epoch_end(0)
    rest, gam = task.opt_G.param_groups
    assert 0 < rest["lr"] < lr and gam["lr"] / rest["lr"] == pytest.approx(10.0)


def test_gan_gammas_get_their_group(image_dir) -> None:  # noqa: F811 - the fixture
    task = _task(image_dir, train={"gamma_lr_mult": 5.0, "n_dis": 1})
    for opt, net, lr in ((task.opt_g, task.G, task.cfg.train.lr_g),
                         (task.opt_d, task.D, task.cfg.train.lr_d)):  # fmt: skip
        rest, gam = opt.param_groups
        assert {id(p) for p in gam["params"]} == _gammas(net)
        assert gam["lr"] == pytest.approx(5 * lr) and rest["lr"] == lr
    task.train_step(_batch(task), 0)
    state = task.state_dict()
    again = _task(image_dir, train={"gamma_lr_mult": 5.0, "n_dis": 1})
    again.load_state_dict(state)  # two groups round-trip through a checkpoint
    assert again.opt_g.param_groups[1]["lr"] == task.opt_g.param_groups[1]["lr"]
