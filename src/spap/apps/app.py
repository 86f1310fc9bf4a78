"""The web demo behind ``spap app``: a Gradio page for one trained model.

>>> demo = build_app("runs/facades_spap")          # a gradio.Blocks
>>> demo.launch(server_name="127.0.0.1", server_port=7860)
>>> write_space("runs/facades_spap", "space/")      # a ready Hugging Face Space folder

CycleGAN: upload an image, choose the direction, get the translation (the very file
``spap translate`` writes for that image: the app runs the same folder translation on it),
the attention maps of every unit as overlays captioned with the unit's ``gamma``, and a
download of the output PNG. GAN: choose a seed, get image 0 of that seed
(``Sampler.sample(1, seed)``), its attention maps and the PNG.

Gradio is an optional dependency (``pip install 'spap[app]'``), imported when the app is
built. Nothing is fetched from the network: the page uses system fonts and analytics are
off.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

from spap import __version__
from spap.data.transforms import save_image
from spap.errors import SpapError
from spap.inference import load
from spap.inference.pretrained import save_pretrained
from spap.inference.sample import Sampler
from spap.inference.translate import Translator
from spap.layers import attention_units
from spap.viz.attention import overlay, unit_label

__all__ = ["SpapApp", "build_app", "write_space"]

log = logging.getLogger(__name__)

#: Element ids of the page (the browser test finds the parts by them).
IDS = {
    "input": "spap-input",
    "direction": "spap-direction",
    "seed": "spap-seed",
    "run": "spap-run",
    "output": "spap-output",
    "attention": "spap-attention",
    "download": "spap-download",
}


def _gammas(generators: Mapping[str, torch.nn.Module]) -> dict[str, dict[str, float]]:
    """``{direction: {unit label: gamma}}``."""
    out: dict[str, dict[str, float]] = {}
    for key, g in generators.items():
        for name, unit in attention_units(g):
            gamma = getattr(unit, "gamma", None)
            out.setdefault(key, {})[unit_label(name)] = float(gamma) if gamma is not None else 0.0
    return out


def _caption(key: str, gammas: Mapping[str, float]) -> str:
    """``"block_8, fuse step 2 (gamma 0.123)"`` for an attention map name."""
    unit, _, step = key.rpartition("_")
    if unit in gammas and step.isdigit():
        return f"{unit}, fuse step {step} (gamma {gammas[unit]:.3f})"
    if key in gammas:
        return f"{key} (gamma {gammas[key]:.3f})"
    return key


class SpapApp:
    """The model behind the page and the functions its buttons call."""

    def __init__(self, checkpoint: str | os.PathLike, device: str = "auto") -> None:
        self.model = load(checkpoint, device=device)
        self.source = os.fspath(checkpoint)
        self.kind = "gan" if isinstance(self.model, Sampler) else "cyclegan"
        gens = self.model.generators if self.kind == "cyclegan" else {"G": self.model.generator}
        self.gammas = _gammas(gens)
        self._tmp = Path(tempfile.mkdtemp(prefix="spap-app-"))
        atexit.register(shutil.rmtree, self._tmp, True)
        self._count = 0

    def _folder(self) -> Path:
        self._count += 1
        folder = self._tmp / f"{self._count:06d}"
        folder.mkdir()
        return folder

    def describe(self) -> str:
        """Markdown about the model: kind, source, step, units and their gamma."""
        step = self.model.step if isinstance(self.model, Sampler) else self.model.info.get("step")
        lines = [f"**{self.kind}** model from `{self.source}`" + (f", step {step}" if step else "")]
        for key, units in self.gammas.items():
            text = ", ".join(f"{u} (gamma {g:.3f})" for u, g in units.items())
            lines.append(f"- {key}: {text}")
        if not self.gammas:
            lines.append("- no attention units")
        return "\n".join(lines)

    def translate(self, path: str | None, direction: str) -> tuple[str, list, str]:
        """(output PNG, [(overlay PNG, caption)], the PNG again for download)."""
        if not path:
            raise SpapError("upload an image first")
        assert isinstance(self.model, Translator)
        folder = self._folder()
        src = folder / "input"
        src.mkdir()
        name = Path(path).name
        shutil.copyfile(path, src / name)
        out = folder / "output"
        units = bool(self.gammas.get(direction))
        result = self.model.translate_folder(src / name, out, direction=direction, attention=units)
        if not result.written:
            reason = result.skipped[0][1] if result.skipped else "unreadable image"
            raise SpapError(f"cannot translate {name}: {reason}")
        png = out / f"{Path(name).stem}.png"
        if not png.is_file():  # one-channel / many-channel outputs: the only file written
            png = next(p for p in out.iterdir() if p.is_file())
        gallery = []
        prefix = f"{Path(name).stem}_"
        for over in sorted((out / "attention").glob("*.png")):
            key = over.stem[len(prefix) :] if over.stem.startswith(prefix) else over.stem
            gallery.append((str(over), _caption(key, self.gammas.get(direction, {}))))
        return str(png), gallery, str(png)

    def sample(self, seed: float | int) -> tuple[str, list, str]:
        """Image 0 of ``seed``: (PNG, [(overlay PNG, caption)], PNG)."""
        assert isinstance(self.model, Sampler)
        seed = int(seed)
        folder = self._folder()
        images, maps = self.model.sample_with_attention(1, seed=seed)
        png = save_image(images[0], folder / f"seed_{seed}.png")
        gallery = []
        for key, m in sorted(maps.items()):
            over = save_image(overlay(images[:1], m)[0], folder / f"attention_{key}.png")
            gallery.append((str(over), _caption(key, self.gammas.get("G", {}))))
        return str(png), gallery, str(png)


def build_app(checkpoint: str | os.PathLike, device: str = "auto", title: str | None = None) -> Any:
    """The ``gradio.Blocks`` page of the model in ``checkpoint`` (module doc)."""
    app = SpapApp(checkpoint, device)  # a bad --checkpoint fails before gradio loads
    try:
        import gradio as gr  # noqa: PLC0415 - optional dependency (spap[app])
    except ImportError:
        raise SpapError("the web demo needs gradio: pip install 'spap[app]'") from None
    name = title or f"spap: {Path(os.fspath(checkpoint)).name or 'model'}"

    def run(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except SpapError as exc:
            raise gr.Error(str(exc)) from None

    with gr.Blocks(title=name, analytics_enabled=False) as demo:
        gr.Markdown(f"# {name}\n\n{app.describe()}")
        with gr.Row():
            with gr.Column():
                if app.kind == "cyclegan":
                    source = gr.Image(
                        type="filepath",
                        image_mode=None,  # the uploaded file as it is (read as spap translate reads it)
                        sources=["upload"],
                        label="input image",
                        height=320,
                        elem_id=IDS["input"],
                    )
                    directions = list(app.model.generators)
                    choice = gr.Radio(
                        directions,
                        value=directions[0],
                        label="direction",
                        elem_id=IDS["direction"],
                    )
                    button = gr.Button("Translate", variant="primary", elem_id=IDS["run"])
                    inputs = [source, choice]
                    fn = app.translate
                else:
                    seed = gr.Number(value=0, precision=0, label="seed", elem_id=IDS["seed"])
                    button = gr.Button("Sample", variant="primary", elem_id=IDS["run"])
                    inputs = [seed]
                    fn = app.sample
            with gr.Column():
                result = gr.Image(
                    type="filepath",
                    format="png",
                    label="output",
                    height=320,
                    elem_id=IDS["output"],
                )
                download = gr.File(label="download the output (PNG)", elem_id=IDS["download"])
        maps = gr.Gallery(
            label="attention maps (overlays on the input; caption: unit, fuse step, gamma)",
            columns=4,
            format="png",
            elem_id=IDS["attention"],
        )
        button.click(lambda *a: run(fn, *a), inputs=inputs, outputs=[result, maps, download])
    demo.spap = app  # for callers and tests
    return demo


def launch(
    checkpoint: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int | None = None,
    device: str = "auto",
    title: str | None = None,
) -> None:
    """Serve the page on ``host:port`` until interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_app(checkpoint, device, title)
    theme = _local_theme()
    kwargs: dict[str, Any] = {"server_name": host, "server_port": port, "show_error": True}
    if theme is not None:
        kwargs["theme"] = theme
    demo.launch(**kwargs)


