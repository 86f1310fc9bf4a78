"""CycleGAN task: frozen D during the G step, schedule, state round trip, visuals, config
checks, init from earlier weights. (Steps against the reference CycleGAN of
tests/reference: tests/test_perf_cyclegan.py.)"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from reference.cyclegan import ref_lr_per_epoch
from spap.config import CONFIG_DIR, from_dict, load_config
from spap.errors import CheckpointError, ConfigError
from spap.systems.cyclegan import CycleGANConfig, apply_size
from spap.train import distributed as D
from spap.train.context import RunContext
from spap.train.cyclegan import CycleGANTask, lr_factor

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "v0_1"
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


def _epoch_rates(task: CycleGANTask, epochs: range) -> list[dict[str, float]]:
    """The rates each epoch's iterations use, the task's hooks called as the loop does."""
    rates = []
    for epoch in epochs:
        rates.append(task.scalars())
        with warnings.catch_warnings():  # no optimizer step in these tests
            warnings.simplefilter("ignore", UserWarning)
            task.on_epoch_end(epoch)
    return rates


def test_lr_schedule() -> None:
    # the reference's rule as its train.py applies it: n_epochs - 1 epochs at the full rate
    assert [lr_factor(e, 2, 3) for e in range(5)] == pytest.approx([1, 0.75, 0.5, 0.25, 0])
    assert lr_factor(7, 2, 3) == 0  # past the schedule (run.steps): never negative
    task = make_task()  # 1 constant epoch, 2 decay epochs
    rates = _epoch_rates(task, range(3))
    assert [r["lr/G"] for r in rates] == pytest.approx([2e-4 * 2 / 3, 2e-4 / 3, 0])
    assert [r["lr/D"] for r in rates] == [r["lr/G"] for r in rates]
    assert task.total_steps(7) == 21


SHIPPED = sorted(p.stem for p in (CONFIG_DIR / "cyclegan").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_schedule_is_the_references_for_every_shipped_config(name: str) -> None:
    """Every epoch of the whole schedule trains at the reference's rate (networks narrowed:
    the schedule does not depend on them)."""
    from spap.config import merge, read_yaml

    data = merge(read_yaml(f"cyclegan/{name}"), {"model": {"ngf": 4, "ndf": 4, "n_blocks": 1}})
    cfg = from_dict(CycleGANConfig, merge(data, {"data": {"root": "unused"}}))
    task = CycleGANTask(cfg, RunContext(cfg.run, torch.device("cpu"), D.env_info()))
    tc = cfg.train
    want = ref_lr_per_epoch(tc.n_epochs, tc.n_epochs_decay, tc.lr)
    rates = _epoch_rates(task, range(tc.n_epochs + tc.n_epochs_decay))
    assert [r["lr/G"] for r in rates] == want  # the same float computation: exactly equal
    assert [r["lr/D"] for r in rates] == want
    assert want[-1] == 0.0 and want[tc.n_epochs - 2] == tc.lr
    assert want[tc.n_epochs - 1] == pytest.approx(tc.lr * (1 - 1 / (tc.n_epochs_decay + 1)))


def test_cityscapes_schedule_numbers() -> None:
    """The issue's figures: 100 + 100 epochs decay from (1-based) epoch 100 and end at 0."""
    want = ref_lr_per_epoch(100, 100)
    assert want[:99] == [2e-4] * 99
    assert want[99] == pytest.approx(2e-4 * 100 / 101)
    assert want[199] == 0.0
    assert [2e-4 * lr_factor(e, 100, 100) for e in range(200)] == want


def test_resume_in_the_decay_keeps_the_schedule(tmp_path) -> None:
    over = {"train": {"n_epochs": 3, "n_epochs_decay": 5}}
    want = ref_lr_per_epoch(3, 5)
    a = make_task(over)
    first = _epoch_rates(a, range(5))  # stopped after epoch 4, inside the decay
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = make_task(over)
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    rest = _epoch_rates(b, range(5, 8))
    assert [r["lr/G"] for r in first + rest] == pytest.approx(want, rel=1e-12)


