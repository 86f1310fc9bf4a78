"""Pre-emption: SIGTERM / SIGINT save a checkpoint at the next step boundary and exit with
128 + signal and a clear message; a second signal exits at once. Data-loader workers
ignore the signals (Ctrl-C reaches the whole process group) and never crash the run."""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path

import pytest
import toytask
from relutil import CYCLEGAN_TINY, GAN_TINY, Proc, assert_same_weights, image_folder

import spap.systems
from spap.cli import main as cli_main
from spap.train import registry
from spap.train.checkpoint import list_checkpoints, load_checkpoint


@pytest.mark.parametrize(
    ("signum", "group"),
    [(signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["SIGTERM", "SIGINT-to-process-group"],
)
def test_signal_saves_a_checkpoint_at_the_next_step_and_exits(
    tmp_path: Path, signum: int, group: bool, monkeypatch, caplog
) -> None:
    data = image_folder(tmp_path / "data", n=8)
    run_dir = tmp_path / "run"
    args = [
        "train", "gan", "--data", data, "--out", run_dir, "--steps", 100000,
        "run.checkpoint_every=4", "run.num_workers=2", "train.sleep=0.02",
    ]  # fmt: skip
    proc = Proc(args, tmp_path / "log", toy=True)
    try:
        proc.wait_for("the first checkpoint", lambda: bool(list_checkpoints(run_dir)))
        proc.signal(signum, group=group)  # group: as Ctrl-C, the workers get it too
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    err = proc.stderr()
    assert code == 128 + signum, err[-2000:]
    name = signal.Signals(signum).name
    assert f"received {name}: saving a checkpoint at the next step boundary" in err
    m = re.search(rf"stopped by {name} at step (\d+); checkpoint saved in (\S+); "
                  r"continue with --resume", err)  # fmt: skip
    assert m, err[-2000:]
    step = int(m.group(1))
    assert Path(m.group(2)) == run_dir / "checkpoints"
    state = load_checkpoint(run_dir, kind="gan")
    assert state["step"] == step >= 4  # the signal came after the first checkpoint (step 4)
    assert "Traceback" not in err and "DataLoader worker" not in err, err[-3000:]
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    # log records written while the progress bar is up go on lines of their own (the bar
    # is erased, the record printed, the bar redrawn), never glued onto the bar
    pieces = re.split(r"[\r\n]", err)
    assert any(p.startswith(f"WARNING: received {name}") for p in pieces), err[-2000:]
    assert not [p for p in pieces if "it/s" in p and "WARNING" in p], err[-2000:]

    # ... and the run continues from there (in this process).
    monkeypatch.setitem(registry.TASKS, "gan", "toytask:CliToyTask")
    monkeypatch.setitem(spap.systems.SYSTEMS, "gan", toytask.CLI_TOY_SYSTEM)
    with caplog.at_level(logging.INFO):
        code = cli_main(["train", "gan", "--data", str(data), "--out", str(run_dir), "--resume",
                         "--steps", str(step + 2), "train.sleep=0", "run.num_workers=0"])  # fmt: skip
    assert code == 0
    assert f"resuming gan from {run_dir / 'checkpoints'}" in caplog.text
    assert load_checkpoint(run_dir)["step"] == step + 2


def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    """The step at index 3 hangs for 120 s: the first SIGTERM waits for it, the second one
    stops the process at once; the checkpoint of step 3 (before the hang) is intact."""
    data = image_folder(tmp_path / "data", n=8)
    run_dir, hang = tmp_path / "run", tmp_path / "hanging"
    args = [
        "train", "gan", "--data", data, "--out", run_dir, "--steps", 100000,
        "run.checkpoint_every=1", "run.num_workers=2", "train.hang_at=3", f"train.hang_file={hang}",
    ]  # fmt: skip
    proc = Proc(args, tmp_path / "log", toy=True)
    try:
        proc.wait_for("the hanging step", hang.exists)
        proc.signal(signal.SIGTERM)
        proc.wait_for("the first signal to be handled", lambda: "received SIGTERM" in proc.stderr())
        proc.signal(signal.SIGTERM)
        code = proc.wait(timeout=30)  # far less than the 120 s the step would take
    finally:
        proc.kill()
    err = proc.stderr()
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert err.rstrip().splitlines()[-1] == "spap train: interrupted by SIGTERM", err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert [p.name for p in list_checkpoints(run_dir)][-1] == "step_0000003.pt"
    assert load_checkpoint(run_dir)["step"] == 3


@pytest.mark.parametrize("task", ["gan", "cyclegan"])
def test_real_task_preempted_then_resumed_equals_uninterrupted(tmp_path: Path, task: str) -> None:
    """`spap train gan|cyclegan` (tiny networks) stopped by SIGTERM mid-run, then resumed,
    ends with bitwise the weights of an uninterrupted run of the same length."""
    if task == "gan":
        data = image_folder(tmp_path / "data", n=4, size=16)
        tiny = GAN_TINY
    else:
        data = tmp_path / "data"
        image_folder(data / "trainA", n=3, size=16)
        image_folder(data / "trainB", n=3, size=16, seed=10)
        tiny = CYCLEGAN_TINY
    common = [*tiny, "run.sample_every=1", "run.checkpoint_every=1000"]
    run_dir = tmp_path / "run"
    proc = Proc(["train", task, "--data", data, "--out", run_dir, "--steps", 100000, *common],
                tmp_path / "log")  # fmt: skip
    try:
        proc.wait_for("two steps", (run_dir / "samples" / "step_0000002.png").exists, timeout=120)
        proc.signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    err = proc.stderr()
    assert code == 143, err[-2000:]
    m = re.search(r"stopped by SIGTERM at step (\d+); checkpoint saved", err)
    assert m and "Traceback" not in err, err[-2000:]
    k = int(m.group(1))
    assert load_checkpoint(run_dir, kind=task)["step"] == k

    steps = str(k + 2)
    assert cli_main(["train", task, "--data", str(data), "--out", str(run_dir), "--resume",
                     "--steps", steps]) == 0  # fmt: skip
    assert cli_main(["train", task, "--data", str(data), "--out", str(tmp_path / "ref"),
                     "--steps", steps, *common]) == 0  # fmt: skip
    resumed, reference = load_checkpoint(run_dir), load_checkpoint(tmp_path / "ref")
    assert resumed["step"] == reference["step"] == k + 2
    assert_same_weights(resumed, reference)
