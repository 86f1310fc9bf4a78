"""Exporting a trained generator (CycleGAN or GAN): ONNX, TorchScript or safetensors.

>>> result = export_generator("runs/facades_spap", "onnx", "facades_AtoB.onnx")
>>> result.max_abs_diff          # largest |exported - eager| over the check inputs

Every export is checked numerically against the eager generator (ONNX through
onnxruntime, TorchScript by reloading the file, safetensors by rebuilding the generator from
the file alone); a difference above ``tolerance`` (1e-4) fails the export. Spectral-norm
parametrizations, if any, are baked into plain weights first. Files are written atomically
(complete or not at all): a failed write (a full disk) is one line naming the file and why.

The exported graph is the bare generator: input (N, C, H, W) in [-1, 1] with H and W
multiples of 4, output (N, C', H, W) in [-1, 1]. ONNX files have dynamic batch, height and
width (the check runs a second, different shape); they are written by
:func:`spap.inference.runtime.write_onnx`, the one ONNX writer, which also fills the cache of
``runtime="onnxruntime"``. TorchScript is traced and is checked at
a second shape too. Padding other sizes to a multiple of 4 (as :class:`Translator` does)
is left to the caller.

For a GAN checkpoint the exported graph is the (EMA) generator: input latents (N, z_dim)
drawn from N(0, 1), output (N, 3, R, R) in [-1, 1]; ONNX has a dynamic batch.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from spap.config import to_dict
from spap.errors import SpapError
from spap.files import atomic_write
from spap.inference import load
from spap.inference.loading import SAFETENSORS_FORMAT, load_generators, write_safetensors
from spap.inference.pretrained import save_pretrained
from spap.inference.runtime import OnnxGenerator, write_onnx
from spap.inference.sample import Sampler
from spap.inference.translate import Translator
from spap.layers import remove_spectral_norm

__all__ = ["FORMATS", "ExportResult", "export_generator"]

log = logging.getLogger(__name__)

#: Formats :func:`export_generator` writes.
FORMATS = ("onnx", "torchscript", "safetensors", "huggingface")


@dataclass
class ExportResult:
    """What was written and how close it is to the eager generator."""

    path: Path
    format: str
    direction: str
    max_abs_diff: float
    checked_shapes: list[tuple[int, ...]] = field(default_factory=list)
    dynamic: bool = True


def _inputs(channels: int, size: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(0)
    first = torch.rand(1, channels, size, size, generator=g) * 2 - 1
    second = torch.rand(2, channels, size + 4, size + 8, generator=g) * 2 - 1
    return [first, second]


def _prepare_output(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpapError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
    if path.is_dir():
        raise SpapError(f"--output {path} is a folder; give a file name")
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise SpapError(f"cannot write {path}: {exc.strerror or exc}") from None
    if not existed:
        path.unlink()


def _run_onnx(path: Path, x: Tensor) -> Tensor:
    try:
        engine = OnnxGenerator(path)
    except ImportError:
        raise SpapError(
            "checking an ONNX export needs onnxruntime: pip install onnxruntime"
        ) from None
    return engine(x)


def _export_torchscript(g: nn.Module, x: Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices and tracer warnings (checked below)
        traced = torch.jit.trace(g, (x,), check_trace=False)
        atomic_write(path, lambda fh: torch.jit.save(traced, fh))


def _run_torchscript(path: Path, x: Tensor) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(x)


def _check(
    path: Path,
    format: str,
    direction: str,
    checks: list[Tensor],
    expected: list[Tensor],
    run: Callable[[Path, Tensor], Tensor],
    tolerance: float,
    dynamic: bool,
) -> ExportResult:
    """Run the exported file on ``checks`` and compare with the eager ``expected``."""
    diff = 0.0
    with torch.no_grad():
        for x, want in zip(checks, expected):
            diff = max(diff, float((run(path, x).float() - want).abs().max()))
    result = ExportResult(path, format, direction, diff, [tuple(x.shape) for x in checks], dynamic)
    if not diff <= tolerance:
        raise SpapError(
            f"{format} export of {path} differs from the eager generator by {diff:.3g} "
            f"(> {tolerance:g}); the file is kept for inspection"
        )
    return result


def _write(
    g: nn.Module,
    format: str,
    path: Path,
    inputs: list[Tensor],
    metadata: dict[str, str],
    opset: int | None,
) -> tuple[Callable[[Path, Tensor], Tensor], bool]:
    """Write ``g`` (spectral norm baked) in ``format``; return how to run the file and
    whether its shapes are dynamic."""
    if format == "onnx":
        return _run_onnx, write_onnx(g, inputs[0], path, opset=opset, allow_fixed=True)
    if format == "torchscript":
        _export_torchscript(g, inputs[0], path)
        return _run_torchscript, True
    write_safetensors(path, g.state_dict(), metadata)
    key = metadata.get("direction", "G")

    def run(p: Path, x: Tensor) -> Tensor:
        return load_generators(p).generators[key](x)

    return run, True


def export_generator(
    checkpoint: str | os.PathLike | Translator | Sampler,
    format: str,
    output: str | os.PathLike,
    direction: str = "AtoB",
    size: int | None = None,
    tolerance: float = 1e-4,
    opset: int | None = None,
) -> ExportResult:
    """Export the ``direction`` generator of a CycleGAN (a checkpoint file, a run folder, an
    export, or an already loaded :class:`~spap.inference.translate.Translator`, whose
    generator is then baked in place), or the (EMA) generator of a GAN (``direction`` and
    ``size`` do not apply).

    ``size`` is the square check/tracing input size (default: the training crop size;
    a multiple of 4). Raises :class:`SpapError` if the exported model differs from the
    eager one by more than ``tolerance``.
    """
    if format not in FORMATS:
        raise SpapError(f"unknown export format {format!r}; one of {', '.join(FORMATS)}")
    if format == "huggingface":  # a folder of every generator: spap.inference.pretrained
        saved = save_pretrained(checkpoint, output)
        return ExportResult(saved.path, format, ", ".join(saved.generators), saved.max_abs_diff)
    if isinstance(checkpoint, (Translator, Sampler)):
        loaded = checkpoint
    else:
        loaded = load(checkpoint, device="cpu")
    path = Path(output)
    if isinstance(loaded, Sampler):
        g = loaded.generator.cpu().eval()
        gen = torch.Generator().manual_seed(0)
        inputs = [torch.randn(1, g.z_dim, generator=gen), torch.randn(3, g.z_dim, generator=gen)]
        meta = {"kind": "gan"}
        label = "z"
    else:
        g = loaded.generator(direction).cpu().eval()
        if size is None:
            size = int(loaded.info.get("crop_size") or 256)
        if size < 8 or size % 4:
            raise SpapError(f"--size must be a multiple of 4 and at least 8, got {size}")
        inputs = _inputs(g.input_nc, size)
        meta = {
            "kind": "cyclegan",
            "direction": direction,
            "input_nc": str(g.input_nc),
            "output_nc": str(g.output_nc),
            "crop_size": str(size),
        }
        label = direction
    g.requires_grad_(False)
    _prepare_output(path)
    with torch.no_grad():  # eager outputs, before spectral norm is baked
        expected = [g(x) for x in inputs]
    model_section = getattr(g, "model_config", None)
    if model_section is None:
        raise SpapError("this generator does not carry its model config; cannot export it")
    remove_spectral_norm(g)
    metadata = {
        "format": SAFETENSORS_FORMAT,
        "format_version": "2",
        "model": json.dumps(to_dict(model_section)),
        **meta,
    }
    run, dynamic = _write(g, format, path, inputs, metadata, opset)
    checks = inputs if dynamic else inputs[:1]
    return _check(path, format, label, checks, expected, run, tolerance, dynamic)
