"""Sharing a trained generator in the Hugging Face layout, and uploading it to the Hub.

>>> from spap.inference.pretrained import save_pretrained, push_to_hub
>>> save_pretrained("runs/facades_spap", "facades-spap")    # a folder, see below
>>> t = Translator.from_pretrained("facades-spap")           # or "user/facades-spap" on the Hub
>>> push_to_hub("facades-spap", "user/facades-spap")         # needs huggingface_hub + a token

This module is the one implementation: ``Translator`` and ``Sampler`` have thin
``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` methods (the names of
``huggingface_hub.PyTorchModelHubMixin``) that call :func:`save_pretrained`,
:func:`load_pretrained` and :func:`push_to_hub`.

The folder follows the conventions of ``huggingface_hub.PyTorchModelHubMixin``:

- ``config.json``: ``format: spap-pretrained``, ``spap_version``, ``kind``, the ``model``
  section (the architecture, exactly as a checkpoint stores it), ``generators`` (``AtoB`` /
  ``BtoA`` with their channel counts for a CycleGAN, ``G`` for a GAN), ``crop_size``,
  ``step``, ``ema`` (GAN), ``metrics`` (the run's, if any) and ``units`` (each attention
  unit's ``gamma``);
- ``model.safetensors``: every generator's weights (spectral norm baked), names prefixed
  ``AtoB.`` / ``BtoA.`` / ``G.`` (as ``nn.ModuleDict(generators).state_dict()`` names them),
  metadata ``format: pt``, ``spap_format``, ``kind`` and a ``sha256`` digest checked on load;
- ``README.md``: the model card: YAML metadata (``library_name: spap``, ``license``,
  ``pipeline_tag``, ``tags``), the architecture, the metrics, the sample and attention grids
  and how to use the model;
- ``samples.png`` and ``attention.png``: the grids the card shows (:mod:`spap.viz.grid`,
  :mod:`spap.viz.attention`).

Every ``--checkpoint`` and :func:`spap.inference.load` accept the folder (and
``hf://user/name`` for a Hub copy). :func:`save_pretrained` reloads what it wrote and checks
that the reloaded generators give the same outputs (max abs difference <= 1e-4) before
returning.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image, ImageOps
from torch import Tensor, nn

from spap import __version__
from spap.config import to_dict
from spap.data.io import UnreadableImage, list_images, read_image
from spap.data.scenes import render_scene
from spap.data.transforms import to_tensor_image
from spap.errors import SpapError
from spap.files import atomic_write
from spap.inference.hub import (
    CARD_NAME,
    CONFIG_NAME,
    HUB_PREFIX,
    PRETRAINED_FORMAT,
    WEIGHTS_NAME,
    is_pretrained_folder,
    read_config,
    resolve,
)
from spap.inference.loading import LoadedGenerators, load_generators, write_safetensors
from spap.layers import attention_units, record_attention, remove_spectral_norm
from spap.models.sngan import latents
from spap.viz.attention import attention_overlays
from spap.viz.grid import rows_grid, save_grid

__all__ = ["PretrainedResult", "load_pretrained", "push_to_hub", "render_card", "save_pretrained"]

log = logging.getLogger(__name__)

SAMPLES_NAME = "samples.png"
ATTENTION_NAME = "attention.png"
#: Largest difference allowed between the saved and the reloaded generators' outputs.
TOLERANCE = 1e-4


@dataclass
class PretrainedResult:
    """What :func:`save_pretrained` wrote."""

    path: Path
    kind: str
    generators: list[str]
    files: list[str]
    max_abs_diff: float
    examples: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- sources


def _collect(model: Any) -> LoadedGenerators:
    """Generators (copies: the caller's modules are never changed) and what is known of them."""
    if isinstance(model, (str, os.PathLike)):
        return load_generators(model)
    if isinstance(model, LoadedGenerators):
        gens, kind, cfg = model.generators, model.kind, model.model_config
        info, source = model.info, model.source
    elif isinstance(getattr(model, "generators", None), Mapping):  # a Translator
        gens, kind, info = model.generators, "cyclegan", dict(getattr(model, "info", {}))
        cfg, source = None, getattr(model, "source", "")
    elif isinstance(getattr(model, "generator", None), nn.Module):  # a Sampler
        gens, kind, source = {"G": model.generator}, "gan", getattr(model, "source", "")
        info = {
            **dict(getattr(model, "info", {})),
            "step": getattr(model, "step", 0),
            "ema": getattr(model, "ema", True),
        }
        cfg = None
    else:
        raise SpapError(
            "save_pretrained takes a checkpoint, run folder, export or model folder, a "
            f"Translator or a Sampler; got {type(model).__name__}"
        )
    copies = {k: copy.deepcopy(g).cpu().eval() for k, g in gens.items()}
    if cfg is None:
        cfg = getattr(next(iter(copies.values())), "model_config", None)
    if cfg is None:
        raise SpapError("this generator does not carry its model config; cannot save it")
    return LoadedGenerators(kind, cfg, copies, source, dict(info))


def _run_folder(source: str) -> Path | None:
    """The run folder of a checkpoint file (``RUN/checkpoints/step_*.pt``) or run folder."""
    if not source:
        return None
    p = Path(source)
    if p.is_file() and p.parent.name == "checkpoints":
        return p.parent.parent
    return p if (p / "checkpoints").is_dir() else None


def _json_safe(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (np.generic, Tensor)) and getattr(v, "ndim", 1) == 0:
        return v.item()
    return str(v)


def _read_metrics(metrics: Mapping[str, Any] | str | os.PathLike | None, source: str) -> dict:
    """``metrics`` (a dict or a JSON file, e.g. ``spap eval --json``), else the run folder's
    ``metrics.json`` if there is one, else nothing."""
    if isinstance(metrics, Mapping):
        return dict(_json_safe(metrics))
    path = Path(metrics) if metrics is not None else None
    if path is None:
        run = _run_folder(source)
        if run is None:
            return {}
        # the run's own file, else the report of `spap demo` (OUT/run beside OUT/report)
        path = run / "metrics.json"
        if not path.is_file():
            path = run.parent / "report" / "metrics.json"
            if not (path.is_file() and (run.parent / "spap-demo.json").is_file()):
                return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpapError(f"no such metrics file: {path}") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise SpapError(f"{path}: not a readable JSON metrics file ({exc})") from None
    if not isinstance(data, Mapping):
        raise SpapError(f"{path}: a metrics file holds a JSON object, got {type(data).__name__}")
    return dict(_json_safe(data))


def _flat_numbers(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``[("fid", 31.2), ("per_class.road", 0.8), ...]``: the scalar entries of a metrics dict
    (lists such as per-image values are left out of the card)."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out += _flat_numbers(v, key + ".")
        elif isinstance(v, (int, float, str)) and not isinstance(v, bool):
            out.append((key, v))
    return out


# ----------------------------------------------------------------------------- examples


def _fit(img: Image.Image, size: int) -> Tensor:
    return to_tensor_image(ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC))


def _dataset_files(root: str | None, direction: str) -> tuple[list[Path], str | None]:
    """Test (else train) images of the run's dataset for ``direction``; aligned datasets give
    the half to take."""
    if not root or not Path(root).is_dir():
        return [], None
    side = direction[0]  # "A" for AtoB
    for phase in ("test", "val", "train"):
        folder = Path(root) / f"{phase}{side}"
        if folder.is_dir():
            with contextlib.suppress(SpapError):
                return list_images(folder), None
        folder = Path(root) / phase
        if folder.is_dir():
            with contextlib.suppress(SpapError):
                return list_images(folder), side
    return [], None


def _read_examples(files: Sequence[Path], half: str | None, size: int, channels: int, n: int):
    out = []
    for f in files:
        try:
            img = read_image(f, mode="L" if channels == 1 else "RGB")
        except UnreadableImage:
            continue
        if half is not None:
            w2 = img.width // 2
            img = img.crop((0, 0, w2, img.height) if half == "A" else (w2, 0, 2 * w2, img.height))
        out.append(_fit(img, size))
        if len(out) == n:
            break
    return torch.stack(out) if out else None


def _scene_examples(direction: str, size: int, channels: int, n: int) -> Tensor:
    side = min(256, max(32, size))
    rows = []
    for seed in range(n):
        labels, _, photo = render_scene(seed, side)
        img = Image.fromarray(labels if direction == "AtoB" else photo)
        rows.append(_fit(img.convert("L" if channels == 1 else "RGB"), size))
    return torch.stack(rows)


def _examples(
    loaded: LoadedGenerators,
    examples: str | os.PathLike | Mapping[str, str | os.PathLike] | None,
    n: int,
) -> tuple[dict[str, Tensor], str]:
    """Input images per direction, at the training crop size, and where they come from."""
    size = int(loaded.info.get("crop_size") or 256)
    size = max(8, size - size % 4)
    out: dict[str, Tensor] = {}
    where = set()
    for direction, g in loaded.generators.items():
        channels = int(g.input_nc)
        given = examples.get(direction) if isinstance(examples, Mapping) else examples
        x = None
        if given is not None:
            p = Path(given)
            files = [p] if p.is_file() else list_images(p)
            x = _read_examples(files, None, size, channels, n)
            if x is None:
                raise SpapError(f"no readable example images in {p}")
            where.add(f"images from {p}")
        if x is None:
            files, half = _dataset_files(loaded.info.get("data_root"), direction)
            x = _read_examples(files, half, size, channels, n) if files else None
            if x is not None:
                where.add("test images of the run's dataset")
        if x is None:
            x = _scene_examples(direction, size, channels, n)
            where.add("built-in procedural street scenes, as the run's dataset was not found")
        out[direction] = x
    return out, "; ".join(sorted(where))


# ----------------------------------------------------------------------------- grids


@torch.no_grad()
def _outputs(gens: Mapping[str, nn.Module], inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: gens[k](x) for k, x in inputs.items()}


@torch.no_grad()
def _grids(
    loaded: LoadedGenerators, inputs: Mapping[str, Tensor], folder: Path
) -> tuple[list[str], dict[str, Tensor]]:
    """Write the sample grid (and the attention grid when there are units); return the file
    names and the outputs."""
    files = []
    rows: dict[str, Tensor] = {}
    attn: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}
    for key, x in inputs.items():
        g = loaded.generators[key]
        with record_attention(g) as maps:
            y = g(x)
        outputs[key] = y
        if loaded.kind == "gan":
            rows["samples"] = y
            images = y
        else:
            rows[f"input_{key[0]}"] = x
            rows[f"output_{key}"] = y
            images = x
        if maps:
            attn[f"{key}_image"] = images
            attn.update(attention_overlays(images, maps, prefix=key))
    if loaded.kind == "gan":
        y = rows["samples"]
        cols = min(8, y.shape[0])
        rows = {f"row_{i}": y[i * cols : (i + 1) * cols] for i in range(math.ceil(len(y) / cols))}
    save_grid(rows_grid(rows, max_cols=8), folder / SAMPLES_NAME)
    files.append(SAMPLES_NAME)
    if attn:
        save_grid(rows_grid(attn, max_cols=8), folder / ATTENTION_NAME)
        files.append(ATTENTION_NAME)
    return files, outputs


