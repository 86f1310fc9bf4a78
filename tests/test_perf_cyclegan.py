"""Correctness of the CycleGAN benchmark code paths (no timing).

- the reference re-implementation loads into spap's networks and gives the same losses as
  ``CycleGANTask.train_step`` from identical weights, over two iterations;
- every optimisation measured by ``perf_cyclegan.py --levers`` (batched forwards, folded
  reflection padding, channels_last, other Adam implementations) keeps the losses.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _common as C  # noqa: E402
import perf_cyclegan as P  # noqa: E402
from reference.cyclegan import RefCycleGAN  # noqa: E402

SIZE, BLOCKS, WIDTH = 32, 1, 8


def _close(a: dict, b: dict, tol: float = 1e-5) -> bool:
    return P.loss_gap(a, b) < tol


# biases of convs followed by instance norm: their true gradient is 0 (the norm removes
# them), so rounding noise decides the sign of Adam's first step on them
def _cancelled_by_norm(name: str) -> bool:
    return name.endswith(".bias") and not name.startswith(("head", "layers.0.0"))


def _same_update(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Weights after one Adam step from equal weights and nearly equal gradients: equal but
    for rare elements whose gradient is ~0 (rounding picks the sign of their lr-sized step)."""
    d = (a - b).abs()
    assert d.max() <= 2.1 * 2e-4, what
    assert (d > 1e-6).float().mean() < 1e-3, what


@pytest.mark.parametrize("batched", [False, True], ids=["reference-order", "batched"])
@pytest.mark.parametrize("config", ["cyclegan/cityscapes", "cyclegan/facades", "cyclegan/maps"])
def test_reference_matches_spap_task(config: str, batched: bool) -> None:
    """spap's training step with a shipped config (its losses, weights, pool, optimiser;
    networks narrowed for speed) equals the reference iteration of tests/reference."""
    torch.manual_seed(0)
    ref = RefCycleGAN(ngf=WIDTH, ndf=WIDTH, n_blocks=BLOCKS)
    model = {"ngf": WIDTH, "ndf": WIDTH, "n_blocks": BLOCKS, "attention": "none"}
    train = {"batched_forwards": "always" if batched else "never"}
    # the reference's own Adam (fused Adam rounds differently; compared in test_runner.py)
    run = {"fused_optimizer": batched}
    task = P.make_task(config, {"model": model, "train": train, "run": run}, SIZE)
    P.copy_reference_weights(ref, task)
    batches = P.make_batches(SIZE, 3)
    # the reference order is bitwise the reference: equal over several iterations; batched
    # forwards sum gradients in another order, so compare their first iteration
    for i in range(3 if not batched else 1):
        ours = task.train_step(batches[i], i)
        theirs = ref.train_step(batches[i])
        assert set(ours) == set(P.LOSS_NAMES)
        assert _close(ours, theirs), (i, ours, theirs)
    # the weights moved identically
    for name, net in ref.networks().items():
        convert = P.convert_generator if name[0] == "G" else P.convert_discriminator
        state, _ = convert(net.state_dict())
        own = task.nets[name].state_dict()
        for k, v in state.items():
            if batched:
                if not _cancelled_by_norm(k):
                    _same_update(own[k], v, f"{name}.{k}")
            else:
                torch.testing.assert_close(own[k], v, atol=1e-6, rtol=1e-5, msg=f"{name}.{k}")


@pytest.mark.parametrize("lever", list(P.LEVERS))
def test_levers_keep_the_losses(lever: str) -> None:
    if lever == "torch.compile":
        pytest.skip("compiling takes minutes; eager equivalence is what the lever relies on")
    torch.manual_seed(0)
    base = RefCycleGAN(ngf=WIDTH, ndf=WIDTH, n_blocks=BLOCKS)
    other = P.LeverCycleGAN(ngf=WIDTH, ndf=WIDTH, n_blocks=BLOCKS, **P.LEVERS[lever])
    other.load_from(base)
    batch = P.make_batches(SIZE, 1)[0]
    # one iteration: after an Adam step the two runs drift apart by rounding (Adam's first
    # step moves every weight by about lr whatever the size of its gradient), so later
    # iterations are only equal for bitwise-equal computations (see the test above)
    ref = copy.deepcopy(base).train_step(batch)
    got = other.train_step(batch)
    assert _close(ref, got), (lever, ref, got)