def _local_theme() -> Any:
    """Gradio's default theme with system fonts (no font download), where launch takes one."""
    import gradio as gr  # noqa: PLC0415 - optional dependency (spap[app])

    if "theme" not in inspect.signature(gr.Blocks.launch).parameters:
        return None
    return gr.themes.Default(
        font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )


# ----------------------------------------------------------------------------- Space

_SPACE_APP = '''"""Hugging Face Space: the spap web demo of the model in model/ (written by spap app --space)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the copy of spap beside this file

from spap.apps.app import build_app  # noqa: E402

build_app(os.path.join(HERE, "model"), device="auto", title={title!r}).launch()
'''

#: Distributions the Space needs (pinned to the installed versions), gradio excepted:
#: the Space's ``sdk_version`` installs it.
_SPACE_REQUIREMENTS = ("torch", "torchvision", "numpy", "pillow", "pyyaml", "tqdm", "safetensors")


def _pinned(names: tuple[str, ...]) -> list[str]:
    out = []
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def write_space(
    checkpoint: str | os.PathLike,
    directory: str | os.PathLike,
    *,
    title: str | None = None,
    license: str = "mit",
    model_repo: str | None = None,
) -> Path:
    """Write a Hugging Face Space folder for the model: ``app.py``, pinned
    ``requirements.txt``, ``README.md`` with the Space front matter (``sdk: gradio``), the model
    in ``model/`` (the Hugging Face layout) and a copy of the spap package in ``spap/`` (so the
    Space runs this very code). Push it with ``huggingface_hub`` or git as a Space."""
    try:
        gradio_version = metadata.version("gradio")
    except metadata.PackageNotFoundError:
        raise SpapError("writing a Space needs gradio installed: pip install 'spap[app]'") from None
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise SpapError(f"--space {out} is a file; name a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "app.py").is_file():
        raise SpapError(f"--space {out} is a folder holding other files; name a new or empty one")
    name = title or f"spap {Path(os.fspath(checkpoint)).resolve().name}"
    out.mkdir(parents=True, exist_ok=True)
    saved = save_pretrained(checkpoint, out / "model", license=license, repo_id=model_repo)
    package = Path(sys.modules["spap"].__file__).parent
    shutil.rmtree(out / "spap", ignore_errors=True)
    shutil.copytree(package, out / "spap", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (out / "app.py").write_text(_SPACE_APP.format(title=name), encoding="utf-8")
    reqs = _pinned(_SPACE_REQUIREMENTS)
    (out / "requirements.txt").write_text("\n".join(reqs) + "\n", encoding="utf-8")
    front = {
        "title": name[:60],
        "emoji": "🎨",
        "colorFrom": "blue",
        "colorTo": "green",
        "sdk": "gradio",
        "sdk_version": gradio_version,
        "app_file": "app.py",
        "pinned": False,
        "license": license,
        "tags": ["spap", saved.kind],
    }
    if model_repo:
        front["models"] = [model_repo]
    readme = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(),
        "---",
        "",
        f"# {name}",
        "",
        "The spap web demo of one model ("
        + ("image-to-image translation" if saved.kind == "cyclegan" else "image generation")
        + f"), written by `spap app --space` (spap {__version__}).",
        "",
        "- `app.py`: the Gradio app (`spap.apps.app.build_app`)",
        "- `model/`: the model in the Hugging Face layout (config.json, model.safetensors, "
        "model card)",
        "- `spap/`: the spap package the app runs",
        "- `requirements.txt`: pinned dependencies (gradio comes from `sdk_version`)",
        "",
        "Run it locally with `pip install -r requirements.txt gradio=="
        + gradio_version
        + "` and `python app.py`.",
    ]
    (out / "README.md").write_text("\n".join(readme) + "\n", encoding="utf-8")
    return out
