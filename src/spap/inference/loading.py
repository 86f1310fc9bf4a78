"""One loader for every file a generator comes from: checkpoints, run folders, safetensors
exports.

Inference reads only what it needs from a file: the kind, the ``model`` section of the
stored config (read leniently, so that checkpoints of earlier releases keep working:
:func:`spap.systems.model_config`), the generators' weights and, for a CycleGAN, which
stored generator translates which way. Nothing of the training config (``run``, ``train``,
most of ``data``) is parsed.

Safetensors exports (``spap export --format safetensors``) hold one generator and a small
metadata block: ``format: spap-generator``, ``format_version``, ``kind``, ``model`` (the
model section as JSON), ``direction`` (CycleGAN), ``crop_size`` and ``sha256``, a digest of
the tensors checked on load. Files written by 0.1 (``spap-cyclegan-generator`` /
``spap-gan-generator``, the whole config, no digest) are still read.

Hugging Face folders (``save_pretrained``, ``spap export --format huggingface``: see
:mod:`spap.inference.pretrained`) hold ``config.json`` (kind, model section, generators and
their channels) and ``model.safetensors`` (every generator, names prefixed ``AtoB.`` /
``BtoA.`` / ``G.``, with the digest); ``hf://user/name[@revision]`` names such a folder on
the Hugging Face Hub (:func:`spap.inference.hub.snapshot`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor, nn

from spap.config import from_dict
from spap.errors import CheckpointError, SpapError
from spap.files import atomic_write
from spap.inference.hub import (
    HUB_PREFIX,
    PRETRAINED_FORMAT,
    WEIGHTS_NAME,
    is_pretrained_folder,
    read_config,
    snapshot,
)
from spap.layers import remove_spectral_norm
from spap.models.cyclegan import (
    CycleGANModelConfig,
    architecture_mismatches,
    build_generator,
    convert_reference_generator,
    load_problems,
    load_weights,
)
from spap.systems import get_system, model_config
from spap.systems.cyclegan import inference_generators
from spap.train.checkpoint import load_checkpoint
from spap.train.loop import allocation_failure

__all__ = [
    "SAFETENSORS_FORMAT",
    "LoadedGenerators",
    "load_generators",
    "read_safetensors",
    "tensor_digest",
    "write_safetensors",
]

#: ``format`` of a safetensors export written by this release.
SAFETENSORS_FORMAT = "spap-generator"
_SAFETENSORS_VERSION = 2
_OLD_FORMATS = {"spap-cyclegan-generator": "cyclegan", "spap-gan-generator": "gan"}


@dataclass
class LoadedGenerators:
    """Generators read from a file, on the CPU, in eval mode.

    ``generators``: ``{"AtoB": G, "BtoA": G}`` for a CycleGAN (either may be missing in an
    export), ``{"G": G}`` for a GAN. ``info``: what else inference uses (``step``, ``ema``,
    ``crop_size``).
    """

    kind: str
    model_config: Any
    generators: dict[str, nn.Module]
    source: str
    info: dict[str, Any] = field(default_factory=dict)


def tensor_digest(tensors: Mapping[str, Tensor]) -> str:
    """``"sha256:<hex>"`` over names, dtypes, shapes and bytes of ``tensors`` (sorted)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name};{t.dtype};{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return "sha256:" + h.hexdigest()


def write_safetensors(path: Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]):
    """Write ``tensors`` with ``metadata`` and their digest, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {**metadata, "sha256": tensor_digest(tensors)}
    data = save(tensors, metadata=meta)
    atomic_write(Path(path), lambda fh: fh.write(data))


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, Tensor]]:
    """(metadata, tensors) of a safetensors file; one-line errors; the digest is checked
    when the file has one."""
    name = os.fspath(path)
    try:
        with safe_open(name, framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise CheckpointError(f"no such file: {name}") from None
    except Exception as exc:  # noqa: BLE001 - any failure: not a usable file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{name}: not a readable safetensors file ({first[:200]})") from None
    digest = meta.get("sha256")
    if digest is not None and digest != tensor_digest(tensors):
        raise CheckpointError(
            f"{name}: corrupt export (digest mismatch: the file was damaged or modified after "
            "it was written)"
        )
    if digest is None and meta.get("format") == SAFETENSORS_FORMAT:
        raise CheckpointError(f"{name}: corrupt export (its digest is missing)")
    return meta, tensors


def _load_state(
    net: nn.Module, state: Mapping[str, Tensor], what: str, baked: bool = False
) -> None:
    """Load ``state`` into ``net``; ``baked``: an export, whose spectral norm was baked into
    plain weights (so it is removed from ``net`` first)."""
    if baked:
        remove_spectral_norm(net.eval())
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"{what}: weights do not fit the stored model config ({first[:200]})"
        ) from None


def _json(meta: Mapping[str, str], key: str, name: str) -> Any:
    try:
        return json.loads(meta[key])
    except (KeyError, ValueError):
        raise CheckpointError(f"{name}: export metadata has no readable {key!r}") from None


def _from_safetensors(path: str | os.PathLike) -> LoadedGenerators:
    name = os.fspath(path)
    meta, tensors = read_safetensors(path)
    fmt = meta.get("format")
    if meta.get("spap_format") == PRETRAINED_FORMAT and Path(name).name == WEIGHTS_NAME:
        return _from_pretrained(Path(name).parent)  # the weights of a Hugging Face folder
    if fmt == SAFETENSORS_FORMAT:
        kind = meta.get("kind", "")
        model = _json(meta, "model", name)
        crop = meta.get("crop_size")
    elif fmt in _OLD_FORMATS:  # 0.1: the whole config
        kind = _OLD_FORMATS[fmt]
        config = _json(meta, "config", name)
        model = config.get("model", {}) if isinstance(config, dict) else None
        crop = (config.get("data") or {}).get("crop_size") if isinstance(config, dict) else None
    else:
        raise CheckpointError(f"{name}: not a generator exported by spap export")
    try:
        system = get_system(kind)
    except SpapError:
        raise CheckpointError(f"{name}: unknown model kind {kind!r}") from None
    cfg = model_config(kind, {"model": model}, source=name)
    try:
        info: dict[str, Any] = {"crop_size": int(crop) if crop else None}
    except (TypeError, ValueError):
        raise CheckpointError(f"{name}: export metadata has an unreadable crop_size") from None
    if kind == "gan":
        g = system.build_networks(cfg)["G"]
        _load_state(g, tensors, name, baked=True)
        return LoadedGenerators(kind, cfg, {"G": g.eval()}, name, info)

    direction = meta.get("direction", "AtoB")
    if direction not in ("AtoB", "BtoA"):
        raise CheckpointError(f"{name}: export metadata has an unknown direction {direction!r}")
    try:
        in_nc, out_nc = int(meta["input_nc"]), int(meta["output_nc"])
    except (KeyError, ValueError):
        raise CheckpointError(f"{name}: export metadata has no channel counts") from None
    g = build_generator(cfg, in_nc, out_nc)
    _load_state(g, tensors, name, baked=True)
    return LoadedGenerators(kind, cfg, {direction: g.eval()}, name, info)


def _from_pretrained(folder: Path) -> LoadedGenerators:
    """A Hugging Face folder written by :func:`spap.inference.pretrained.save_pretrained`."""
    name = os.fspath(folder)
    config = read_config(folder)
    _, tensors = read_safetensors(folder / WEIGHTS_NAME)
    kind = config.get("kind")
    try:
        system = get_system(str(kind))
    except SpapError:
        raise CheckpointError(f"{name}: unknown model kind {kind!r}") from None
    cfg = model_config(system.kind, config, source=name)
    specs = config.get("generators")
    valid = ("G",) if system.kind == "gan" else ("AtoB", "BtoA")
    if not isinstance(specs, Mapping) or not specs or not set(specs) <= set(valid):
        raise CheckpointError(f"{name}: config.json names no generator ({', '.join(valid)})")
    gens: dict[str, nn.Module] = {}
    for key, spec in specs.items():
        state = {k[len(key) + 1 :]: v for k, v in tensors.items() if k.startswith(key + ".")}
        if system.kind == "gan":
            g = system.build_networks(cfg)["G"]
        else:
            try:
                g = build_generator(cfg, int(spec["input_nc"]), int(spec["output_nc"]))
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(
                    f"{name}: config.json has no channel counts for {key}"
                ) from None
        _load_state(g, state, f"{name} ({key})", baked=True)
        gens[key] = g.eval()
    info = {k: config[k] for k in ("step", "crop_size", "ema", "metrics") if k in config}
    return LoadedGenerators(system.kind, cfg, gens, name, info)


def _from_checkpoint(path: str | os.PathLike, kind: str | None, ema: bool) -> LoadedGenerators:
    state = load_checkpoint(path, kind=kind)
    name = state["path"]
    kind = state.get("kind")
    try:
        system = get_system(str(kind))
    except SpapError:
        raise CheckpointError(f"{name}: unknown checkpoint kind {kind!r}") from None
    config = state.get("config")
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{name}: its stored config is missing")
    cfg = model_config(system.kind, config, source=name)
    task = state.get("task")
    models = task.get("models") if isinstance(task, Mapping) else None
    if not isinstance(models, Mapping):
        raise CheckpointError(f"{name}: holds no network weights")
    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    info: dict[str, Any] = {"step": int(state.get("step", 0) or 0)}
    with contextlib.suppress(AttributeError, KeyError, TypeError, ValueError):
        best = state["monitor"]["best"]  # in-training validation: the best value so far
        value, metric, at = float(best["value"]), str(best["metric"]), int(best["step"])
        if metric and math.isfinite(value):
            info["best"] = {"metric": metric, "value": value, "step": at}
    nets = system.build_networks(cfg)
    if system.kind == "gan":
        stored = "G_ema" if ema else "G"
        if stored not in models:
            raise CheckpointError(f"{name}: holds no {stored} weights")
        _load_state(nets["G"], models[stored], f"{name} ({stored})")
        info.update(ema=ema)
        return LoadedGenerators("gan", cfg, {"G": nets["G"].eval()}, name, info)
    gens: dict[str, nn.Module] = {}
    for direction, stored in inference_generators(str(data.get("direction", "AtoB"))).items():
        if stored not in models:
            raise CheckpointError(f"{name}: holds no {stored} weights")
        _load_state(nets[stored], models[stored], f"{name} ({stored})")
        gens[direction] = nets[stored].eval()
    crop = data.get("crop_size")
    info.update(crop_size=int(crop) if isinstance(crop, int) else None, data_root=data.get("root"))
    return LoadedGenerators("cyclegan", cfg, gens, name, info)


def _reference_state(path: str | os.PathLike) -> dict[str, Tensor] | None:
    """The tensors of a reference CycleGAN weights file (``latest_net_G_A.pth``: a bare
    state dict, keys ``model.<i>.*``, possibly ``module.``-prefixed), or None for anything
    else (a spap checkpoint, a folder, an unreadable or unsafe file: the checkpoint loader
    reports those). Read with ``weights_only=True``, memory-mapped where the file allows."""
    p = Path(path)
    if p.suffix not in (".pth", ".pt") or not p.is_file():
        return None
    try:
        state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - files of old torch versions cannot be mapped
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - not ours to report here
            return None
    if not isinstance(state, Mapping) or not state or "format" in state:
        return None
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        return None
    if not any(k.startswith(("model.", "module.model.")) for k in state):
        return None
    return dict(state)


#: Model-section keys a reference generator file determines (compared with ``model``).
_REFERENCE_ARCH = ("ngf", "n_blocks", "norm", "dropout", "padding_mode")


def _from_reference(
    path: str | os.PathLike, state: Mapping[str, Tensor], model: Mapping[str, Any]
) -> LoadedGenerators:
    """One generator of the reference CycleGAN: the architecture from its tensors, the
    rest of the model section from ``model`` (schema defaults: the reference's). A file of
    G_B (``*G_B.pth``) translates BtoA, any other (``*G_A.pth``, the pretrained models'
    ``latest_net_G.pth``) AtoB."""
    name = os.fspath(path)
    converted, arch = convert_reference_generator(state, source=name)
    direction = "BtoA" if Path(name).stem.endswith("G_B") else "AtoB"
    # the model section's channels are domain A's and B's: a BtoA generator maps B to A
    a_nc, b_nc = (arch["input_nc"], arch["output_nc"])[:: 1 if direction == "AtoB" else -1]
    given = {k: model[k] for k in (*_REFERENCE_ARCH, "input_nc", "output_nc") if k in model}
    found = {**{k: arch[k] for k in _REFERENCE_ARCH}, "input_nc": a_nc, "output_nc": b_nc}
    problems = architecture_mismatches(found, given, expected_in="given")
    if problems:
        raise CheckpointError(f"{name}: {'; '.join(problems)}")
    cfg = from_dict(CycleGANModelConfig, {**dict(model), **found}, prefix="model.")
    g = build_generator(cfg, arch["input_nc"], arch["output_nc"])
    report = load_weights(g, converted, source=name, skip_mismatched=True)
    problems = load_problems(g, report)
    if problems:
        raise CheckpointError(f"{name}: {'; '.join(problems)}")
    info: dict[str, Any] = {"crop_size": None, "reference": True}
    return LoadedGenerators("cyclegan", cfg, {direction: g.eval()}, name, info)


@contextlib.contextmanager
def _allocation_named(path: str | os.PathLike):
    """Networks a file's model section makes too large to allocate: one line naming it."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        why = allocation_failure(exc)
        if why is None:
            raise
        raise CheckpointError(
            f"{os.fspath(path)}: cannot build its networks: {why}; its model section asks "
            "for more memory than this machine has"
        ) from None


def load_generators(
    path: str | os.PathLike,
    kind: str | None = None,
    ema: bool = True,
    model: Mapping[str, Any] | None = None,
) -> LoadedGenerators:
    """The generators of a checkpoint file, a run folder (its latest checkpoint), a
    ``.safetensors`` export, a Hugging Face folder (local, or ``hf://user/name`` on the
    Hub) or a reference CycleGAN generator file (``latest_net_G_A.pth``: one generator,
    its architecture read from the weights). ``kind`` ("cyclegan" / "gan") refuses other
    kinds in one line; ``ema=False`` takes a GAN checkpoint's raw generator instead of its
    weight average. ``model``: model-section keys for a reference file (what the weights
    do not tell, e.g. ``attention``; a key they contradict fails, naming it); the other
    files carry their model section, and ``model`` is refused for them."""
    if os.fspath(path).startswith(HUB_PREFIX):
        path = snapshot(os.fspath(path))
    reference = None
    if not is_pretrained_folder(path) and not os.fspath(path).endswith(".safetensors"):
        reference = _reference_state(path)
    if model and reference is None:
        raise SpapError(
            f"{os.fspath(path)} carries its model config: model settings (--model) apply to "
            "reference CycleGAN generator files (latest_net_G_A.pth) only"
        )
    with _allocation_named(path):
        if reference is not None:
            loaded = _from_reference(path, reference, model or {})
        elif is_pretrained_folder(path):
            loaded = _from_pretrained(Path(path))
        elif os.fspath(path).endswith(".safetensors") and not Path(path).is_dir():
            loaded = _from_safetensors(path)
        else:
            loaded = _from_checkpoint(path, kind, ema)
    if loaded.kind == "gan" and not ema and loaded.info.get("ema") is True:  # a model folder
        raise CheckpointError(
            f"{loaded.source} holds the EMA generator only (a model folder keeps one "
            "generator): the raw generator (--no-ema, ema=False) is in the training checkpoint"
        )
    if kind is not None and loaded.kind != kind:
        raise CheckpointError(
            f"{loaded.source} holds a {loaded.kind!r} model, but a {kind!r} model is needed"
        )
    for g in loaded.generators.values():
        g.requires_grad_(False)
    return loaded
