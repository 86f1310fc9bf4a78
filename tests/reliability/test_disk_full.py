"""Disk full: a write that fails (ENOSPC, EFBIG, a quota ...) leaves the previous checkpoint
intact and stops the run with one line naming what failed and the last good checkpoint,
exit 2. Tested with a fake writer, with real full file systems (a small tmpfs at many
sizes; needs root) and with a real file-size limit (RLIMIT_FSIZE, any user).

PyTorch's zip writer reports a failed ``write`` as a ``RuntimeError`` (``file write
failed`` / ``unexpected pos``), with or without the ``OSError`` chained; the fake writers of
the first tests raise the ``OSError`` directly, the real file systems do not."""

from __future__ import annotations

import contextlib
import errno
import logging
from pathlib import Path

import pytest
import torch
import toytask
from relutil import SmallFilesystem, can_mount_tmpfs, image_folder, run_spap_limited, toy_cfg
from toytask import CliToyTask

import spap.systems
from spap.cli import main as cli_main
from spap.errors import WriteError
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
    with pytest.raises(WriteError) as exc:
        run(CliToyTask, cfg, run_dir)
    msg = str(exc.value)
    step2, step4 = run_dir / "checkpoints" / "step_0000002.pt", "step_0000004.pt"
    assert msg == (
        f"could not write {run_dir / 'checkpoints' / step4}: no space left on device; the "
        f"previous checkpoint is intact; the last good checkpoint is {step2}"
    )
    assert isinstance(exc.value.__cause__, WriteError)
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
    real = ck.atomic_write

    def no_space(fh) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def failing(path: Path, write) -> None:
        full = path.name == "latest" and (path.parent / "step_0000004.pt").exists()
        real(path, no_space if full else write)

    monkeypatch.setattr(ck, "atomic_write", failing)
    with pytest.raises(WriteError, match="latest: no space left on device"):
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


class _FillingFile:
    """A real file that is "full" after ``room`` bytes: its ``write`` then raises ENOSPC, as
    the kernel's does. ``torch.save`` writing into it sees a real failed write and raises
    its own ``RuntimeError``."""

    def __init__(self, fh, room: int) -> None:
        self.fh, self.room = fh, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name: str):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()


def test_pytorch_wrapping_the_error_is_recognised(tmp_path: Path, monkeypatch) -> None:
    """Checkpoint files open with room for 3000 bytes (smaller than a checkpoint): the
    real torch.save fails inside its zip writer, which raises a RuntimeError; the run still
    stops with `no space left on device` and no traceback."""
    import os

    import spap.train.checkpoint as ck

    data = image_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    real_fdopen = os.fdopen
    seen: list[BaseException] = []
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        try:
            return real_save(obj, f, *args, **kwargs)
        except BaseException as exc:
            seen.append(exc)
            raise

    def fdopen(fd, mode="r", *args, **kwargs):
        fh = real_fdopen(fd, mode, *args, **kwargs)
        return _FillingFile(fh, 3000) if "step_" in os.readlink(f"/proc/self/fd/{fd}") else fh

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(ck.os, "fdopen", fdopen)
    with pytest.raises(WriteError) as exc:
        run(CliToyTask, toy_cfg(data, run={"steps": 4, "checkpoint_every": 2}), run_dir)
    monkeypatch.undo()
    assert seen and isinstance(seen[0], RuntimeError), seen  # what PyTorch raised
    assert str(exc.value) == (
        f"could not write {run_dir / 'checkpoints' / 'step_0000002.pt'}: no space left on "
        "device; no checkpoint was saved"
    )
    assert _no_temporaries(run_dir) and not list_checkpoints(run_dir)


# ----------------------------------------------------------------------------- real disks


@pytest.fixture(scope="module")
def mountable(tmp_path_factory: pytest.TempPathFactory) -> bool:
    return can_mount_tmpfs(tmp_path_factory.mktemp("probe") / "m")


def _cli(args: list[str], capsys) -> tuple[int, list[str]]:
    code = cli_main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return code, [ln for ln in err.splitlines() if ln.startswith("spap ")]


