"""``run.logger=wandb``: offline Weights & Biases logging writes a run folder."""

from __future__ import annotations

import pytest

from train.runs import train_cyclegan, write_unpaired


def test_wandb_offline_writes_a_run(tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb", reason="wandb not installed (pip install wandb)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    data = write_unpaired(tmp_path / "data")
    run = tmp_path / "run"
    assert train_cyclegan(data, run, 2, "run.logger=both") == 0
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "no W&B event file"
    assert (run / "tb").is_dir()  # both: TensorBoard too
