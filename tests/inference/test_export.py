"""``spap export``: ONNX / TorchScript / safetensors parity with the eager generator."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from spap.cli import main as cli
from spap.errors import SpapError
from spap.inference.export import export_generator
from spap.inference.translate import Translator


def _helpers():
    spec = importlib.util.spec_from_file_location(
        "_translate_tests", Path(__file__).with_name("test_translate.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    model = {
        "attention": "spap",
        "g_attention_at": ["trunk_end"],
        "g_attention_options": {"rates": [0, 1, 2]},
    }
    return _helpers().write_checkpoint(
        tmp_path_factory.mktemp("run") / "checkpoints" / "step_0000001.pt", model
    )


def test_onnx_parity_dynamic_shapes(ckpt, tmp_path, capsys) -> None:
    import onnxruntime as ort

    out = tmp_path / "g.onnx"
    assert (
        cli(
            [
                "export",
                "--checkpoint",
                str(ckpt),
                "--format",
                "onnx",
                "--output",
                str(out),
                "--size",
                "16",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "max abs diff vs eager" in printed and "2x3x20x24" in printed
    diff = float(printed.split("vs eager: ")[1].split()[0])
    assert diff <= 1e-4
    # dynamic batch / height / width: run a third shape here
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, 28, 12) * 2 - 1
    y = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        ref = Translator.from_checkpoint(ckpt, device="cpu").generators["AtoB"](x)
    assert (y - ref).abs().max() <= 1e-4
    assert not list(tmp_path.glob("*.data"))  # weights inside the one file


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_parity(ckpt, tmp_path) -> None:
    res = export_generator(ckpt, "torchscript", tmp_path / "g.pt", direction="BtoA", size=16)
    assert res.max_abs_diff <= 1e-4 and res.checked_shapes == [(1, 3, 16, 16), (2, 3, 20, 24)]
    module = torch.jit.load(str(tmp_path / "g.pt"))
    x = torch.rand(1, 3, 12, 32) * 2 - 1
    with torch.no_grad():
        ref = Translator.from_checkpoint(ckpt, device="cpu").generators["BtoA"](x)
        assert (module(x) - ref).abs().max() <= 1e-4


def test_safetensors_round_trip(ckpt, tmp_path) -> None:
    from safetensors import safe_open

    res = export_generator(ckpt, "safetensors", tmp_path / "g.safetensors", size=16)
    assert res.max_abs_diff == 0
    with safe_open(str(tmp_path / "g.safetensors"), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())  # noqa: SIM118
    assert meta["format"] == "spap-generator" and meta["kind"] == "cyclegan"
    assert meta["direction"] == "AtoB" and meta["sha256"].startswith("sha256:")
    # only the model section travels with the weights, not the training config
    assert json.loads(meta["model"])["attention"] == "spap" and "config" not in meta
    assert "attention.block_1.gamma" in keys
    t = Translator.from_checkpoint(tmp_path / "g.safetensors", device="cpu")
    assert list(t.generators) == ["AtoB"]


def test_safetensors_damage_is_detected(ckpt, tmp_path) -> None:
    out = tmp_path / "g.safetensors"
    export_generator(ckpt, "safetensors", out, size=16)
    data = bytearray(out.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor's bytes
    out.write_bytes(bytes(data))
    with pytest.raises(SpapError, match="digest mismatch"):
        Translator.from_checkpoint(out, device="cpu")


def test_spectral_norm_is_baked(tmp_path) -> None:
    """Units with spectral norm: the export holds plain weights and matches the eager
    (parametrized) generator."""
    from spap.layers import LayerFactory, build_attention

    path = _helpers().write_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000001.pt")
    t = Translator.from_checkpoint(path, device="cpu")
    g = t.generators["AtoB"]
    g.attention["block_1"] = build_attention("sagan", 32, LayerFactory(spectral_norm=True))
    with torch.no_grad():
        g.attention["block_1"].gamma.fill_(0.5)
        g.attention["block_1"].o.parametrizations.weight.original.mul_(3)
    res = export_generator(t, "torchscript", tmp_path / "g.pt", size=16)
    assert res.max_abs_diff <= 1e-5
    assert not any(hasattr(m, "parametrizations") for m in g.modules())


def test_export_errors(ckpt, tmp_path, capsys) -> None:
    base = ["export", "--checkpoint", str(ckpt), "--format", "onnx"]
    assert cli([*base, "--output", str(tmp_path / "x.onnx"), "--size", "18"]) == 2
    assert "multiple of 4" in capsys.readouterr().err
    assert cli([*base, "--output", str(tmp_path)]) == 2
    assert "folder" in capsys.readouterr().err
    with pytest.raises(SpapError, match="format"):
        export_generator(ckpt, "tflite", tmp_path / "g.tflite")
