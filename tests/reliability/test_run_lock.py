"""One process at a time trains in a run folder: a second `spap train` on the same `--out`
(fresh or `--resume`; a duplicated cluster job) is refused in one line naming the pid of
the process that holds the folder, and leaves that run alone; the lock of a killed process
(SIGKILL, even with its data-loading workers still alive) never blocks.

Before the lock, two trainers on one folder both finished while `latest` flipped between
their trajectories, and a `--resume` on a live run deleted the live run's in-flight
temporary checkpoint, which then died with "No such file or directory"."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
import toytask
from relutil import Proc, image_folder

import spap.errors
import spap.systems
from spap.cli import main as cli_main
from spap.train import registry
from spap.train.checkpoint import LOCK_NAME, RunLock, list_checkpoints, load_checkpoint

#: 12 MB checkpoints at every step: a temporary checkpoint file exists most of the time.
HEAVY = ["run.checkpoint_every=1", "run.keep_last=2", "train.ballast=1000000"]


@pytest.fixture
def toy_cli(monkeypatch) -> None:
    monkeypatch.setitem(registry.TASKS, "gan", "toytask:CliToyTask")
    monkeypatch.setitem(spap.systems.SYSTEMS, "gan", toytask.CLI_TOY_SYSTEM)


def _holder(run_dir: Path) -> int | None:
    try:
        text = (run_dir / LOCK_NAME).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cli(args: list, capsys) -> tuple[int, list[str]]:
    code = cli_main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return code, [ln for ln in err.splitlines() if ln.startswith("spap ")]


@pytest.mark.slow
def test_a_live_run_refuses_a_second_trainer(tmp_path: Path, toy_cli, capsys) -> None:
    data = image_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    proc = Proc(["train", "gan", "--data", data, "--out", run_dir, "--steps", 100000, *HEAVY,
                 "run.num_workers=0"], tmp_path / "log", toy=True)  # fmt: skip
    try:
        proc.wait_for("a checkpoint", lambda: len(list_checkpoints(run_dir)) >= 1)
        assert _holder(run_dir) == proc.p.pid
        busy = f"spap train: error: {run_dir} is in use by another spap process (pid {proc.p.pid})"
        for extra in ([], ["--resume"], ["--resume"], ["--resume"]):
            code, lines = _cli(["train", "gan", "--data", data, "--out", run_dir, *extra], capsys)
            assert code == 2 and len(lines) == 1 and lines[0].startswith(busy), lines
        proc.signal(signal.SIGTERM)  # the live run is unharmed: it stops cleanly
        assert proc.wait(120) == 128 + signal.SIGTERM, proc.stderr()[-3000:]
    finally:
        proc.kill()
    assert "No such file or directory" not in proc.stderr()
    assert load_checkpoint(run_dir)["step"] >= 1
    # the lock went with the process: the run continues here
    steps = load_checkpoint(run_dir)["step"] + 1
    code, lines = _cli(["train", "gan", "--out", run_dir, "--resume", "--steps", steps,
                        "run.checkpoint_every=1000"], capsys)  # fmt: skip
    assert code == 0, lines
    assert load_checkpoint(run_dir)["step"] == steps


@pytest.mark.slow
def test_two_trainers_started_together(tmp_path: Path) -> None:
    """Two fresh `spap train` on one folder at the same moment: one trains, the other is
    refused (naming the first's pid); the folder holds one trajectory."""
    data = image_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    args = ["train", "gan", "--data", data, "--out", run_dir, "--steps", 30,
            "run.checkpoint_every=5", "train.sleep=0.1", "run.num_workers=0"]  # fmt: skip
    procs = [Proc(args, tmp_path / f"log{i}", toy=True) for i in range(2)]
    try:
        codes = [p.wait(240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert sorted(codes) == [0, 2], [p.stderr()[-2000:] for p in procs]
    winner, loser = (procs[0], procs[1]) if codes[0] == 0 else (procs[1], procs[0])
    lines = [ln for ln in loser.stderr().splitlines() if ln.startswith("spap ")]
    assert len(lines) == 1, loser.stderr()[-2000:]
    assert (
        f"is in use by another spap process (pid {winner.p.pid})" in lines[0]
        or "already holds a run" in lines[0]
    ), lines[0]
    assert [int(p.stem.split("_")[1]) for p in list_checkpoints(run_dir)] == [20, 25, 30]
    assert load_checkpoint(run_dir)["step"] == 30


@pytest.mark.slow
def test_a_killed_runs_lock_does_not_block(tmp_path: Path, toy_cli, capsys) -> None:
    """SIGKILL to the training process alone (its 2 data-loading workers live on for a few
    seconds): the folder can be resumed at once."""
    data = image_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    hang = tmp_path / "hanging"
    proc = Proc(["train", "gan", "--data", data, "--out", run_dir, "--steps", 100,
                 "run.checkpoint_every=1", "run.num_workers=2", "train.hang_at=3",
                 f"train.hang_file={hang}"], tmp_path / "log", toy=True)  # fmt: skip
    try:
        proc.wait_for("the hanging step", hang.exists)
        proc.signal(signal.SIGKILL)  # the main process only
        assert proc.wait() == -signal.SIGKILL
        assert _holder(run_dir) == proc.p.pid  # the stale lock file stays ...
        t = time.perf_counter()
        code, lines = _cli(["train", "gan", "--out", run_dir, "--resume", "--steps", 5,
                            "run.num_workers=0", "train.hang_at=-1"], capsys)  # fmt: skip
        assert code == 0, lines  # ... and does not block
        assert time.perf_counter() - t < 60
        assert load_checkpoint(run_dir)["step"] == 5
        assert _holder(run_dir) == os.getpid()
    finally:
        with contextlib.suppress(ProcessLookupError):  # the orphaned workers, if still there
            os.killpg(proc.p.pid, signal.SIGKILL)


def test_lock_api(tmp_path: Path) -> None:
    """`RunLock` in one process: a second holder is refused, releasing frees it, and
    `check` takes nothing."""
    first = RunLock(tmp_path / "run").acquire()
    assert (tmp_path / "run" / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(
        spap.errors.SpapError, match=rf"in use by another spap process \(pid {os.getpid()}\)"
    ):
        RunLock(tmp_path / "run").acquire()
    with pytest.raises(spap.errors.SpapError, match="in use"):
        RunLock(tmp_path / "run").check()
    first.release()
    RunLock(tmp_path / "run").check()
    with RunLock(tmp_path / "run"):
        pass
    RunLock(tmp_path / "missing").check()  # no folder yet: nothing to check
    assert not (tmp_path / "missing").exists()