# ----------------------------------------------------------------------------- card


def _units(gens: Mapping[str, nn.Module]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key, g in gens.items():
        for name, unit in attention_units(g):
            gamma = getattr(unit, "gamma", None)
            out.setdefault(key, {})[name.removeprefix("attention.")] = {
                "unit": type(unit).__name__,
                "gamma": float(gamma) if gamma is not None else None,
            }
    return out


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def render_card(config: Mapping[str, Any], *, name: str, files: Sequence[str] = ()) -> str:
    """The ``README.md`` model card of a folder whose ``config.json`` is ``config`` (its
    ``card`` entry: license, tags, where the examples come from, parameter counts); ``name``
    is what users load (a Hub id ``user/name`` or a local folder); ``files``: the folder's."""
    card = config.get("card") or {}
    license = card.get("license", "mit")
    tags = card.get("tags", [])
    examples = card.get("examples", "")
    parameters = card.get("parameters", {})
    kind = config["kind"]
    model = config.get("model", {})
    attention = model.get("attention", "none")
    base_tags = ["spap", kind, "pytorch", "image-to-image" if kind == "cyclegan" else "gan"]
    if attention != "none":
        base_tags += [attention, "attention"]
    meta = {
        "library_name": "spap",
        "license": license,
        "pipeline_tag": "image-to-image"
        if kind == "cyclegan"
        else "unconditional-image-generation",
        "tags": list(dict.fromkeys([*base_tags, *tags])),
    }
    hub = "/" in name and not Path(name).exists()
    ref = f"{HUB_PREFIX}{name}" if hub else name
    title = name.rsplit("/", 1)[-1]
    step = config.get("step")
    if kind == "cyclegan":
        gens = config.get("generators", {})
        blocks = model.get("n_blocks")
        what = (
            f"An unpaired image-to-image translation model (CycleGAN, ResNet generator with "
            f"{blocks} residual block{'' if blocks == 1 else 's'}, ngf={model.get('ngf')}) with "
            f"{'no attention units' if attention == 'none' else attention.upper() + ' attention units'}"
            f", translating {' and '.join(gens)}."
        )
    else:
        what = (
            f"An unconditional GAN generator (SNGAN-style, {model.get('resolution')} px, "
            f"z_dim={model.get('z_dim')}) with "
            f"{'no attention units' if attention == 'none' else attention.upper() + ' attention units'}"
            f"{', exponential moving average of the weights' if config.get('ema') else ''}."
        )
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {title}", ""]
    trained = f" Trained with spap for {step} step{'s' if step != 1 else ''}." if step else ""
    lines += [what + trained, ""]
    # --- architecture
    lines += ["## Model", ""]
    rows: list[list[Any]] = [["kind", kind], ["attention", attention]]
    if attention != "none":
        places = model.get("g_attention_at")
        if places:
            rows.append(["generator units at", ", ".join(map(str, places))])
        opts = model.get("g_attention_options")
        if opts:
            rows.append(["unit options", json.dumps(opts)])
    for key, n in (parameters or {}).items():
        rows.append([f"parameters ({key})", f"{n / 1e6:.2f} M"])
    if config.get("crop_size"):
        rows.append(["training crop", f"{config['crop_size']} px"])
    if step is not None:
        rows.append(["training step", step])
    rows.append(["spap version", config.get("spap_version", "")])
    lines += [_md_table(["", ""], rows), ""]
    units = config.get("units") or {}
    if units:
        lines += [
            "Attention units and their learned blend weight `gamma` (0 = the unit is "
            "the identity):",
            "",
        ]
        urows = [
            [g, place, u["unit"], u["gamma"]] for g, us in units.items() for place, u in us.items()
        ]
        lines += [_md_table(["generator", "place", "unit", "gamma"], urows), ""]
    # --- metrics
    lines += ["## Metrics", ""]
    metrics = _flat_numbers(config.get("metrics") or {})
    if metrics:
        lines += [_md_table(["metric", "value"], metrics), ""]
        if "validation_during_training" in (config.get("metrics") or {}):
            lines += [
                "`validation_during_training`: the best value of the evaluation during "
                "training (`run.eval_every`, on the run's validation images) and the step it "
                f"came at; these weights are those of step {step}.",
                "",
            ]
    else:
        lines += [
            "No evaluation was stored with this run (`spap eval ... --json metrics.json` in "
            "the run folder, or `--metrics FILE`, adds one).",
            "",
        ]
    # --- grids
    if "samples.png" in files:
        lines += ["## Samples", "", "![samples](samples.png)", ""]
        if kind == "cyclegan":
            lines += [
                f"Rows: input and output of each direction, on {examples or 'example images'}.",
                "",
            ]
        else:
            lines += ["Images 0-15 of seed 0 (`sampler.sample(16, seed=0)`).", ""]
    if "attention.png" in files:
        lines += [
            "## Attention",
            "",
            "![attention](attention.png)",
            "",
            "Rows: the images, then one jet-coloured overlay per SPAP fuse block (the weight "
            "given to the branch brought in at that step) or SAGAN unit (the attention each "
            "position receives).",
            "",
        ]
    # --- how to use
    lines += [
        "## How to use",
        "",
        "```bash",
        "pip install 'spap[hub]'   # from a checkout of spap: pip install -e '.[hub]'",
        "```",
        "",
    ]
    if kind == "cyclegan":
        direction = next(iter(config.get("generators", {"AtoB": 0})))
        lines += [
            "```python",
            "from PIL import Image",
            "from spap.inference.translate import Translator",
            "",
            f'translator = Translator.from_pretrained("{name}")',
            f'out = translator.translate(Image.open("input.png"), direction="{direction}")',
            'out.save("output.png")',
            "# a large image, in bounded memory and without seams:",
            f'# translator.translate(big_image, direction="{direction}", tile=1024)',
            "```",
            "",
            "```bash",
            f"spap translate --checkpoint {ref} --input photos/ --output out/ "
            f"--direction {direction}",
            f"spap app --checkpoint {ref}   # a local web demo",
            "```",
        ]
    else:
        lines += [
            "```python",
            "from spap.inference import load",
            "",
            f'sampler = load("{ref}")',
            "images = sampler.sample(16, seed=0)   # (16, 3, R, R) in [-1, 1]",
            "```",
            "",
            "```bash",
            f"spap sample --checkpoint {ref} --num 64 --output samples/",
            "```",
        ]
    lines += [
        "",
        "With torch.hub, from a checkout of spap:",
        "",
        "```python",
        "import torch",
        f'model = torch.hub.load("path/to/spap", "generator", "{ref}", source="local")',
        "```",
        "",
        "## Files",
        "",
        "- `config.json`: kind, architecture (`model`), generators and channels, run metrics",
        "- `model.safetensors`: the generators' weights (names prefixed by generator, with a "
        "sha256 digest checked on load)",
    ]
    lines += [f"- `{f}`" for f in files if f.endswith(".png")]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- save


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def save_pretrained(
    model: Any,
    save_directory: str | os.PathLike,
    *,
    metrics: Mapping[str, Any] | str | os.PathLike | None = None,
    examples: str | os.PathLike | Mapping[str, str | os.PathLike] | None = None,
    num_examples: int = 4,
    license: str = "mit",
    tags: Sequence[str] = (),
    repo_id: str | None = None,
) -> PretrainedResult:
    """Write ``model`` (a checkpoint, run folder, export or model folder, a
    :class:`~spap.inference.translate.Translator` or a
    :class:`~spap.inference.sample.Sampler`) into ``save_directory`` in the Hugging Face
    layout (module doc); returns what was written.

    ``metrics``: a dict or a JSON file (default: the run folder's ``metrics.json``, else the
    best value of the checkpoint's in-training validation, ``run.eval_every``, if any).
    ``examples``: images (a file or folder, or ``{"AtoB": ..., "BtoA": ...}``) the grids
    translate (default: the run's test images when its dataset is on disk, else the built-in
    street scenes); a GAN's grids show images 0-15 of seed 0. ``repo_id`` is the name the
    card's snippets load (default: the folder's path). The caller's modules are never
    changed (copies are saved, their spectral norm baked).
    """
    out = Path(save_directory)
    if out.exists() and not out.is_dir():
        raise SpapError(f"{out} is a file; name a folder to write the model into")
    loaded = _collect(model)
    for g in loaded.generators.values():
        remove_spectral_norm(g.eval()).requires_grad_(False)
    run_metrics = _read_metrics(metrics, loaded.source)
    if metrics is None and not run_metrics and isinstance(loaded.info.get("metrics"), Mapping):
        run_metrics = dict(loaded.info["metrics"])  # re-saving a model folder keeps them
    best = loaded.info.get("best")
    if metrics is None and not run_metrics and isinstance(best, Mapping):
        # the checkpoint's in-training validation (run.eval_every): its best value so far
        run_metrics = {
            "validation_during_training": {
                f"best_{best['metric']}": best["value"],
                "best_step": best["step"],
            }
        }
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpapError(f"cannot create {out}: {exc.strerror or exc}") from None

    if loaded.kind == "gan":
        z_dim = int(loaded.generators["G"].z_dim)
        inputs, where = {"G": latents(0, range(16), z_dim)}, ""
    else:
        inputs, where = _examples(loaded, examples, num_examples)
    files, expected = _grids(loaded, inputs, out)

    tensors = {
        f"{key}.{name}": t
        for key, g in loaded.generators.items()
        for name, t in g.state_dict().items()
    }
    write_safetensors(
        out / WEIGHTS_NAME,
        tensors,
        {"format": "pt", "spap_format": PRETRAINED_FORMAT, "kind": loaded.kind},
    )
    if loaded.kind == "gan":
        generators: dict[str, Any] = {"G": {}}
    else:
        generators = {
            k: {"input_nc": int(g.input_nc), "output_nc": int(g.output_nc)}
            for k, g in loaded.generators.items()
        }
    config: dict[str, Any] = {
        "format": PRETRAINED_FORMAT,
        "format_version": 1,
        "spap_version": __version__,
        "kind": loaded.kind,
        "model": _json_safe(to_dict(loaded.model_config)),
        "generators": generators,
        "crop_size": loaded.info.get("crop_size"),
        "step": int(loaded.info.get("step") or 0),
        "metrics": run_metrics,
        "units": _units(loaded.generators),
    }
    if loaded.kind == "gan":
        config["ema"] = bool(loaded.info.get("ema", True))
        config.pop("crop_size")
    config["card"] = {
        "license": license,
        "tags": list(tags),
        "examples": where,
        "parameters": {
            k: sum(p.numel() for p in g.parameters()) for k, g in loaded.generators.items()
        },
    }
    _write_text(out / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=False) + "\n")
    files = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, *files]
    _write_text(out / CARD_NAME, render_card(config, name=repo_id or os.fspath(out), files=files))

    # Check: the folder alone rebuilds generators that give the same outputs.
    reloaded = load_generators(out)
    diff = 0.0
    with torch.no_grad():
        for key, x in inputs.items():
            diff = max(diff, float((reloaded.generators[key](x) - expected[key]).abs().max()))
    if not diff <= TOLERANCE:
        raise SpapError(
            f"{out}: the reloaded model differs from the saved one by {diff:.3g} "
            f"(> {TOLERANCE:g}); the folder is kept for inspection"
        )
    return PretrainedResult(
        out, loaded.kind, list(loaded.generators), files, diff, where, run_metrics
    )