def test_checkpoint_of_the_earlier_rule_resumes_on_the_references(tmp_path) -> None:
    """A 0.1 checkpoint stored the rate of the one-epoch-late rule (epoch 0 of 1 + 1 at the
    full rate); resumed, its epoch trains at the reference's rate."""
    from spap.train.checkpoint import load_checkpoint

    state = load_checkpoint(FIXTURES / "cyclegan_step4.pt")
    assert state["epoch"] == 0
    assert state["task"]["optimizers"]["G"]["param_groups"][0]["lr"] == 2e-4
    cfg = from_dict(CycleGANConfig, {**state["config"], "data": {"root": "unused"}})
    task = CycleGANTask(cfg, RunContext(cfg.run, torch.device("cpu"), D.env_info()))
    task.load_state_dict(state["task"])
    assert (
        task.scalars()
        == {"lr/G": 1e-4, "lr/D": 1e-4}
        == {
            "lr/G": ref_lr_per_epoch(1, 1)[0],
            "lr/D": ref_lr_per_epoch(1, 1)[0],
        }
    )


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


# ------------------------------------------------------------------ initial weights: checks


def _ref_file(tmp_path, name: str = "latest_net_G_A.pth", kind: str = "G", **kw) -> str:
    from reference.cyclegan import RefNLayerDiscriminator, RefResnetGenerator, randomise

    if kind == "G":
        net = RefResnetGenerator(**{"ngf": 8, "n_blocks": 2, **kw})
    else:
        net = RefNLayerDiscriminator(**{"ndf": 8, **kw})
    path = tmp_path / name
    torch.save(randomise(net).state_dict(), path)
    return str(path)


def _save_checkpoint(task: CycleGANTask, path) -> str:
    from spap.config import to_dict
    from spap.train.checkpoint import FORMAT, VERSION, save_checkpoint

    state = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "cyclegan",
        "config": to_dict(task.cfg),
        "step": 0,
        "epoch": 0,
        "position": 0,
        "task": task.state_dict(),
        "runner": {"rng": [], "scalers": {}},
    }
    return str(save_checkpoint(state, path))


@pytest.mark.parametrize(
    ("net", "kw", "expected"),
    [
        ("G_A", {"n_blocks": 3}, ["n_blocks 3 in the file, 2 in the config"]),
        ("G_B", {"n_blocks": 1}, ["n_blocks 1 in the file, 2 in the config"]),
        ("G_A", {"dropout": True}, ["dropout true in the file, false in the config"]),
        ("G_A", {"norm": "batch"}, ["norm batch in the file, instance in the config"]),
        ("G_A", {"ngf": 4}, ["ngf 4 in the file, 8 in the config"]),
        ("G_A", {"input_nc": 1}, ["input_nc 1 in the file, 3 in the config"]),
        (
            "G_B",
            {"n_blocks": 3, "dropout": True},
            ["n_blocks 3 in the file, 2 in the config", "dropout true in the file, false"],
        ),
        ("D_A", {"n_layers": 2}, ["n_layers_d 2 in the file, 3 in the config"]),
        ("D_B", {"norm": "batch"}, ["norm batch in the file, instance in the config"]),
    ],
)
def test_init_networks_refuses_another_architecture(tmp_path, net, kw, expected) -> None:
    path = _ref_file(tmp_path, f"latest_net_{net}.pth", net[0], **kw)
    with pytest.raises(CheckpointError) as err:
        make_task({"train": {"init_networks": {net: path}}})
    msg = str(err.value)
    assert msg.startswith(f"{net} from {path}: ") and "\n" not in msg
    for part in expected:
        assert part in msg
    assert "train.init_strict=false" in msg


