"""TorchScript, trace and ONNX parity of the attention units."""

from __future__ import annotations

import warnings

import pytest
import torch

from spap import SPAP, SelfAttention
from spap.layers import record_attention, remove_spectral_norm


def _unit(kind: str) -> torch.nn.Module:
    if kind == "sagan":
        unit = SelfAttention(16, spectral_norm=True)
    else:
        unit = SPAP(8, rates=(0, 1, 2), attention=kind, norm_layer=torch.nn.BatchNorm2d)
    with torch.no_grad():
        unit.gamma.fill_(0.6)
    return unit.eval()


@pytest.mark.parametrize("kind", ["spatial", "channel", "both", "sagan"])
def test_script_parity(kind: str) -> None:
    unit = remove_spectral_norm(_unit(kind))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.x
        scripted = torch.jit.script(unit)
    for shape in [(1, unit.channels, 7, 5), (2, unit.channels, 12, 12)]:
        x = torch.randn(shape)
        torch.testing.assert_close(scripted(x), unit(x), rtol=0, atol=1e-6)
    # Recording is eager-only and does not break a scripted model.
    with record_attention(unit) as maps:
        unit(x)
    assert maps


def test_trace_parity() -> None:
    unit = _unit("both")
    x = torch.randn(1, 8, 9, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(unit, x)
    torch.testing.assert_close(traced(x), unit(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("kind", "dynamo"), [("both", False), ("sagan", False), ("spatial", True)])
def test_onnx_parity(kind: str, dynamo: bool, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    unit = _unit(kind)
    if not dynamo:
        remove_spectral_norm(unit)  # the legacy exporter cannot export the SN power step
    x = torch.randn(1, unit.channels, 9, 11)
    path = tmp_path / "unit.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript")
            dim = torch.export.Dim
            torch.onnx.export(
                unit,
                (x,),
                str(path),
                dynamo=True,
                input_names=["x"],
                dynamic_shapes=({0: dim("n"), 2: dim("h"), 3: dim("w")},),
                verbose=False,
            )
        else:
            torch.onnx.export(
                unit,
                (x,),
                str(path),
                dynamo=False,
                input_names=["x"],
                dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}},
            )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, unit.channels, 9, 11), (2, unit.channels, 16, 8)]:
        xx = torch.randn(shape)
        (out,) = sess.run(None, {"x": xx.numpy()})
        with torch.no_grad():
            ref = unit(xx)
        torch.testing.assert_close(torch.from_numpy(out), ref, rtol=0, atol=1e-5)
