"""Bad command lines: every subcommand exits non-zero with a one-line message (no
traceback) for a missing file, a wrong checkpoint kind and an unwritable output folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from relutil import ENV, image_folder, save_rgb

from spap.cli import build_parser
from spap.cli import main as cli_main


def _available() -> set[str]:
    """Registered subcommands, with their second level (``eval fid``, ``data scenes`` ...)."""
    import argparse

    names: set[str] = set()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        names.add(name)
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                names.update(f"{name} {n}" for n in a.choices)
    return names


AVAILABLE = _available()


@pytest.fixture
def paths(tmp_path: Path, gan_run: Path, cyclegan_run: Path) -> dict[str, str]:
    blocker = tmp_path / "a_file"
    blocker.write_text("a file, not a folder")
    img = save_rgb(tmp_path / "img.png", 16)
    images = image_folder(tmp_path / "images", n=2, size=16)
    aligned = tmp_path / "aligned" / "test"
    aligned.mkdir(parents=True)
    save_rgb(aligned / "0.png", 16)
    return {
        "MISSING": str(tmp_path / "missing"),
        "MISSING_PT": str(tmp_path / "missing.pt"),
        "UNWRITABLE": str(blocker / "out"),  # under a regular file: no one can create it
        "GAN": str(gan_run),
        "CG": str(cyclegan_run),
        "IMG": str(img),
        "IMAGES": str(images),
        "ALIGNED": str(tmp_path / "aligned"),
        "DATA_CG": str(cyclegan_run.parent / "data"),
        "OUT": str(tmp_path / "out"),
        "EMPTY": str(tmp_path),
    }


# (case id, argv with placeholders, a substring the one-line message must hold)
CASES = [
    # -- missing files
    ("train-missing-data", "train gan --data MISSING --out OUT --steps 1", "MISSING"),
    ("train-cyclegan-missing-data", "train cyclegan --data MISSING --out OUT", "MISSING"),
    ("train-missing-config", "train gan --data IMAGES --out OUT --config MISSING", "MISSING"),
    ("train-resume-nothing", "train gan --out EMPTY --resume", "holds no checkpoint"),
    ("translate-missing-ckpt", "translate --checkpoint MISSING_PT --input IMG --output OUT",
     "MISSING_PT"),
    ("translate-missing-input", "translate --checkpoint CG --input MISSING --output OUT",
     "MISSING"),
    ("sample-missing-ckpt", "sample --checkpoint MISSING_PT --num 1 --output OUT", "MISSING_PT"),
    ("export-missing-ckpt", "export --checkpoint MISSING_PT --format onnx --output OUT/g.onnx",
     "MISSING_PT"),
    ("eval fid-missing", "eval fid --real MISSING --fake IMAGES --weights MISSING_PT",
     "MISSING"),
    ("eval kid-missing", "eval kid --real IMAGES --fake MISSING --weights MISSING_PT",
     "MISSING"),
    ("eval is-missing", "eval is --fake MISSING --weights MISSING_PT", "MISSING"),
    ("eval stats-missing", "eval stats --real MISSING --out OUT/s.npz --weights MISSING_PT",
     "MISSING"),
    ("eval fcn-missing-ckpt", "eval fcn --checkpoint MISSING_PT --data ALIGNED --direction photo2labels", "MISSING_PT"),
    ("eval fcn-missing-data", "eval fcn --checkpoint CG --data MISSING --direction photo2labels", "MISSING"),
    ("eval paired-missing", "eval paired --real MISSING --fake IMAGES", "MISSING"),
    ("seg train-missing", "seg train --data MISSING --out OUT", "MISSING"),
    ("seg eval-missing", "seg eval --segnet MISSING_PT --data ALIGNED", "MISSING_PT"),
    # -- wrong checkpoint kind
    ("translate-gan-ckpt", "translate --checkpoint GAN --input IMG --output OUT",
     "'gan' checkpoint, but a 'cyclegan' checkpoint is needed"),
    ("sample-cyclegan-ckpt", "sample --checkpoint CG --num 1 --output OUT",
     "'cyclegan' checkpoint, but a 'gan' checkpoint is needed"),
    ("eval fcn-gan-ckpt", "eval fcn --checkpoint GAN --data ALIGNED --direction photo2labels",
     "CycleGAN"),
    ("train-resume-other-kind", "train cyclegan --out GAN --resume",
     "'gan' checkpoint, but a 'cyclegan' checkpoint is needed"),
    # -- unwritable output folder
    ("train-unwritable", "train gan --data IMAGES --out UNWRITABLE", "UNWRITABLE"),
    ("translate-unwritable", "translate --checkpoint CG --input IMG --output UNWRITABLE",
     "UNWRITABLE"),
    ("sample-unwritable", "sample --checkpoint GAN --num 1 --output UNWRITABLE", "UNWRITABLE"),
    ("export-unwritable", "export --checkpoint CG --format onnx --output UNWRITABLE/g.onnx",
     "UNWRITABLE"),
    ("eval stats-unwritable", "eval stats --real IMAGES --out UNWRITABLE/s.npz "
     "--weights MISSING_PT", ""),
    ("seg train-unwritable", "seg train --data ALIGNED --out UNWRITABLE --steps 1", ""),
    ("data scenes-unwritable", "data scenes --out UNWRITABLE --n 2 --size 32", "UNWRITABLE"),
    ("demo-unwritable", "demo --out UNWRITABLE --minutes 0.01 --size 32", "UNWRITABLE"),
    # -- devices that do not exist
    ("translate-device-foo", "translate --checkpoint CG --input IMG --output OUT --device foo",
     "unknown device 'foo'"),
    ("translate-device-meta", "translate --checkpoint CG --input IMG --output OUT --device meta",
     "device 'meta' is not supported"),
    ("sample-device-meta", "sample --checkpoint GAN --num 1 --output OUT --device meta",
     "device 'meta' is not supported"),
    ("sample-device-foo", "sample --checkpoint GAN --num 1 --output OUT --device cuda:x",
     "unknown device 'cuda:x'"),
]  # fmt: skip


def _argv(template: str, paths: dict[str, str]) -> list[str]:
    # longest names first (MISSING_PT before MISSING)
    out = []
    for word in template.split():
        for key in sorted(paths, key=len, reverse=True):
            if word == key or word.startswith(key + "/"):
                word = paths[key] + word[len(key) :]
                break
        out.append(word)
    return out


def _command(case_id: str) -> str:
    return case_id.split("-")[0]


@pytest.mark.parametrize(("case", "template", "expect"), CASES, ids=[c[0] for c in CASES])
def test_one_line_error(
    case: str, template: str, expect: str, paths: dict[str, str], capsys, monkeypatch
) -> None:
    command = _command(case)
    if command not in AVAILABLE:
        pytest.skip(f"spap {command} is not available yet")
    monkeypatch.delenv("SPAP_INCEPTION_WEIGHTS", raising=False)
    code = cli_main(_argv(template, paths))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("spap ")]
    assert code != 0, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and ": error: " in lines[0], err[-2000:]
    if expect:
        assert (paths.get(expect, expect)) in lines[0], lines[0]
    assert len(lines[0]) < 600, lines[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
@pytest.mark.parametrize(
    "template",
    ["train gan --data IMAGES --out RO/run", "sample --checkpoint GAN --num 1 --output RO/s",
     "translate --checkpoint CG --input IMG --output RO/t"],
)  # fmt: skip
def test_read_only_folder(template: str, paths: dict[str, str], tmp_path: Path, capsys) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code = cli_main(_argv(template.replace("RO", str(ro)), paths))
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("spap ")]
    assert code != 0 and "Traceback" not in err and len(lines) == 1, err[-2000:]


def test_usage_errors_exit_2_without_traceback(capsys) -> None:
    for argv in (["train"], ["train", "gan", "--stepz", "3", "--out", "x"], ["nosuchcommand"],
                 ["sample", "--num", "x"]):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            cli_main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith("spap"), err


def test_overrides_may_follow_the_options(tmp_path: Path) -> None:
    """`spap train gan --data D --out R key=value`: key=value after options (as documented)."""
    from spap.cli import parse_args

    args = parse_args(build_parser(), ["train", "gan", "a.b=1", "--data", "d", "--out", "r",
                                       "c.d=2", "--steps", "3", "e.f=[1, 2]"])  # fmt: skip
    assert args.overrides == ["a.b=1", "c.d=2", "e.f=[1, 2]"] and args.steps == 3
    with pytest.raises(SystemExit):
        parse_args(build_parser(), ["sample", "--checkpoint", "c", "--num", "1", "--output",
                                    "o", "x=1"])  # fmt: skip


def test_a_real_spap_process(tmp_path: Path) -> None:
    """The installed `spap` command itself (or `python -m spap.cli`)."""
    exe = shutil.which("spap", path=str(Path(sys.executable).parent))
    argv = [exe] if exe else [sys.executable, "-m", "spap.cli"]
    missing = tmp_path / "missing.pt"
    res = subprocess.run(
        [*argv, "sample", "--checkpoint", str(missing), "--num", "1", "--output",
         str(tmp_path / "o")],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr == (f"spap sample: error: no such checkpoint file or run folder: {missing}\n")
    assert not (tmp_path / "o").exists()