def test_init_networks_refuses_a_discriminator_as_generator(tmp_path) -> None:
    path = _ref_file(tmp_path, "latest_net_D_A.pth", "D")
    with pytest.raises(CheckpointError, match="latest_net_D_A.pth: a reference PatchGAN"):
        make_task({"train": {"init_networks": {"G_A": path}}})


def test_partial_load_on_purpose_lists_dropped_and_random(tmp_path, caplog) -> None:
    import logging

    from spap.models.cyclegan import convert_reference_generator

    deeper = _ref_file(tmp_path, "nine.pth", n_blocks=3)  # one block more than the config
    shallower = _ref_file(tmp_path, "six.pth", n_blocks=1)  # one block less
    torch.manual_seed(0)
    plain = make_task()
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="spap.train.cyclegan"):
        task = make_task(
            {"train": {"init_strict": False, "init_networks": {"G_A": deeper, "G_B": shallower}}}
        )
    lines = {r.getMessage().split(" ")[0]: r.getMessage() for r in caplog.records}
    assert "n_blocks 3 in the file, 2 in the config" in lines["G_A"]
    assert "not used (trunk.2)" in lines["G_A"]
    assert "n_blocks 1 in the file, 2 in the config" in lines["G_B"]
    assert "kept at their initial values (trunk.1)" in lines["G_B"]
    own = task.G_B.state_dict()
    converted, _ = convert_reference_generator(shallower)
    for k, v in converted.items():
        assert torch.equal(own[k], v), k
    untouched = plain.G_B.state_dict()
    assert all(torch.equal(own[k], untouched[k]) for k in own if k.startswith("trunk.1."))


def test_init_from_spap_checkpoint_is_checked(tmp_path) -> None:
    plain = make_task()
    path = _save_checkpoint(plain, tmp_path / "step_0000001.pt")
    # a plain run into a SPAP config: the units start at their initial values
    task = make_task({"model": SPAP, "train": {"init_from": path}})
    for name in ("G_A", "D_B"):
        own = task.nets[name].state_dict()
        for k, v in plain.nets[name].state_dict().items():
            assert torch.equal(own[k], v), (name, k)
    with pytest.raises(CheckpointError) as err:
        make_task({"model": {"n_blocks": 3, "ngf": 4}, "train": {"init_from": path}})
    msg = str(err.value)
    assert msg.startswith(f"G_A from {path}: ")
    assert "ngf 8 in the file, 4 in the config; n_blocks 2 in the file, 3 in the config" in msg
    # units the file has that the config would not rebuild
    spap = _save_checkpoint(make_task({"model": SPAP}), tmp_path / "step_0000002.pt")
    with pytest.raises(CheckpointError, match="attention spap in the file, none in the config"):
        make_task({"train": {"init_from": spap}})
    moved = {**SPAP, "g_attention_at": ["block:0"]}
    with pytest.raises(CheckpointError, match="units at trunk_end in the file, not in the config"):
        make_task({"model": moved, "train": {"init_from": spap}})
    sagan = {**SPAP, "attention": "sagan", "g_attention_options": {}, "d_attention_options": {}}
    with pytest.raises(CheckpointError, match="attention spap in the file, sagan in the config"):
        make_task({"model": sagan, "train": {"init_from": spap}})
    # a replaced block is left out on purpose; a block the file replaced is missing
    replaced = {**SPAP, "g_attention_at": ["replace:0", "trunk_end"]}
    make_task({"model": replaced, "train": {"init_from": spap}})
    other = _save_checkpoint(make_task({"model": replaced}), tmp_path / "step_0000003.pt")
    with pytest.raises(CheckpointError, match="units at replace:0 in the file, not in"):
        make_task({"model": SPAP, "train": {"init_from": other}})
    after = {**SPAP, "g_attention_at": ["block:0", "trunk_end"]}  # the unit, and the block
    with pytest.raises(CheckpointError, match=r"G_A from .*: not in the file: trunk\.0 "):
        make_task({"model": after, "train": {"init_from": other}})
