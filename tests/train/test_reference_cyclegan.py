"""spap's CycleGAN with its default settings against the reference CycleGAN of
tests/reference (its networks, iteration and schedule): one training iteration (losses,
updated weights up to fp32 rounding) and the learning rate of every epoch of the reference's
200-epoch schedule (100 + 100). The iteration comparison for the shipped configs, in the
reference's order, is ``tests/test_perf_cyclegan.py::test_reference_matches_spap_task``;
this test reuses its harness and checks."""

from __future__ import annotations

import warnings

import torch

from reference.cyclegan import RefCycleGAN
from spap.config import from_dict
from spap.systems.cyclegan import CycleGANConfig
from spap.train import distributed as D
from spap.train.context import RunContext
from spap.train.cyclegan import CycleGANTask
from test_perf_cyclegan import P, _cancelled_by_norm, _same_update  # its harness and checks

SIZE, WIDTH, BLOCKS = 32, 8, 1


def test_defaults_match_the_reference_iteration_and_schedule() -> None:
    torch.manual_seed(0)
    ref = RefCycleGAN(ngf=WIDTH, ndf=WIDTH, n_blocks=BLOCKS)  # lr 2e-4, 100 + 100 epochs
    # spap's defaults, but for narrow networks, small crops and the CPU
    data = {"root": "unused", "crop_size": SIZE, "load_size": SIZE + 4}
    model = {"ngf": WIDTH, "ndf": WIDTH, "n_blocks": BLOCKS}
    cfg = from_dict(CycleGANConfig, {"data": data, "model": model, "run": {"device": "cpu"}})
    assert (cfg.train.n_epochs, cfg.train.n_epochs_decay, cfg.train.lr) == (100, 100, 2e-4)
    task = CycleGANTask(cfg, RunContext(cfg.run, torch.device("cpu"), D.env_info()))
    P.copy_reference_weights(ref, task)
    batch = P.make_batches(SIZE, 1)[0]

    rates: list[tuple[float, float, float, float]] = []
    for epoch in range(200):
        ref.update_learning_rate()  # the reference: at the start of the epoch
        rates.append(
            (
                *(o.param_groups[0]["lr"] for o in (ref.optimizer_G, ref.optimizer_D)),
                *task.scalars().values(),
            )
        )
        if epoch == 0:  # one iteration of the first epoch, from the same weights
            ours, theirs = task.train_step(batch, 0), ref.train_step(batch)
            assert P.loss_gap(ours, theirs) < 1e-5, (ours, theirs)
            for name, net in ref.networks().items():
                convert = P.convert_generator if name[0] == "G" else P.convert_discriminator
                state, _ = convert(net.state_dict())
                own = task.nets[name].state_dict()
                for k, v in state.items():
                    if not _cancelled_by_norm(k):
                        _same_update(own[k], v, f"{name}.{k}")
        with warnings.catch_warnings():  # the loop: at the end of the epoch
            warnings.simplefilter("ignore", UserWarning)
            task.on_epoch_end(epoch)
    for epoch, (ref_g, ref_d, lr_g, lr_d) in enumerate(rates):
        assert lr_g == ref_g and lr_d == ref_d, (epoch, ref_g, lr_g)
    assert rates[98][0] == 2e-4 and rates[99][0] < 2e-4 and rates[199][0] == 0.0
