"""CycleGAN task: frozen D during the G step, schedule, state round trip, visuals, config
checks, init from earlier weights. (Steps against the reference CycleGAN of
tests/reference: tests/test_perf_cyclegan.py.)"""

from __future__ import annotations

import warnings

import pytest
import torch

from spap.config import from_dict, load_config
from spap.errors import CheckpointError, ConfigError
from spap.systems.cyclegan import CycleGANConfig, apply_size
from spap.train import distributed as D
from spap.train.context import RunContext
from spap.train.cyclegan import CycleGANTask, lr_factor

TINY = {
    "data": {"root": "unused", "crop_size": 32, "load_size": 36},
    "model": {"ngf": 8, "ndf": 8, "n_blocks": 2},
    "train": {"n_epochs": 1, "n_epochs_decay": 2},
}
SPAP = {
    "attention": "spap",
    "g_attention_at": ["trunk_end"],
    "d_attention_at": [1],
    "g_attention_options": {"rates": [0, 1, 2]},
    "d_attention_options": {"rates": [0, 1, 2]},
}


def make_task(overrides: dict | None = None) -> CycleGANTask:
    from spap.config import merge

    cfg = from_dict(CycleGANConfig, merge(TINY, overrides or {}))
    ctx = RunContext(cfg.run, torch.device("cpu"), D.env_info())
    return CycleGANTask(cfg, ctx)


def batch(seed: int = 0, n: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(n, 3, 32, 32, generator=g) * 2 - 1 for k in ("A", "B")}


def test_discriminators_get_no_gradient_in_generator_step(monkeypatch) -> None:
    task = make_task()
    task.train_step(batch(0), 0)  # the D update's step cleared D's gradients
    seen = {}
    original = task.ctx.optimize

    def spy(loss, optimizer, name, **kwargs):
        before = [p.grad for p in task.D_A.parameters()]
        out = original(loss, optimizer, name, **kwargs)
        if name == "loss_G":  # the generator update left D without gradients
            seen["same"] = all(
                a is None and p.grad is None for a, p in zip(before, task.D_A.parameters())
            )
            seen["frozen"] = not any(p.requires_grad for p in task.D_A.parameters())
        return out

    monkeypatch.setattr(task.ctx, "optimize", spy)
    task.train_step(batch(1), 1)
    assert seen == {"same": True, "frozen": True}
    assert all(p.requires_grad for p in task.D_B.parameters())


def test_no_identity_and_other_losses() -> None:
    task = make_task({"train": {"lambda_identity": 0.0, "loss": "hinge"}})
    losses = task.train_step(batch(), 0)
    assert "idt_A" not in losses and "idt_B" not in losses
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def test_lr_schedule() -> None:
    assert [lr_factor(e, 2, 3) for e in range(5)] == pytest.approx([1, 1, 0.75, 0.5, 0.25])
    task = make_task()  # 1 constant epoch, 2 decay epochs
    lrs = []
    for epoch in range(3):
        lrs.append(task.opt_G.param_groups[0]["lr"])
        with warnings.catch_warnings():  # no optimizer step in this test
            warnings.simplefilter("ignore", UserWarning)
            task.on_epoch_end(epoch)
    assert lrs == pytest.approx([2e-4, 2e-4 * 2 / 3, 2e-4 / 3])
    assert task.opt_D.param_groups[0]["lr"] == pytest.approx(0.0)
    assert task.total_steps(7) == 21


def test_state_round_trip_continues_identically(tmp_path) -> None:
    a = make_task({"train": {"pool_size": 2}})
    for i in range(4):  # fills the pool, then swaps
        a.train_step(batch(i), i)
    a.on_epoch_end(0)
    torch.save(a.state_dict(), tmp_path / "s.pt")
    torch.manual_seed(123)  # the global RNG plays no part in a step
    b = make_task({"train": {"pool_size": 2}})
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    for i in range(4, 8):
        la, lb = a.train_step(batch(i), i), b.train_step(batch(i), i)
        assert la == lb
    for name in a.nets:
        for p, q in zip(a.nets[name].state_dict().values(), b.nets[name].state_dict().values()):
            assert torch.equal(p, q)


