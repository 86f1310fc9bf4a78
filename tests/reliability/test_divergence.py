"""Diverging training: a NaN/Inf loss (or gradient) is caught in the step it appears, before
the update; the run stops naming the loss and the step (the last good checkpoint stays
``latest``) or, with ``run.nan_policy=skip``, skips that update."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import toytask
from relutil import image_folder, toy_cfg, weights
from toytask import CliToyTask

import spap.systems
from spap.cli import main as cli_main
from spap.errors import NonFiniteLossError
from spap.train import registry
from spap.train.checkpoint import list_checkpoints, load_checkpoint
from spap.train.loop import run

CASES = [("loss", "nan"), ("loss", "inf"), ("grad", "nan"), ("grad", "inf")]


def _all_finite(state: dict[str, Any]) -> bool:
    return all(torch.isfinite(v).all() for v in weights(state).values())


@pytest.mark.parametrize(("where", "value"), CASES, ids=["-".join(c) for c in CASES])
def test_stop_names_the_loss_and_the_step(tmp_path: Path, where: str, value: str) -> None:
    data = image_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    cfg = toy_cfg(data, run={"steps": 10, "checkpoint_every": 2},
                  train={"bad_at": 5, "bad_value": value, "bad_where": where})  # fmt: skip
    with pytest.raises(NonFiniteLossError) as exc:
        run(CliToyTask, cfg, run_dir)
    msg = str(exc.value)
    what = "loss loss_rec is" if where == "loss" else "gradient of loss loss_rec is not finite"
    assert msg.startswith(what) and "at step 5" in msg, msg
    if where == "loss":
        assert msg.startswith(f"loss loss_rec is {float(value)} at step 5"), msg
    assert msg.endswith(
        f"the last good checkpoint is {run_dir / 'checkpoints' / 'step_0000004.pt'}"
    )
    assert "\n" not in msg
    state = load_checkpoint(run_dir)
    assert state["step"] == 4 and _all_finite(state)
    assert [p.name for p in list_checkpoints(run_dir)][-1] == "step_0000004.pt"


@pytest.mark.parametrize(("where", "value"), CASES, ids=["-".join(c) for c in CASES])
def test_skip_policy_skips_only_that_update(
    tmp_path: Path, where: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The skipped step leaves the weights exactly as they were: a run that skips step 5 has
    the weights of step 5's checkpoint after step 5."""
    data = image_folder(tmp_path / "data")
    bad = {"bad_at": 5, "bad_value": value, "bad_where": where}
    with caplog.at_level(logging.WARNING):
        summary = run(CliToyTask, toy_cfg(data, run={"steps": 6, "checkpoint_every": 1,
                      "keep_last": 10, "nan_policy": "skip"}, train=bad), tmp_path / "skip")  # fmt: skip
    assert summary["step"] == 6 and summary["skipped_updates"] == 1
    assert "at step 5" in caplog.text and "update skipped" in caplog.text
    ck = tmp_path / "skip" / "checkpoints"
    s5, s6 = load_checkpoint(ck / "step_0000005.pt"), load_checkpoint(ck / "step_0000006.pt")
    assert _all_finite(s6)
    w5, w6 = weights(s5), weights(s6)
    assert all(torch.equal(w5[k], w6[k]) for k in w5)  # step index 5 changed nothing


def test_non_finite_weights_are_never_checkpointed(tmp_path: Path, monkeypatch) -> None:
    """Even when weights turn non-finite outside an optimizer step (e.g. a buffer), the
    checkpoint is refused and the last good one stays ``latest``."""
    data = image_folder(tmp_path / "data")
    step = CliToyTask.train_step

    def poisoned(self, batch, i):
        out = step(self, batch, i)
        if i == 2:  # after the update of step index 2 (the checkpoint at step 2 is earlier)
            with torch.no_grad():
                next(self.net.parameters()).view(-1)[0] = math.inf
        return out

    monkeypatch.setattr(CliToyTask, "train_step", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as exc:
        run(CliToyTask, toy_cfg(data, run={"steps": 10, "checkpoint_every": 2}), run_dir)
    assert str(exc.value).startswith("weights net.0.weight are not finite at step 4")
    assert load_checkpoint(run_dir)["step"] == 2


def test_stop_through_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = image_folder(tmp_path / "data")
    monkeypatch.setitem(registry.TASKS, "gan", "toytask:CliToyTask")
    monkeypatch.setitem(spap.systems.SYSTEMS, "gan", toytask.CLI_TOY_SYSTEM)
    code = cli_main(["train", "gan", "--data", str(data), "--out", str(tmp_path / "run"),
                     "--steps", "10", "run.checkpoint_every=3", "train.bad_at=7"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("spap train: error: loss loss_rec is nan at step 7 "), err[-1]
    assert "run.nan_policy=skip" in err[-1] and err[-1].endswith("step_0000006.pt")


@pytest.mark.parametrize(
    "tensors, expected",
    [
        ([torch.ones(3), torch.zeros(2, 2)], True),
        ([torch.ones(3), torch.tensor([1.0, float("nan")])], False),
        ([torch.tensor([float("inf")]), torch.ones(4)], False),
        # +inf and -inf in different tensors: their sum is NaN, still caught
        ([torch.tensor([float("inf")]), torch.tensor([-float("inf")])], False),
        # finite values whose sum overflows: the exact check clears them
        ([torch.full((4,), 3e38), torch.full((4,), 3e38)], True),
        ([torch.full((4,), 3e38), torch.tensor([float("nan")])], False),
        ([torch.empty(0), torch.ones(2, dtype=torch.float16)], True),
        ([], True),
    ],
)
def test_finite_check_catches_every_non_finite_value(tensors, expected):
    from spap.train.context import all_finite as _all_finite_tensors

    assert _all_finite_tensors(tensors) is expected
