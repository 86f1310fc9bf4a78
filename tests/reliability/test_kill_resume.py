"""Kill and resume: SIGKILL at any moment leaves the last complete checkpoint intact and
resumable; resuming ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from relutil import Proc, assert_same_weights, image_folder, toy_cfg
from toytask import CliToyTask

from spap.config import from_dict, merge, to_dict
from spap.train.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_for_resume,
    resolve_checkpoint,
)
from spap.train.loop import run

#: Big checkpoints (1M extra parameters + Adam state = 12 MB) written at every step, so a
#: kill often lands inside a write.
HEAVY = ["run.checkpoint_every=1", "run.keep_last=2", "train.ballast=1000000"]


def _tmp_files(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    return [p for p in folder.iterdir() if p.name.endswith(".tmp")] if folder.is_dir() else []


@pytest.mark.parametrize("moment", ["inside_a_write", "random"])
def test_sigkill_leaves_a_loadable_checkpoint_and_resume_is_exact(
    tmp_path: Path, moment: str
) -> None:
    data = image_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    args = ["train", "gan", "--data", data, "--out", run_dir, "--steps", 100000, *HEAVY]
    proc = Proc([*args, "run.num_workers=0"], tmp_path / "log", toy=True)
    try:
        proc.wait_for("two checkpoints", lambda: len(list_checkpoints(run_dir)) >= 2)
        if moment == "inside_a_write":
            proc.wait_for("a checkpoint write", lambda: bool(_tmp_files(run_dir)), timeout=30)
        else:
            delay = random.uniform(0, 1.0)
            print(f"killing {delay:.3f} s after the second checkpoint")
            time.sleep(delay)
        proc.signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        proc.kill()

    # Every checkpoint file left is complete; `latest` names one of them.
    files = list_checkpoints(run_dir)
    assert files, "no checkpoint survived"
    for f in files:
        assert load_checkpoint(f, kind="gan")["step"] == int(f.stem.split("_")[1])
    latest = load_checkpoint(run_dir, kind="gan")
    assert resolve_checkpoint(run_dir) in files
    state = load_for_resume(run_dir, kind="gan")
    # `latest` is written after the checkpoint it names: killed in between, it still names
    # the previous (complete) one, which is where the run resumes.
    assert state["step"] == latest["step"] >= 1
    assert latest["step"] >= int(files[-1].stem.split("_")[1]) - 1

    # Resume (in this process) to k + 3 steps == an uninterrupted run of k + 3 steps.
    k = state["step"]
    light = {"run": {"steps": k + 3, "checkpoint_every": 1000}}
    cfg = from_dict(type(toy_cfg(data)), merge(state["config"], light))
    run(CliToyTask, cfg, run_dir, resume=True)
    assert not _tmp_files(run_dir), "unfinished temporary files were not cleaned up"
    fresh = from_dict(type(cfg), merge(to_dict(cfg), {}))
    run(CliToyTask, fresh, tmp_path / "uninterrupted")
    resumed, reference = load_checkpoint(run_dir), load_checkpoint(tmp_path / "uninterrupted")
    assert resumed["step"] == reference["step"] == k + 3
    assert_same_weights(resumed, reference)