# ----------------------------------------------------------------------------- load


def load_pretrained(
    pretrained_model_name_or_path: str | os.PathLike,
    *,
    kind: str | None = None,
    ema: bool = True,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> LoadedGenerators:
    """The generators of a folder written by :func:`save_pretrained`, of a Hub repository
    (``user/name`` when no such local path exists, or ``hf://user/name[@revision]``:
    downloaded with ``huggingface_hub.snapshot_download`` into its cache; the keywords from
    ``revision`` on are its own), or of anything else ``--checkpoint`` takes (a checkpoint,
    a run folder, an export). ``kind`` ("cyclegan" / "gan") refuses the other kind in one
    line; ``ema=False``: a GAN checkpoint's raw generator."""
    folder = resolve(
        pretrained_model_name_or_path,
        revision=revision,
        cache_dir=cache_dir,
        force_download=force_download,
        token=token,
        local_files_only=local_files_only,
    )
    return load_generators(folder, kind=kind, ema=ema)


# ----------------------------------------------------------------------------- push


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) says the server could not be reached: a
    refused or timed-out connection, an unknown host (not an HTTP error answer)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        names = {c.__name__ for c in type(e).__mro__}
        if names & {"ConnectError", "ConnectTimeout", "NetworkError", "ConnectionError"}:
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    **save_kwargs: Any,
) -> str:
    """Upload ``model`` to the Hub repository ``repo_id`` (created if needed) with
    ``huggingface_hub.HfApi().upload_folder``; returns the commit URL.

    ``model`` is a folder written by :func:`save_pretrained`, or anything
    :func:`save_pretrained` takes (written to a temporary folder first, its card naming
    ``repo_id``; ``save_kwargs`` go to :func:`save_pretrained`). Needs ``huggingface_hub``
    (``pip install 'spap[hub]'``) and a token (``token``, ``HF_TOKEN`` or ``hf auth login``).
    """
    repo_id = repo_id.removeprefix(HUB_PREFIX)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise SpapError(f"--repo must be user/name, got {repo_id!r}")
    try:
        import huggingface_hub  # noqa: PLC0415 - optional dependency (spap[hub])
        from huggingface_hub import constants  # noqa: PLC0415 - optional dependency (spap[hub])
    except ImportError:
        raise SpapError("uploading needs huggingface_hub: pip install 'spap[hub]'") from None
    if constants.HF_HUB_OFFLINE:
        raise SpapError(f"cannot upload to {repo_id}: HF_HUB_OFFLINE is set (offline mode)")
    if token is None and huggingface_hub.get_token() is None:
        raise SpapError(
            f"cannot upload to {repo_id}: no Hugging Face token (set HF_TOKEN or run "
            "`hf auth login`)"
        )
    with tempfile.TemporaryDirectory(prefix="spap-push-") as tmp:
        folder = Path(tmp) / "model"
        source = Path(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else None
        if source is not None and is_pretrained_folder(source) and not save_kwargs:
            # a saved folder goes up as it is; only its card now names the repository
            config = read_config(source)
            shutil.copytree(source, folder, ignore=shutil.ignore_patterns(".*"))
            files = sorted(p.name for p in folder.iterdir())
            _write_text(folder / CARD_NAME, render_card(config, name=repo_id, files=files))
        else:
            save_pretrained(model, folder, repo_id=repo_id, **save_kwargs)
        api = huggingface_hub.HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            info = api.upload_folder(
                folder_path=os.fspath(folder),
                repo_id=repo_id,
                repo_type="model",
                commit_message=commit_message or "Upload spap model",
            )
        except Exception as exc:  # noqa: BLE001 - network, auth, quota: one line
            text = " ".join(str(exc).split())[:300] or type(exc).__name__
            if _unreachable(exc):
                raise SpapError(
                    f"upload to {repo_id} failed: cannot reach the Hugging Face Hub at "
                    f"{constants.ENDPOINT} ({text}); check the connection (or HF_ENDPOINT)"
                ) from None
            response = getattr(exc, "response", None)
            status = getattr(response, "status_code", None)
            if isinstance(status, int):  # the Hub answered with an error
                reason = getattr(response, "reason_phrase", "") or ""
                said = " ".join(str(getattr(exc, "server_message", "") or "").split())[:200]
                hint = (
                    "; check the token (--token, HF_TOKEN or `hf auth login`) and its write "
                    f"access to {repo_id}"
                    if status in (401, 403)
                    else ""
                )
                raise SpapError(
                    f"upload to {repo_id} failed: the Hub answered {status} {reason}".rstrip()
                    + (f" ({said})" if said else "")
                    + hint
                ) from None
            raise SpapError(f"upload to {repo_id} failed: {text}") from None
    return str(getattr(info, "commit_url", info))
