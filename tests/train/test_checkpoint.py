"""Checkpoint files: atomic writes, safe loading, fallback, keep-last."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from spap.errors import CheckpointError, WriteError
from spap.train.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointManager,
    list_checkpoints,
    load_checkpoint,
    load_for_resume,
    resolve_checkpoint,
)


def _state(step: int, kind: str = "gan") -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "step": step,
        "task": {"models": {"G": {"w": torch.full((3,), float(step))}}},
    }


def test_manager_keeps_last_k_and_latest(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        m.save(_state(step), step)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_0000002.pt", "step_0000003.pt"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_0000003.pt"
    assert resolve_checkpoint(tmp_path).name == "step_0000003.pt"
    assert load_checkpoint(tmp_path)["step"] == 3
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.suffix == ".tmp"]


def test_truncated_checkpoint_one_line_error_and_fallback(tmp_path: Path, caplog) -> None:
    m = CheckpointManager(tmp_path, keep_last=3)
    m.save(_state(1), 1)
    newest = m.save(_state(2), 2)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as exc:
        load_checkpoint(newest)
    assert str(newest) in str(exc.value) and "\n" not in str(exc.value)
    state = load_for_resume(tmp_path)
    assert state["step"] == 1
    assert "previous good checkpoint" in caplog.text


def test_garbage_and_foreign_files(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(bad)
    plain = tmp_path / "plain.pth"
    torch.save({"model.1.weight": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="not a spap checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    state = _state(1)
    state["task"]["extra"] = _Payload(str(marker))
    torch.save(state, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_wrong_kind(tmp_path: Path) -> None:
    CheckpointManager(tmp_path).save(_state(1, kind="gan"), 1)
    with pytest.raises(CheckpointError, match="'gan' checkpoint, but a 'cyclegan'"):
        load_checkpoint(tmp_path, kind="cyclegan")


def test_disk_full_keeps_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    m = CheckpointManager(tmp_path, keep_last=3)
    m.save(_state(1), 1)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(WriteError, match="no space left on device"):
        m.save(_state(2), 2)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000001.pt"]
    assert load_checkpoint(tmp_path)["step"] == 1
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]
