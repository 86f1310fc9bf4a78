"""Untrusted checkpoints: every load is weights-only (or safetensors); a crafted file whose
pickle would run code is refused by every command and its payload never runs."""

from __future__ import annotations

import ast
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from relutil import save_rgb

from spap.cli import build_parser
from spap.cli import main as cli_main
from spap.errors import CheckpointError
from spap.train.checkpoint import FORMAT, VERSION, load_checkpoint

SRC = Path(__file__).resolve().parents[2] / "src" / "spap"

#: Calls that may only appear where listed (file relative to src/spap: reason).
ALLOWED = {
    ("torch.jit.load", "inference/export.py"): "reloads the TorchScript file it has just "
    "written, to check it against the eager generator (never a user's file)",
    ("torch.serialization.safe_globals", "eval/fidelity.py"): "scoped allowlist of numpy's "
    "array reconstruction (float32/float64 dtypes only) to read torch-fidelity's statistics "
    "cache with weights_only=True, as PyTorch documents",
}
FORBIDDEN = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
    "dill.load", "dill.loads", "joblib.load", "marshal.load", "marshal.loads",
    "yaml.load", "yaml.unsafe_load", "yaml.full_load", "torch.jit.load", "eval", "exec",
    "torch.serialization.add_safe_globals", "torch.serialization.safe_globals",
}  # fmt: skip


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""  # a method of a computed value (`build(...).eval()`): not a module function
    parts.append(node.id)
    return ".".join(reversed(parts))


def _calls() -> list[tuple[str, str, int, ast.Call]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                out.append(
                    (_dotted(node.func), path.relative_to(SRC).as_posix(), node.lineno, node)
                )
    return out


def test_every_torch_load_in_the_package_is_weights_only() -> None:
    loads = [(f, line, c) for name, f, line, c in _calls() if name == "torch.load"]
    assert loads, "no torch.load found: the scan is broken"
    for file, line, call in loads:
        kw = {k.arg: k.value for k in call.keywords}
        value = kw.get("weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, (
            f"src/spap/{file}:{line}: torch.load without weights_only=True"
        )


def test_no_other_unsafe_deserialisation_in_the_package() -> None:
    found = []
    for name, file, line, call in _calls():
        if name in FORBIDDEN and (name, file) not in ALLOWED:
            found.append(f"src/spap/{file}:{line}: {name}")
        if name in ("np.load", "numpy.load"):
            kw = {k.arg: k.value for k in call.keywords}
            allow = kw.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"src/spap/{file}:{line}: np.load(allow_pickle=...)")
    assert not found, found


# ----------------------------------------------------------------------------- crafted files


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _spap_state(kind: str, extra: object) -> dict:
    return {
        "format": FORMAT, "version": VERSION, "kind": kind, "config": {}, "step": 1,
        "epoch": 0, "position": 1, "task": {"models": {}, "extra": extra}, "runner": {},
    }  # fmt: skip


