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
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor, nn

from spap.errors import CheckpointError, SpapError
from spap.layers import remove_spectral_norm
from spap.models.cyclegan import build_generator
from spap.systems import get_system, model_config
from spap.systems.cyclegan import inference_generators
from spap.train.checkpoint import atomic_write_bytes, load_checkpoint

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
    atomic_write_bytes(Path(path), lambda fh: fh.write(data))


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
    info: dict[str, Any] = {"crop_size": int(crop) if crop else None}
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
    info.update(crop_size=int(crop) if isinstance(crop, int) else None)
    return LoadedGenerators("cyclegan", cfg, gens, name, info)


def load_generators(
    path: str | os.PathLike, kind: str | None = None, ema: bool = True
) -> LoadedGenerators:
    """The generators of a checkpoint file, a run folder (its latest checkpoint) or a
    ``.safetensors`` export. ``kind`` ("cyclegan" / "gan") refuses other kinds in one line;
    ``ema=False`` takes a GAN checkpoint's raw generator instead of its weight average."""
    if os.fspath(path).endswith(".safetensors") and not Path(path).is_dir():
        loaded = _from_safetensors(path)
    else:
        loaded = _from_checkpoint(path, kind, ema)
    if kind is not None and loaded.kind != kind:
        raise CheckpointError(
            f"{loaded.source} holds a {loaded.kind!r} model, but a {kind!r} model is needed"
        )
    for g in loaded.generators.values():
        g.requires_grad_(False)
    return loaded