def test_fold_reflection_pads_same_output() -> None:
    torch.manual_seed(0)
    g = RefCycleGAN(ngf=WIDTH, ndf=WIDTH, n_blocks=2).netG_A
    x = torch.randn(2, 3, SIZE, SIZE)
    y = g(x)
    P.fold_reflection_pads(g)
    assert not any(isinstance(m, torch.nn.ReflectionPad2d) for m in g.modules())
    torch.testing.assert_close(g(x), y, atol=1e-6, rtol=1e-5)


def test_count_flops_counts_multiply_adds_twice() -> None:
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert C.count_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_table_is_markdown() -> None:
    text = C.table(["a", "bb"], [[1.23456, "x"], [12345.6, "yy"]])
    lines = text.splitlines()
    assert lines[0] == "| a     | bb |"
    assert lines[1].startswith("|--")
    assert "1.23" in lines[2] and "12346" in lines[3]


@pytest.mark.parametrize(
    "train",
    [{}, {"lambda_identity": 0.0}, {"batch_size": 2}],
    ids=["identity", "no-identity", "batch-2"],
)
def test_batched_forwards_same_as_unbatched(train: dict) -> None:
    n = train.get("batch_size", 1)
    model = {"ngf": WIDTH, "ndf": WIDTH, "n_blocks": BLOCKS}
    tasks = []
    for batched in (False, True):
        torch.manual_seed(0)
        mode = "always" if batched else "never"
        overrides = {"model": model, "train": {**train, "batched_forwards": mode}}
        tasks.append(P.make_task("cyclegan/cityscapes", overrides, SIZE))
    g = torch.Generator().manual_seed(3)
    batch = {k: torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1 for k in ("A", "B")}
    plain, batched = ({k: float(v) for k, v in t.train_step(batch, 0).items()} for t in tasks)
    assert set(plain) == set(batched)
    for k in plain:
        assert batched[k] == pytest.approx(plain[k], rel=1e-5, abs=1e-7), k
    for name in tasks[0].nets:
        theirs = dict(tasks[0].nets[name].named_parameters())
        for k, p in tasks[1].nets[name].named_parameters():
            if not _cancelled_by_norm(k):
                _same_update(p.detach(), theirs[k].detach(), f"{name}.{k}")


def _g_a_batch_sizes(monkeypatch, model: dict, train: dict, size: int) -> list[int]:
    task = P.make_task("cyclegan/cityscapes", {"model": model, "train": train}, size)
    sizes: list[int] = []
    original = task.G_A.forward
    monkeypatch.setattr(task.G_A, "forward", lambda x: sizes.append(x.shape[0]) or original(x))
    task.train_step(P.make_batches(size, 1)[0], 0)
    return sizes


def test_batch_norm_keeps_separate_forwards(monkeypatch) -> None:
    """With batch norm, batching would mix the images' statistics: never batched."""
    model = {"ngf": WIDTH, "ndf": WIDTH, "n_blocks": BLOCKS, "norm": "batch"}
    sizes = _g_a_batch_sizes(monkeypatch, model, {"batched_forwards": "always"}, SIZE)
    assert sizes == [1, 1, 1]  # fake_B, rec_B, idt_A: one image each


def test_auto_batches_small_images_only(monkeypatch) -> None:
    model = {"ngf": 4, "ndf": 4, "n_blocks": 1}
    assert _g_a_batch_sizes(monkeypatch, model, {}, SIZE) == [3]  # [A, B, fake_A]
    assert _g_a_batch_sizes(monkeypatch, model, {}, 132) == [1, 1, 1]  # above 128x128