def test_visuals_rows_and_attention() -> None:
    task = make_task({"model": SPAP, "train": {"num_visuals": 3}})
    assert task.visuals() == {}
    for i in range(4):
        task.train_step(batch(i), i)
    rows = task.visuals()
    base = ["real_A", "fake_B", "rec_A", "real_B", "fake_A", "rec_B"]
    assert list(rows)[:6] == base
    attn = [k for k in rows if "attn" in k]
    # SPAP with 3 rates: 2 fuse maps per unit, one unit per generator
    assert sorted(attn) == [
        "G_A_attn_block_1_0",
        "G_A_attn_block_1_1",
        "G_B_attn_block_1_0",
        "G_B_attn_block_1_1",
    ]
    for v in rows.values():
        assert v.shape == (3, 3, 32, 32) and v.min() >= -1 and v.max() <= 1
    assert all(net.training for net in task.nets.values())


def test_apply_size() -> None:
    d: dict = {}
    apply_size(d, 128)
    assert d["data"] == {"crop_size": 128, "load_size": 143}
    apply_size(d, 256)
    assert d["data"] == {"crop_size": 256, "load_size": 286}


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"data": {"crop_size": 16, "load_size": 18}}, "n_layers_d=2"),
        ({"data": {"crop_size": 34}}, "multiple of 4"),
        ({"data": {"crop_size": 64, "load_size": 36}}, "larger than"),
        ({"train": {"init_networks": {"G_C": "x.pth"}}}, "G_A"),
        ({"model": {"input_nc": 1}}, "lambda_identity"),
        ({"model": {"attention": "spap"}}, "no place"),
        ({"train": {"los": "lsgan"}}, "did you mean 'train.loss'"),
    ],
)
def test_config_errors(over, match) -> None:
    from spap.config import merge

    with pytest.raises(ConfigError, match=match):
        from_dict(CycleGANConfig, merge(TINY, over))


@pytest.mark.parametrize(
    "name",
    [
        "cityscapes",
        "facades",
        "maps",
        "cityscapes_spap",
        "facades_spap",
        "maps_spap",
        "scenes",
        "scenes_spap",
    ],
)
def test_shipped_configs(name) -> None:
    cfg = load_config(CycleGANConfig, f"cyclegan/{name}")
    size = {"cityscapes": 128, "facades": 256, "maps": 256, "scenes": 64}[name.split("_")[0]]
    assert cfg.data.crop_size == size
    assert cfg.model.n_blocks == {128: 6, 256: 9, 64: 6}[size]
    assert (cfg.model.attention == "spap") == name.endswith("_spap")
    assert cfg.train.loss == "lsgan" and cfg.train.pool_size == 50 and cfg.train.lr == 2e-4


def test_init_networks_from_reference_file(tmp_path) -> None:
    from reference.cyclegan import RefNLayerDiscriminator, RefResnetGenerator, randomise

    ref_g = randomise(RefResnetGenerator(ngf=8, n_blocks=2))
    ref_d = randomise(RefNLayerDiscriminator(ndf=8))
    torch.save(ref_g.state_dict(), tmp_path / "latest_net_G_A.pth")
    torch.save(ref_d.state_dict(), tmp_path / "latest_net_D_A.pth")
    task = make_task(
        {
            "model": SPAP,
            "train": {
                "init_networks": {
                    "G_A": str(tmp_path / "latest_net_G_A.pth"),
                    "D_A": str(tmp_path / "latest_net_D_A.pth"),
                }
            },
        }
    )
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(task.G_A.eval()(x), ref_g(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(task.D_A.eval()(x), ref_d(x), rtol=0, atol=1e-5)
    with pytest.raises(CheckpointError, match="no such file"):
        make_task({"train": {"init_networks": {"G_B": str(tmp_path / "nope.pth")}}})