def _craft(path: Path, how: str, marker: Path, kind: str = "cyclegan") -> Path:
    payload = _Payload(marker)
    if how == "nested":  # a normal-looking spap checkpoint with one poisoned value
        torch.save(_spap_state(kind, payload), path)
    elif how == "toplevel":
        torch.save(payload, path)
    elif how == "legacy":  # PyTorch's pre-1.6 (non-zip) format
        torch.save(_spap_state(kind, payload), path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle, as `pickle.dump` writes it
        path.write_bytes(pickle.dumps(_spap_state(kind, payload), protocol=2))
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    m = tmp_path / "PAYLOAD_RAN"
    yield m
    assert not m.exists(), "the pickled payload ran"


def test_the_payload_is_real(tmp_path: Path) -> None:
    """Loading the crafted file the unsafe way does run the payload (so the tests below
    prove something)."""
    m = tmp_path / "ran"
    evil = _craft(tmp_path / "evil.pt", "nested", m)
    torch.load(evil, weights_only=False)
    assert m.exists()


@pytest.mark.parametrize("how", ["nested", "toplevel", "legacy", "bare_pickle"])
def test_crafted_checkpoint_is_refused(tmp_path: Path, marker: Path, how: str) -> None:
    evil = _craft(tmp_path / "evil.pt", how, marker)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(evil)
    msg = str(exc.value)
    assert msg.startswith(f"{evil}: refused to load: it holds pickled Python objects"), msg
    assert "\n" not in msg


def _commands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def _cases(tmp: Path, ckpt: Path) -> dict[str, list[str]]:
    img = save_rgb(tmp / "in.png", 16)
    return {
        "sample": ["sample", "--checkpoint", str(ckpt), "--num", "1", "--output", str(tmp / "o")],
        "translate": ["translate", "--checkpoint", str(ckpt), "--input", str(img),
                      "--output", str(tmp / "o")],
        "export-onnx": ["export", "--checkpoint", str(ckpt), "--format", "onnx",
                        "--output", str(tmp / "g.onnx")],
        "export-torchscript": ["export", "--checkpoint", str(ckpt), "--format", "torchscript",
                               "--output", str(tmp / "g.pt")],
        "export-safetensors": ["export", "--checkpoint", str(ckpt), "--format", "safetensors",
                               "--output", str(tmp / "g.safetensors")],
    }  # fmt: skip


@pytest.mark.parametrize("case", list(_cases(Path("/x"), Path("/x")).keys()))
@pytest.mark.parametrize("as_run_folder", [False, True], ids=["file", "run_folder"])
def test_commands_refuse_a_crafted_checkpoint(
    tmp_path: Path, marker: Path, case: str, as_run_folder: bool, capsys
) -> None:
    command = case.split("-")[0]
    if command not in _commands():
        pytest.skip(f"spap {command} is not available yet")
    kind = "gan" if command == "sample" else "cyclegan"
    evil = _craft(tmp_path / "evil.pt", "nested", marker, kind)
    if as_run_folder:
        folder = tmp_path / "run" / "checkpoints"
        folder.mkdir(parents=True)
        shutil.move(evil, folder / "step_0000001.pt")
        (folder / "latest").write_text("step_0000001.pt")
        evil = tmp_path / "run"
    code = cli_main(_cases(tmp_path, evil)[case])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and "refused to load: it holds pickled Python objects" in err[0], err


def test_train_resume_refuses_a_crafted_checkpoint(tmp_path: Path, marker: Path, capsys) -> None:
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    _craft(folder / "step_0000005.pt", "nested", marker, kind="gan")
    code = cli_main(["train", "gan", "--out", str(tmp_path / "run"), "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "no readable checkpoint" in err[0] and "refused to load" in err[0]


@pytest.mark.parametrize("key", ["train.init_from", "train.init_networks"])
def test_cyclegan_initial_weights_refuse_a_crafted_file(
    tmp_path: Path, marker: Path, key: str, capsys
) -> None:
    from relutil import CYCLEGAN_TINY, image_folder

    data = tmp_path / "data"
    image_folder(data / "trainA", n=2, size=16)
    image_folder(data / "trainB", n=2, size=16)
    evil = _craft(tmp_path / "evil.pth", "nested", marker)
    value = str(evil) if key == "train.init_from" else f"{{G_A: {evil}}}"
    code = cli_main(["train", "cyclegan", "--data", str(data), "--out", str(tmp_path / "run"),
                     "--steps", "1", *CYCLEGAN_TINY, f"{key}={value}"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert str(evil) in err[0]
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- safetensors


def test_generator_weights_exported_as_safetensors(
    cyclegan_run: Path, tmp_path: Path, capsys
) -> None:
    """`spap export --format safetensors` writes plain tensors (a JSON header + raw bytes, no
    pickle) that `spap translate` uses like the checkpoint itself."""
    if "export" not in _commands():
        pytest.skip("spap export is not available yet")
    from safetensors import safe_open

    out = tmp_path / "G.safetensors"
    assert cli_main(["export", "--checkpoint", str(cyclegan_run), "--format", "safetensors",
                     "--output", str(out)]) == 0  # fmt: skip
    assert out.read_bytes()[8:9] == b"{"  # u64 header length, then the JSON header
    with safe_open(str(out), framework="pt") as f:
        assert all(isinstance(f.get_tensor(k), torch.Tensor) for k in f.keys())  # noqa: SIM118
    img = save_rgb(tmp_path / "in.png", 16, seed=3)
    for src, name in ((cyclegan_run, "ckpt"), (out, "st")):
        assert cli_main(["translate", "--checkpoint", str(src), "--input", str(img),
                         "--output", str(tmp_path / name)]) == 0  # fmt: skip
    a = sorted((tmp_path / "ckpt").rglob("*.png"))
    b = sorted((tmp_path / "st").rglob("*.png"))
    assert a and [p.name for p in a] == [p.name for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))


@pytest.mark.parametrize(
    "content", [b"", b"\xff" * 64, b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json"]
)
def test_damaged_safetensors_is_one_line(tmp_path: Path, content: bytes, capsys) -> None:
    if "translate" not in _commands():
        pytest.skip("spap translate is not available yet")
    bad = tmp_path / "G.safetensors"
    bad.write_bytes(content)
    img = save_rgb(tmp_path / "in.png", 16)
    code = cli_main(["translate", "--checkpoint", str(bad), "--input", str(img),
                     "--output", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(bad) in err[0], err