def _toy_cli(monkeypatch) -> None:
    monkeypatch.setitem(registry.TASKS, "gan", "toytask:CliToyTask")
    monkeypatch.setitem(spap.systems.SYSTEMS, "gan", toytask.CLI_TOY_SYSTEM)


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_real_full_filesystem_at_every_size(
    tmp_path: Path, mountable: bool, monkeypatch, capsys
) -> None:
    """`spap train` onto tmpfs file systems of 4 KB to 96 KB: the disk fills while the run
    folder is locked, while config.yaml, the TensorBoard log, a checkpoint or `latest` is
    written. Every size ends with exit 0, or exit 2 and one line naming the file that could
    not be written and the last good checkpoint, which loads; no temporary file is left.
    Then space comes back (the file system grows) and the run resumes to its end."""
    if not mountable:
        pytest.skip("cannot mount a tmpfs here (needs root); see test_file_size_limit")
    _toy_cli(monkeypatch)
    data = image_folder(tmp_path / "data", n=4, size=12)
    outcomes = {}
    for kb in (4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96):
        with SmallFilesystem(tmp_path / f"fs{kb}", kb * 1024) as fs:
            run_dir = fs.path / "run"
            code, lines = _cli(["train", "gan", "--data", data, "--out", run_dir, "--steps", 6,
                                "run.checkpoint_every=2", "run.num_workers=0",
                                "run.log_every=1"], capsys)  # fmt: skip
            assert not _temporaries(fs.path), kb
            if code == 0:
                assert load_checkpoint(run_dir)["step"] == 6
                outcomes[kb] = "finished"
                continue
            assert code == 2 and len(lines) == 1, (kb, lines)
            msg = lines[0]
            assert msg.startswith("spap train: error: could not write "), msg
            assert ": no space left on device; " in msg, msg
            if list_checkpoints(run_dir):
                good = msg.split("the last good checkpoint is ")[1]
                assert load_checkpoint(good)["step"] in (2, 4), msg
                outcomes[kb] = f"stopped, resumable from {Path(good).name}"
                fs.resize(1 << 20)  # space is back
                code, lines = _cli(["train", "gan", "--data", data, "--out", run_dir,
                                    "--resume"], capsys)  # fmt: skip
                assert code == 0, lines
                assert load_checkpoint(run_dir)["step"] == 6
            else:
                assert msg.endswith("; no checkpoint was saved"), msg
                outcomes[kb] = "stopped before the first checkpoint"
    print(outcomes)
    kinds = set(outcomes.values())
    assert "finished" in kinds and "stopped before the first checkpoint" in kinds
    assert any(k.startswith("stopped, resumable") for k in kinds)


@pytest.mark.slow  # a subprocess: ~5 s of CPU
def test_file_size_limit(tmp_path: Path) -> None:
    """A real file-size limit (`ulimit -f`, no root needed): the checkpoint is larger than
    the limit; the write fails with EFBIG (spap ignores SIGXFSZ, which would kill the
    process silently) and the run stops in one line, exit 2."""
    data = image_folder(tmp_path / "data")
    run_dir = tmp_path / "run"
    res = run_spap_limited(["train", "gan", "--data", data, "--out", run_dir, "--steps", 4,
                            "run.checkpoint_every=2", "run.num_workers=0",
                            "train.ballast=20000"], toy=True, file_size=100_000)  # fmt: skip
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("spap ")]
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr[-3000:]
    assert lines[0] == (
        f"spap train: error: could not write {run_dir / 'checkpoints' / 'step_0000002.pt'}: "
        "file too large (the file-size limit, ulimit -f); no checkpoint was saved"
    )
    assert not _temporaries(run_dir)


@pytest.mark.slow  # the ONNX export alone takes ~10 s
def test_outputs_on_a_full_filesystem(
    tmp_path: Path, mountable: bool, cyclegan_run: Path, gan_run: Path, capsys
) -> None:
    """`translate`, `sample` and `export` onto a full file system: exit 2, one line, and
    no partial file (every image left decodes; no export file, no temporary file)."""
    if not mountable:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    from PIL import Image

    images = image_folder(tmp_path / "images", n=12, size=64)
    with SmallFilesystem(tmp_path / "fs", 40 * 1024) as fs:
        commands = {
            "translate": ["translate", "--checkpoint", cyclegan_run, "--input", images,
                          "--output", fs.path / "t", "--device", "cpu"],
            "sample": ["sample", "--checkpoint", gan_run, "--num", 200, "--output",
                       fs.path / "s", "--device", "cpu"],
        }  # fmt: skip
        for fmt in ("torchscript", "safetensors", "onnx"):
            commands[fmt] = ["export", "--checkpoint", cyclegan_run, "--format", fmt,
                             "--output", fs.path / f"g.{fmt}"]  # fmt: skip
        filler = fs.path / "filler"
        for name, args in commands.items():
            if name in ("torchscript", "safetensors", "onnx"):  # leave almost nothing free
                filler.write_bytes(b"")
                with contextlib.suppress(OSError), open(filler, "ab") as fh:
                    fh.write(b"\0" * (36 * 1024))
            if name == "onnx":
                pytest.importorskip("onnxscript")
            code, lines = _cli(args, capsys)
            assert code == 2 and len(lines) == 1, (name, lines)
            assert lines[0].endswith("no space left on device"), lines[0]
            assert f"could not write {fs.path}" in lines[0], lines[0]
            assert not _temporaries(fs.path), name
            for png in fs.path.rglob("*.png"):
                with Image.open(png) as im:
                    im.load()  # complete, or not there at all
        assert not list(fs.path.glob("g.*")), "an export file was left half-written"


def test_report_on_a_full_filesystem(tmp_path: Path, mountable: bool) -> None:
    if not mountable:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    from spap.apps.report import Report

    with SmallFilesystem(tmp_path / "fs", 16 * 1024) as fs:
        rep = Report(fs.path / "report", title="full")
        rep.text("x" * 40_000)
        with pytest.raises(WriteError, match=r"index.html: no space left on device"):
            rep.write()
        assert not (fs.path / "report" / "index.html").exists()
        assert not _temporaries(fs.path)
