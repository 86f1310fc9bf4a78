"""Disk full: a checkpoint write that fails (ENOSPC, simulated) leaves the previous
checkpoint intact and stops the run with a clear one-line message."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest
import torch
import toytask
from relutil import image_folder, toy_cfg
from toytask import CliToyTask

import spap.systems
from spap.cli import main as cli_main
from spap.errors import CheckpointError
from spap.train import registry
from spap.train.checkpoint import list_checkpoints, load_checkpoint
from spap.train.loop import run


class _FullDisk:
    """``torch.save`` that writes the first ``calls`` checkpoints normally, then only part
    of a file before the disk is "full"."""

    def __init__(self, ok_calls: int) -> None:
        self.ok_calls = ok_calls
        self.calls = 0
        self.real = torch.save

    def __call__(self, obj, f, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.ok_calls:
            return self.real(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04" + b"\x00" * 4096)  # a partial write, then the error
        raise OSError(errno.ENOSPC, "No space left on device")


def _no_temporaries(run_dir: Path) -> bool:
    return not [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_failed_checkpoint_write_stops_the_run_and_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = image_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    monkeypatch.setattr(torch, "save", _FullDisk(ok_calls=1))
    cfg = toy_cfg(data, run={"steps": 10, "checkpoint_every": 2})
    with pytest.raises(CheckpointError) as exc:
        run(CliToyTask, cfg, run_dir)
    msg = str(exc.value)
    step2, step4 = run_dir / "checkpoints" / "step_0000002.pt", "step_0000004.pt"
    assert msg == (
        f"could not write {run_dir / 'checkpoints' / step4}: no space left on device; the "
        f"previous checkpoint is intact; the last good checkpoint is {step2}"
    )
    monkeypatch.undo()
    assert list_checkpoints(run_dir) == [step2]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_0000002.pt"
    assert load_checkpoint(run_dir)["step"] == 2
    assert _no_temporaries(run_dir)

    # Space is back: the run resumes from step 2 and finishes.
    run(CliToyTask, cfg, run_dir, resume=True)
    assert load_checkpoint(run_dir)["step"] == 10


def test_disk_full_through_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = image_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    monkeypatch.setitem(registry.TASKS, "gan", "toytask:CliToyTask")
    monkeypatch.setitem(spap.systems.SYSTEMS, "gan", toytask.CLI_TOY_SYSTEM)
    monkeypatch.setattr(torch, "save", _FullDisk(ok_calls=2))
    code = cli_main(["train", "gan", "--data", str(data), "--out", str(run_dir), "--steps", "9",
                     "run.checkpoint_every=3", "run.num_workers=0"])  # fmt: skip
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("spap train: error: could not write ") and len(err[-1]) < 400
    assert "no space left on device; the previous checkpoint is intact" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert load_checkpoint(run_dir)["step"] == 6 and _no_temporaries(run_dir)


def test_failed_pointer_write_keeps_a_consistent_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new checkpoint file is complete but the disk fills before `latest` is updated:
    the run stops; `latest` still names the previous checkpoint, both load."""
    import spap.train.checkpoint as ck

    data = image_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    real = ck.atomic_write_bytes

    def no_space(fh) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def failing(path: Path, write) -> None:
        full = path.name == "latest" and (path.parent / "step_0000004.pt").exists()
        real(path, no_space if full else write)

    monkeypatch.setattr(ck, "atomic_write_bytes", failing)
    with pytest.raises(CheckpointError, match="latest: no space left on device"):
        run(CliToyTask, toy_cfg(data, run={"steps": 10, "checkpoint_every": 2}), run_dir)
    monkeypatch.undo()
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_0000002.pt"
    assert load_checkpoint(run_dir)["step"] == 2
    assert load_checkpoint(run_dir / "checkpoints" / "step_0000004.pt")["step"] == 4


def test_sample_grid_write_failure_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Sample pictures are not worth a run: their write errors are a warning; the run goes
    on (a full disk then stops it at the next checkpoint, as above)."""
    import spap.train.logger as logger  # the module that calls save_grid

    data = image_folder(tmp_path / "data")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(logger, "save_grid", no_space)
    monkeypatch.setattr(CliToyTask, "visuals", lambda self: {"x": torch.zeros(1, 3, 8, 8)})
    with caplog.at_level(logging.WARNING):
        summary = run(
            CliToyTask, toy_cfg(data, run={"steps": 4, "sample_every": 1}), tmp_path / "r"
        )
    assert summary["step"] == 4
    assert caplog.text.count("could not write the sample grid") == 1
    assert "No space left on device" in caplog.text
