"""Authentic but malformed files: a checkpoint whose checksum is valid (written by a faulty
writer, or by hand) but whose sections are missing or of the wrong type, or whose model
section asks for networks that cannot be allocated; spap-tagged safetensors exports whose
tensors or metadata do not fit. Every command that reads them (translate, export, sample,
train --resume) either works (it does not need the broken part) or exits 2 with one line
naming the file; never a traceback.

Before these checks, such files gave ``KeyError``, ``TypeError``, ``ValueError``,
``AttributeError`` or ``RuntimeError: ... can't allocate memory`` tracebacks."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from relutil import image_folder

from spap.cli import main as cli_main
from spap.inference.loading import read_safetensors, write_safetensors
from spap.train.checkpoint import load_checkpoint, save_checkpoint


def _set(*keys: str, value: Any = None, delete: bool = False):
    def change(state: dict) -> None:
        node = state
        for k in keys[:-1]:
            node = node[k]
        if delete:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value

    return change


#: name -> (kinds it applies to, change); the generator key is filled in per kind
VARIANTS = {
    "no_config": (("cyclegan", "gan"), _set("config", delete=True)),
    "config_is_a_list": (("cyclegan", "gan"), _set("config", value=[1, 2])),
    "model_is_a_list": (("cyclegan", "gan"), _set("config", "model", value=[1])),
    "no_task": (("cyclegan", "gan"), _set("task", delete=True)),
    "task_is_a_list": (("cyclegan", "gan"), _set("task", value=[])),
    "no_models": (("cyclegan", "gan"), _set("task", "models", delete=True)),
    "models_is_a_string": (("cyclegan", "gan"), _set("task", "models", value="x")),
    "no_runner": (("cyclegan", "gan"), _set("runner", delete=True)),
    "rng_is_a_string": (("cyclegan", "gan"), _set("runner", "rng", value="x")),
    "step_is_a_string": (("cyclegan", "gan"), _set("step", value="x")),
    "epoch_is_none": (("cyclegan", "gan"), _set("epoch", value=None)),
    "negative_position": (("cyclegan", "gan"), _set("position", value=-5)),
    "kind_is_a_number": (("cyclegan", "gan"), _set("kind", value=3)),
    "optimizers_is_a_string": (("cyclegan", "gan"), _set("task", "optimizers", value="x")),
    "stored_device_foo": (("cyclegan", "gan"), _set("config", "run", "device", value="foo")),
    "stored_lr_nan": (("cyclegan",), _set("config", "train", "lr", value=float("nan"))),
    "stored_ema_decay_nan": (("gan",), _set("config", "train", "ema_decay", value=float("nan"))),
    "stored_crop_is_text": (("cyclegan",), _set("config", "data", "crop_size", value="abc")),
    "huge_width": (("cyclegan",), _set("config", "model", "ngf", value=10**8)),
    "huge_z_dim": (("gan",), _set("config", "model", "z_dim", value=10**9)),
    "net_is_a_string": (("cyclegan",), _set("task", "models", "G_A", value="x")),
    "G_ema_is_a_list": (("gan",), _set("task", "models", "G_ema", value=[1])),
    "fixed_z_is_a_string": (("gan",), _set("task", "fixed_z", value="x")),
    "pools_is_a_string": (("cyclegan",), _set("task", "pools", value="x")),
}
CASES = [(name, kind) for name, (kinds, _) in VARIANTS.items() for kind in kinds]


def _write_variant(source: Path, name: str, out: Path) -> Path:
    state = load_checkpoint(source)
    state.pop("path")
    state = copy.deepcopy(state)
    VARIANTS[name][1](state)
    run = out / "run" / "checkpoints"
    run.mkdir(parents=True)
    return save_checkpoint(state, run / "step_0000001.pt")  # a valid checksum


def _check(args: list, file: Path, capsys) -> str:
    code = cli_main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("spap ")]
    assert "Traceback" not in err, err[-3000:]
    if code == 0:
        return "ok"
    assert code == 2 and len(lines) == 1, (args, err[-2000:])
    assert str(file) in lines[0] or str(file.parent.parent) in lines[0], lines[0]
    assert len(lines[0]) < 600, lines[0]
    return lines[0]


@pytest.mark.parametrize(("name", "kind"), CASES, ids=[f"{k}-{n}" for n, k in CASES])
def test_malformed_checkpoint_is_one_line_everywhere(
    tmp_path: Path, name: str, kind: str, gan_run: Path, cyclegan_run: Path, capsys
) -> None:
    source = cyclegan_run if kind == "cyclegan" else gan_run
    file = _write_variant(source, name, tmp_path)
    out = tmp_path / "out"
    if kind == "cyclegan":
        images = image_folder(tmp_path / "images", n=1, size=16)
        use = ["translate", "--checkpoint", file, "--input", images, "--output", out / "t",
               "--device", "cpu"]  # fmt: skip
    else:
        use = ["sample", "--checkpoint", file, "--num", 1, "--output", out / "s",
               "--device", "cpu"]  # fmt: skip
    results = {
        "use": _check(use, file, capsys),
        "export": _check(
            [
                "export",
                "--checkpoint",
                file,
                "--format",
                "safetensors",
                "--output",
                out / "g.safetensors",
            ],
            file,
            capsys,
        ),  # fmt: skip
        "resume": _check(
            [
                "train",
                kind,
                "--resume",
                "--out",
                file.parent.parent,
                "--data",
                source.parent / "data",
                "--steps",
                2,
                "run.num_workers=0",
            ],
            file,
            capsys,
        ),  # fmt: skip
    }
    print(name, kind, json.dumps(results, indent=1))
    # what every command needs is broken in these: none of them may succeed
    if name in ("no_task", "task_is_a_list", "no_models", "models_is_a_string",
                "kind_is_a_number", "step_is_a_string", "negative_position", "epoch_is_none",
                "huge_width", "huge_z_dim", "config_is_a_list", "no_config"):  # fmt: skip
        assert "ok" not in results.values(), results
    if name.startswith("huge_"):
        assert all("cannot build" in r and "out of memory" in r for r in results.values())
    if name == "stored_lr_nan":
        assert "its stored config is not usable: train.lr: expected a finite" in results["resume"]
    if name == "no_config":
        assert "holds no stored config" in results["resume"]


# ----------------------------------------------------------------------------- exports


def _export(cyclegan_run: Path, path: Path, capsys) -> Path:
    assert cli_main(["export", "--checkpoint", str(cyclegan_run), "--format", "safetensors",
                     "--output", str(path)]) == 0  # fmt: skip
    capsys.readouterr()
    return path


def _drop_one(meta: dict, tensors: dict) -> None:
    tensors.pop(sorted(tensors)[0])


def _reshape_one(meta: dict, tensors: dict) -> None:
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].reshape(-1)[:-1].clone()


SAFETENSORS = {
    "missing_tensor": _drop_one,
    "mismatched_tensor": _reshape_one,
    "model_is_a_list": lambda m, t: m.update(model="[1, 2]"),
    "model_is_not_json": lambda m, t: m.update(model="{ngf: 3"),
    "no_model": lambda m, t: m.pop("model"),
    "huge_width": lambda m, t: m.update(model=json.dumps({**json.loads(m["model"]), "ngf": 10**8})),
    "crop_is_text": lambda m, t: m.update(crop_size="abc"),
    "channels_are_text": lambda m, t: m.update(input_nc="x"),
    "huge_channels": lambda m, t: m.update(input_nc=str(10**12)),
    "unknown_direction": lambda m, t: m.update(direction="sideways"),
    "unknown_kind": lambda m, t: m.update(kind="dcgan"),
}


@pytest.mark.parametrize("name", list(SAFETENSORS))
def test_malformed_export_is_one_line(
    tmp_path: Path, name: str, cyclegan_run: Path, capsys
) -> None:
    good = _export(cyclegan_run, tmp_path / "good.safetensors", capsys)
    meta, tensors = read_safetensors(good)
    meta.pop("sha256")
    SAFETENSORS[name](meta, tensors)
    bad = tmp_path / f"{name}.safetensors"
    write_safetensors(bad, tensors, meta)  # a valid digest over the changed content
    images = image_folder(tmp_path / "images", n=1, size=16)
    for args in (
        ["translate", "--checkpoint", bad, "--input", images, "--output", tmp_path / "t",
         "--device", "cpu"],
        ["export", "--checkpoint", bad, "--format", "torchscript", "--output", tmp_path / "g.pt"],
    ):  # fmt: skip
        result = _check(args, bad, capsys)
        if name != "crop_is_text" or args[0] == "translate":
            assert result != "ok", (name, args[0])
