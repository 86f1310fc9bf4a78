"""Running a generator with ONNX Runtime on the CPU instead of PyTorch.

>>> t = Translator.from_checkpoint("runs/facades_spap", runtime="onnxruntime")
>>> s = Sampler.from_checkpoint("runs/celeba_spap", runtime="onnxruntime")

:class:`OnnxGenerator` is a small callable around an ``onnxruntime.InferenceSession``:
:class:`~spap.inference.translate.Translator` and :class:`~spap.inference.sample.Sampler`
call it where they would call the PyTorch module (tensor in, tensor out), so padding,
cropping, batching, decoding and writing stay one code path.

The generator is exported once (spectral norm baked into plain weights; dynamic batch and,
for images, height and width that are multiples of 4) by :func:`write_onnx`, the one ONNX
writer, which ``spap export --format onnx`` uses too, and cached:
``<checkpoint>.onnx-cache/<key>-<name>.onnx`` beside the checkpoint file, export or Hugging
Face folder the weights came from, or, where that folder cannot be written (or the
generator came from no file, or from the Hub), ``$SPAP_CACHE_DIR/onnx`` (default
``~/.cache/spap/onnx``). The key is a digest of the weights, the model section, the
module's class and the torch version, so another checkpoint, or the same one retrained,
never reuses a stale file. A new export, and a
cached file when it is loaded, is checked against the PyTorch module on a small input
(largest difference at most 1e-4) before it is used.

ONNX Runtime is optional (``pip install 'spap[export]'``: onnxruntime, onnx, onnxscript);
where it is missing the generator runs in PyTorch, with one line saying so. Attention maps
are not part of the exported graph: asking for them runs PyTorch for those images.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.export import Dim

from spap.config import to_dict
from spap.errors import SpapError
from spap.files import find_os_error, write_error_reason
from spap.inference.hub import is_pretrained_folder
from spap.layers import remove_spectral_norm

__all__ = [
    "RUNTIMES",
    "OnnxGenerator",
    "cache_dir",
    "choose_runtime",
    "onnx_generator",
    "user_cache_dir",
    "write_onnx",
]

log = logging.getLogger(__name__)

#: The values of ``runtime=`` / ``--runtime``.
RUNTIMES = ("torch", "onnxruntime")
#: Part of every cache key: bump when the exported graph changes.
CACHE_VERSION = 1
CACHE_ENV = "SPAP_CACHE_DIR"
#: Largest |ONNX Runtime - PyTorch| accepted on the check input.
TOLERANCE = 1e-4
#: What torch.onnx's exporter needs besides torch.
_EXPORTER = ("onnx", "onnxscript")


# ----------------------------------------------------------------------------- choosing


def _missing(names: tuple[str, ...]) -> list[str]:
    """Those of ``names`` that cannot be imported."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _running_in_pytorch(missing: list[str]) -> None:
    verb = "is" if len(missing) == 1 else "are"
    log.info(
        "%s %s not installed (pip install 'spap[export]'): running the generator in PyTorch",
        " and ".join(missing),
        verb,
    )


def choose_runtime(runtime: str, device: str | torch.device = "auto") -> str:
    """The runtime to use for ``runtime`` (``"torch"`` or ``"onnxruntime"``) on ``device``:
    ``"onnxruntime"`` falls back to ``"torch"`` with one info line when ONNX Runtime is not
    installed. ONNX Runtime runs on the CPU: asking for it with a CUDA device fails in one
    line."""
    if runtime not in RUNTIMES:
        raise SpapError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "torch":
        return runtime
    if str(device).startswith("cuda"):
        raise SpapError(
            f"the onnxruntime runtime runs on the CPU, not on {device}: use device cpu (or "
            "auto), or runtime torch"
        )
    missing = _missing(("onnxruntime",))
    if missing:
        _running_in_pytorch(missing)
        return "torch"
    return runtime


# ----------------------------------------------------------------------------- the callable


