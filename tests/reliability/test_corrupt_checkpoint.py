"""Corrupt checkpoints: a one-line error naming the file, never wrong weights loaded
silently; ``--resume`` falls back to the previous good checkpoint with a warning."""

from __future__ import annotations

import logging
import os
import random
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
from spap.train.checkpoint import list_checkpoints, load_checkpoint, state_digest
from spap.train.loop import run


@pytest.fixture
def toy_cli(monkeypatch: pytest.MonkeyPatch):
    """``spap train gan`` runs the toy task in this process."""
    monkeypatch.setitem(registry.TASKS, "gan", "toytask:CliToyTask")
    monkeypatch.setitem(spap.systems.SYSTEMS, "gan", toytask.CLI_TOY_SYSTEM)
    return cli_main


@pytest.fixture
def toy_run(tmp_path: Path) -> Path:
    """A finished toy run with checkpoints at steps 2, 4, 6."""
    data = image_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    run(CliToyTask, toy_cfg(data, run={"steps": 6, "checkpoint_every": 2, "keep_last": 3}), run_dir)
    assert [p.name for p in list_checkpoints(run_dir)] == [
        "step_0000002.pt", "step_0000004.pt", "step_0000006.pt",
    ]  # fmt: skip
    return run_dir


def _damage(data: bytes, rng: random.Random, how: str) -> bytes:
    b = bytearray(data)
    if how == "truncate":
        return bytes(b[: rng.randrange(len(b))])
    if how == "flip":
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    i, n = rng.randrange(len(b)), rng.randrange(1, 64)  # overwrite a run of bytes
    b[i : i + n] = bytes(rng.randrange(256) for _ in range(n))
    return bytes(b[: len(data)])


def test_damaged_files_never_load_wrong_content(toy_run: Path, tmp_path: Path) -> None:
    """300 random truncations, bit flips and overwritten runs of bytes: each load either
    fails with a one-line CheckpointError naming the file or returns the original content
    (damage in bytes the loader never reads, e.g. zip padding)."""
    original = load_checkpoint(toy_run)
    digest = state_digest(original)
    data = (toy_run / "checkpoints" / "step_0000006.pt").read_bytes()
    rng = random.Random(0)
    damaged = tmp_path / "damaged.pt"
    outcomes = {"refused": 0, "identical": 0}
    for trial in range(300):
        damaged.write_bytes(_damage(data, rng, ("truncate", "flip", "overwrite")[trial % 3]))
        try:
            state = load_checkpoint(damaged)
        except CheckpointError as exc:
            msg = str(exc)
            assert str(damaged) in msg and "\n" not in msg, msg
            outcomes["refused"] += 1
            continue
        assert state_digest(state) == digest, f"trial {trial}: damaged content loaded silently"
        outcomes["identical"] += 1
    assert outcomes["refused"] > 200, outcomes


@pytest.mark.parametrize(
    "damage",
    ["truncated", "garbage", "empty", "bitflip_in_weights"],
)
def test_one_line_error_names_the_file_and_the_problem(
    toy_run: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = toy_run / "checkpoints" / "step_0000006.pt"
    data = ckpt.read_bytes()
    if damage == "truncated":
        ckpt.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "garbage":
        ckpt.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        ckpt.write_bytes(b"")
    else:  # one bit of the first tensor's bytes: the zip container itself has no CRC check
        i = data.index(b"data/0") + 200
        ckpt.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :])
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(ckpt)
    msg = str(exc.value)
    assert msg.startswith(str(ckpt)) and "\n" not in msg
    assert ("truncated or corrupt" in msg) or ("checksum mismatch" in msg), msg

    # The same through a command: `spap sample --checkpoint` (exit 2, one line).
    out = toy_run.parent / "samples"
    code = cli_main(["sample", "--checkpoint", str(ckpt), "--num", "1", "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(ckpt) in err[0], err


def test_resume_falls_back_to_the_previous_good_checkpoint(
    toy_run: Path, toy_cli, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    newest = toy_run / "checkpoints" / "step_0000006.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    data = load_checkpoint(toy_run / "checkpoints" / "step_0000004.pt")["config"]["data"]["root"]
    with caplog.at_level(logging.INFO):
        code = toy_cli(["train", "gan", "--data", data, "--out", str(toy_run), "--resume",
                        "--steps", "8"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    text = caplog.text
    assert f"skipping unreadable checkpoint: {newest}: truncated or corrupt" in text
    assert f"resuming from the previous good checkpoint {toy_run / 'checkpoints'}" in text
    assert text.count("skipping unreadable checkpoint") == 1  # read once, warned once
    assert "resuming gan from " + str(toy_run / "checkpoints" / "step_0000004.pt") in text
    assert load_checkpoint(toy_run)["step"] == 8


def test_resume_with_no_readable_checkpoint_is_one_line(
    toy_run: Path, toy_cli, capsys: pytest.CaptureFixture[str]
) -> None:
    for f in list_checkpoints(toy_run):
        f.write_bytes(b"\x00" * 100)
    config = (toy_run / "config.yaml").read_text()
    code = toy_cli(["train", "gan", "--data", "x", "--out", str(toy_run), "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "no readable checkpoint in" in err[0] and "step_0000006.pt" in err[0]
    assert (toy_run / "config.yaml").read_text() == config


@pytest.mark.parametrize("pointer", [b"\xff\xfe garbage", b"step_0000099.pt", b""])
def test_a_damaged_latest_pointer_is_ignored(toy_run: Path, pointer: bytes) -> None:
    (toy_run / "checkpoints" / "latest").write_bytes(pointer)
    assert load_checkpoint(toy_run)["step"] == 6


def test_resume_with_changed_model_keys_is_one_line_and_keeps_the_run(
    toy_run: Path, toy_cli, capsys: pytest.CaptureFixture[str]
) -> None:
    """Overrides given with --resume win; one that changes the networks cannot resume."""
    config = (toy_run / "config.yaml").read_text()
    before = {p.name: p.stat().st_mtime_ns for p in (toy_run / "checkpoints").iterdir()}
    code = toy_cli(["train", "gan", "--out", str(toy_run), "--resume", "train.width=8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("spap train: error: cannot resume from ")
    assert "does not fit this config" in err[0]
    assert (toy_run / "config.yaml").read_text() == config
    assert {p.name: p.stat().st_mtime_ns for p in (toy_run / "checkpoints").iterdir()} == before


def test_checksum_covers_every_tensor_and_value(toy_run: Path) -> None:
    state = load_checkpoint(toy_run)
    base = state_digest(state)
    w = state["task"]["models"]["net"]["0.weight"]
    w.view(-1)[3] = torch.nextafter(w.view(-1)[3], torch.tensor(2.0))
    assert state_digest(state) != base
    w.view(-1)[3] = torch.nextafter(w.view(-1)[3], torch.tensor(-2.0))
    assert state_digest(state) == base
    state["step"] = 7
    assert state_digest(state) != base


def test_a_damaged_checksum_key_does_not_switch_the_check_off(
    toy_run: Path, tmp_path: Path
) -> None:
    data = bytearray((toy_run / "checkpoints" / "step_0000006.pt").read_bytes())
    i = data.rfind(b"checksum")  # the top-level key, stored last
    assert i > 0
    data[i + 7] ^= 1  # "checksum" -> "checksul": the state no longer names its checksum
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="no checksum"):
        load_checkpoint(damaged)