class OnnxGenerator:
    """An exported generator run by ONNX Runtime on the CPU; call it like the module:
    a float tensor in (``(N, C, H, W)`` in [-1, 1], H and W multiples of 4; or latents
    ``(N, z_dim)``), a float32 tensor on the CPU out.

    ``threads``: ONNX Runtime's intra-op threads (default: ``torch.get_num_threads()``,
    the count the ``spap`` command chose). Idle threads sleep instead of spinning when
    ``OMP_WAIT_POLICY`` is ``PASSIVE`` (the ``spap`` command's default), as PyTorch's do."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort  # noqa: PLC0415 - optional dependency (spap[export])

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

    def __repr__(self) -> str:
        return f"OnnxGenerator({str(self.path)!r})"


# ----------------------------------------------------------------------------- cache


def user_cache_dir() -> Path:
    """``$SPAP_CACHE_DIR/onnx``, else ``$XDG_CACHE_HOME/spap/onnx`` (``~/.cache/spap/onnx``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser() / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spap" / "onnx"


def _writable_dir(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError:
        return False
    return True


def _in_hub_cache(folder: Path) -> bool:
    """A snapshot folder of huggingface_hub's cache (``models--user--name/snapshots/REV``),
    which belongs to huggingface_hub: nothing is written beside it."""
    return folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--")


def cache_dir(source: str | os.PathLike | None) -> Path:
    """Where the exports of generators loaded from ``source`` are cached:
    ``<source>.onnx-cache`` beside that file (a checkpoint, an export) or that Hugging Face
    folder when it can be written, else :func:`user_cache_dir` (also for a Hub model, whose
    folder lies in huggingface_hub's cache)."""
    if source:
        src = Path(source)
        if src.is_file() or (is_pretrained_folder(src) and not _in_hub_cache(src.resolve())):
            beside = src.with_name(src.name + ".onnx-cache")
            if _writable_dir(beside):
                return beside
            log.debug("%s is not writable: caching ONNX exports in %s", beside, user_cache_dir())
    folder = user_cache_dir()
    if not _writable_dir(folder):
        raise SpapError(
            f"cannot write the ONNX Runtime cache folder {folder}: set {CACHE_ENV} to a "
            "writable folder, or use runtime torch"
        )
    return folder


def cache_key(module: nn.Module) -> str:
    """A digest of what the exported graph depends on: the weights (names, dtypes, shapes,
    bytes), the model section, the module's class and the torch version."""
    h = hashlib.sha256()
    model = getattr(module, "model_config", None)
    section = json.dumps(to_dict(model), sort_keys=True) if model is not None else ""
    cls = type(module)
    h.update(f"{CACHE_VERSION};{torch.__version__};{cls.__module__}.{cls.__qualname__};".encode())
    h.update(section.encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f";{name};{t.dtype};{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()[:32]


# ----------------------------------------------------------------------------- export


def _example(module: nn.Module) -> Tensor:
    """An input of the generator's kind: latents (1, z_dim), or an image (1, C, 16, 16)."""
    g = torch.Generator().manual_seed(0)
    z_dim = getattr(module, "z_dim", None)
    if isinstance(z_dim, int):
        return torch.randn(1, z_dim, generator=g)
    channels = getattr(module, "input_nc", None)
    if not isinstance(channels, int):
        conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
        channels = conv.in_channels if conv is not None else 3
    return torch.rand(1, channels, 16, 16, generator=g) * 2 - 1


def _checks(example: Tensor) -> list[Tensor]:
    """The check inputs: the example, and another batch size (and image size)."""
    g = torch.Generator().manual_seed(1)
    if example.dim() == 2:
        return [example, torch.randn(3, example.shape[1], generator=g)]
    c = example.shape[1]
    return [example, torch.rand(2, c, 20, 24, generator=g) * 2 - 1]


def _write_onnx(module: nn.Module, example: Tensor, path: Path, opset: int | None, dynamic: bool):
    for name in ("onnxscript", "onnx_ir", "torch.onnx"):  # their INFO lines are noise here
        logging.getLogger(name).setLevel(logging.WARNING)
    shapes = None
    if dynamic:
        dims: dict[int, Any] = {0: Dim("batch", min=1, max=4096)}
        if example.dim() == 4:
            dims.update({2: 4 * Dim("h4", min=2, max=4096), 3: 4 * Dim("w4", min=2, max=4096)})
        shapes = (dims,)
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=shapes,
            dynamo=True,
            external_data=False,
            verbose=False,
            opset_version=opset,
        )


def write_onnx(
    module: nn.Module,
    example: Tensor,
    path: str | os.PathLike,
    *,
    opset: int | None = None,
    allow_fixed: bool = False,
) -> bool:
    """Write ``module`` (a generator in eval mode, spectral norm baked) as one ONNX file:
    input ``input``, output ``output``, a dynamic batch and, for images ``(N, C, H, W)``,
    dynamic height and width that are multiples of 4; the weights inside the file. This is
    the one ONNX writer of spap (``spap export --format onnx`` and the ONNX Runtime cache).

    The file is written atomically (a temporary file beside ``path``, renamed once
    complete): a failed write (a full disk) leaves no file and raises :class:`SpapError`
    ``could not write PATH: REASON``. An exporter that cannot keep the shapes symbolic
    raises its error, or with ``allow_fixed`` writes the file for ``example``'s shape only
    (one warning). ``opset``: the ONNX opset (default: the exporter's). Returns whether
    the shapes are dynamic."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}{path.suffix}.tmp")
    try:
        try:
            _write_onnx(module, example, tmp, opset, dynamic=True)
            dynamic = True
        except Exception as exc:
            if not allow_fixed or find_os_error(exc) is not None:  # a failed write, not a trace
                raise
            log.warning(
                "dynamic-shape ONNX export failed (%s); exporting for %s only",
                (str(exc).strip().splitlines() or [type(exc).__name__])[0],
                tuple(example.shape),
            )
            _write_onnx(module, example, tmp, opset, dynamic=False)
            dynamic = False
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        cause = find_os_error(exc)
        if cause is None or isinstance(exc, KeyboardInterrupt):
            raise
        raise SpapError(f"could not write {path}: {write_error_reason(cause)}") from None
    return dynamic


def _difference(
    engine: Callable[[Tensor], Tensor], module: nn.Module, inputs: list[Tensor]
) -> float:
    diff = 0.0
    with torch.no_grad():
        for x in inputs:
            diff = max(diff, float((engine(x) - module(x).float().cpu()).abs().max()))
    return diff


def onnx_generator(
    module: nn.Module,
    name: str = "G",
    source: str | os.PathLike | None = None,
    threads: int | None = None,
) -> Callable[[Tensor], Tensor]:
    """``module`` (a generator in eval mode) as an :class:`OnnxGenerator`, exported into the
    cache of ``source`` (see :func:`cache_dir`) unless a checked export is already there;
    ``module`` itself (with one info line) where a new export is needed and the exporter's
    packages (onnx, onnxscript) are missing. ``name`` ("AtoB", "BtoA", "G") is part of the
    file name. Raises :class:`SpapError` if the export cannot be made or differs from
    ``module``."""
    module = module.eval()
    baked = copy.deepcopy(module).cpu().eval().requires_grad_(False)
    remove_spectral_norm(baked)  # the module keeps its parametrization; the copy is plain
    folder = cache_dir(source)
    path = folder / f"{cache_key(baked)}-{name}.onnx"
    example = _example(baked)
    if path.is_file():
        try:
            engine = OnnxGenerator(path, threads)
            diff = _difference(engine, baked, [example])
        except Exception as exc:  # a damaged file: export it again
            log.info("the cached ONNX export %s cannot be used (%s): exporting again", path, exc)
        else:
            if diff <= TOLERANCE:
                return engine
            log.info("the cached ONNX export %s differs by %.3g: exporting again", path, diff)
    missing = _missing(_EXPORTER)
    if missing:
        _running_in_pytorch(missing)
        return module
    log.info("exporting the %s generator for ONNX Runtime (once) to %s", name, path)
    try:
        write_onnx(baked, example, path)
        engine = OnnxGenerator(path, threads)
        diff = _difference(engine, baked, _checks(example))
    except SpapError:
        raise
    except Exception as exc:  # the exporter cannot handle this generator
        path.unlink(missing_ok=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SpapError(
            f"cannot export the {name} generator to ONNX ({first}); use runtime torch"
        ) from exc
    if not diff <= TOLERANCE:
        path.unlink(missing_ok=True)
        raise SpapError(
            f"the ONNX export of the {name} generator differs from PyTorch by {diff:.3g} "
            f"(> {TOLERANCE:g}); use runtime torch"
        )
    return engine
