"""A small self-contained HTML report: one ``index.html``, its images as PNG files beside it.

>>> rep = Report("out/report", title="spap demo")
>>> rep.heading("Translations")
>>> rep.grid({"real_A": a, "fake_B": b, "rec_A": c}, "translations_AtoB", caption="test images")
>>> rep.curves(read_scalars("runs/x/tb", prefix="loss/"), title="Losses")
>>> rep.table(["metric", "value"], [["per-pixel acc", 0.71]])
>>> rep.write()                                   # -> out/report/index.html

No JavaScript, no external file: curves are inline SVG polylines, images are relative links,
so the folder can be copied or zipped as it is.
"""

from __future__ import annotations

import html
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image
from torch import nn
from torchvision.transforms.functional import to_pil_image

from spap.config import from_dict
from spap.devices import pick_device
from spap.errors import CheckpointError, SpapError
from spap.files import atomic_write
from spap.inference.loading import load_generators
from spap.layers import SPAP, attention_units, record_attention
from spap.models.sngan import latents
from spap.systems import get_system
from spap.train.checkpoint import (
    load_checkpoint,
    resolve_best,
    resolve_checkpoint,
)
from spap.train.evaluation import lower_is_better, validation_images
from spap.viz.attention import attention_maps, colorize, overlay, unit_label
from spap.viz.grid import rows_grid

__all__ = [
    "Report",
    "format_value",
    "html_table",
    "line_chart_svg",
    "eval_section",
    "gamma_section",
    "read_scalars",
    "write_run_report",
]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figure img { image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { font-size: 0.85em; color: #555; max-width: 640px; }
table { border-collapse: collapse; margin: 0.5em 0 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
caption { caption-side: bottom; font-size: 0.85em; color: #555; text-align: left; padding-top: 0.3em; }
.curves svg { margin: 0 1em 1em 0; }
p.note { font-size: 0.9em; color: #444; }
"""

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def format_value(v: Any, digits: int = 3) -> str:
    """Numbers with ``digits`` decimals (NaN/None as ``n/a``), anything else as text."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def html_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "", digits: int = 3
) -> str:
    """An HTML table; cells go through :func:`format_value` and are escaped."""
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = "".join(f"<td>{html.escape(format_value(c, digits))}</td>" for c in row)
        out.append(f"<tr>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _nice(v: float) -> str:
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.3g}"
    return f"{v:.2e}"


def line_chart_svg(
    series: Mapping[str, Sequence[tuple[float, float]]],
    title: str = "",
    width: int = 300,
    height: int = 170,
    smooth: float = 0.0,
    max_points: int = 300,
    xlabel: str = "",
    ylabel: str = "",
    marks: Mapping[str, tuple[float, float]] | None = None,
) -> str:
    """An inline SVG line chart of ``{name: [(x, y), ...]}`` (one polyline per name, shared
    axes, min/max tick labels, a legend). Non-finite points are dropped.

    ``xlabel`` / ``ylabel`` label the axes; ``marks`` (``{label: (x, y)}``) draws a ringed
    point with its label (the best evaluation).

    ``smooth`` in [0, 1) draws the raw values faintly and, on top, their exponential moving
    average with that weight (as TensorBoard's smoothing slider). Polylines are thinned to
    at most ``max_points`` points.
    """
    clean = {
        k: [(float(x), float(y)) for x, y in v if math.isfinite(x) and math.isfinite(y)]
        for k, v in series.items()
    }
    clean = {k: v for k, v in clean.items() if v}
    left, right, top, bottom = 46 + (12 if ylabel else 0), 8, 18 if title else 8, 30
    bottom += 12 if xlabel else 0
    pw, ph = width - left - right, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="10">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#bbb"/>',
    ]
    if title:
        parts.append(f'<text x="{left}" y="12" font-size="11">{html.escape(title)}</text>')
    if not clean:
        parts.append(f'<text x="{left + 8}" y="{top + ph / 2}">no data</text></svg>')
        return "\n".join(parts)
    xs = [x for v in clean.values() for x, _ in v]
    ys = [y for v in clean.values() for _, y in v]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    def polyline(pts: list[tuple[float, float]], color: str, extra: str = "") -> str:
        if len(pts) > max_points:
            step = (len(pts) - 1) / (max_points - 1)
            pts = [pts[round(i * step)] for i in range(max_points)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        return (
            f'<polyline fill="none" stroke="{color}" stroke-width="1.2"{extra} points="{coords}"/>'
        )

    for i, (name, pts) in enumerate(clean.items()):
        color = _COLORS[i % len(_COLORS)]
        if len(pts) == 1:
            x, y = pts[0]
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2" fill="{color}"/>')
        elif smooth > 0:
            parts.append(polyline(pts, color, ' stroke-opacity="0.25"'))
            ema, avg = [], pts[0][1]
            for x, y in pts:
                avg = smooth * avg + (1 - smooth) * y
                ema.append((x, avg))
            parts.append(polyline(ema, color))
        else:
            parts.append(polyline(pts, color))
        parts.append(
            f'<text x="{left + 4 + 70 * i}" y="{height - 4}" fill="{color}">{html.escape(name)}</text>'
        )
    for label, (mx, my) in (marks or {}).items():
        if math.isfinite(mx) and math.isfinite(my):
            parts.append(
                f'<circle cx="{px(mx):.1f}" cy="{py(my):.1f}" r="4" fill="none" stroke="#000" '
                f'stroke-width="1.5"/><text x="{px(mx):.1f}" y="{py(my) - 6:.1f}" '
                f'text-anchor="middle" font-weight="bold">{html.escape(label)}</text>'
            )
    if xlabel:
        parts.append(
            f'<text x="{left + pw / 2:.1f}" y="{top + ph + 23}" text-anchor="middle">'
            f"{html.escape(xlabel)}</text>"
        )
    if ylabel:
        parts.append(
            f'<text transform="translate(10 {top + ph / 2:.1f}) rotate(-90)" '
            f'text-anchor="middle">{html.escape(ylabel)}</text>'
        )
    parts += [
        f'<text x="{left - 3}" y="{top + 8}" text-anchor="end">{_nice(y1)}</text>',
        f'<text x="{left - 3}" y="{top + ph}" text-anchor="end">{_nice(y0)}</text>',
        f'<text x="{left}" y="{top + ph + 11}">{_nice(x0)}</text>',
        f'<text x="{left + pw}" y="{top + ph + 11}" text-anchor="end">{_nice(x1)}</text>',
        "</svg>",
    ]
    return "\n".join(parts)


def read_scalars(logdir: str | os.PathLike, prefix: str = "") -> dict[str, list[tuple[int, float]]]:
    """Scalars of the TensorBoard event files in ``logdir``: ``{tag: [(step, value), ...]}``
    for tags starting with ``prefix`` (the prefix is removed from the names), by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: PLC0415 - optional dependency (spap[train])

    if not Path(logdir).is_dir():
        return {}
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    tb_log = logging.getLogger("tensorboard")
    level = tb_log.level
    tb_log.setLevel(logging.WARNING)  # it logs every event file it opens at INFO
    try:
        acc.Reload()
    finally:
        tb_log.setLevel(level)
    out: dict[str, list[tuple[int, float]]] = {}
    for tag in sorted(acc.Tags().get("scalars", [])):
        if not tag.startswith(prefix):
            continue
        events = {e.step: float(e.value) for e in acc.Scalars(tag)}  # last value per step
        out[tag[len(prefix) :]] = sorted(events.items())
    return out


def _to_pil(image: Any):
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.dim() == 4:
            t = t[0]
        if t.dim() == 2:
            t = t.unsqueeze(0)
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        return to_pil_image((t[:3].clamp(-1, 1) + 1) / 2)
    raise TypeError(f"cannot save {type(image).__name__} as an image")


class Report:
    """Builds ``out_dir/index.html``; images are written as PNG files into ``out_dir``.

    Tensors are images in [-1, 1] (``(3, H, W)``), like the rest of the project.
    """

    def __init__(self, out_dir: str | os.PathLike, title: str = "spap report") -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.parts: list[str] = []
        self.files: list[str] = []

    # -- text
    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str, note: bool = False) -> None:
        """A paragraph (escaped; ``note`` sets it in a smaller font)."""
        cls = ' class="note"' if note else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def raw(self, fragment: str) -> None:
        """Append an HTML fragment as it is (the caller escapes)."""
        self.parts.append(fragment)

    # -- images
    def _name(self, name: str) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return safe if safe.endswith(".png") else safe + ".png"

    def image(self, image: Any, name: str, caption: str = "", scale: float = 1.0) -> Path:
        """Save ``image`` (a (3, H, W) tensor in [-1, 1], a PIL image, or an existing file,
        copied) as ``name``.png and show it, ``scale`` times its size."""
        path = self.dir / self._name(name)
        if isinstance(image, (str, os.PathLike)):
            if Path(image).resolve() != path.resolve():
                with open(image, "rb") as src:
                    atomic_write(path, lambda fh: shutil.copyfileobj(src, fh))
            with Image.open(path) as im:
                w, h = im.size
        else:
            pil = _to_pil(image)
            atomic_write(path, lambda fh: pil.save(fh, format="PNG"))
            w, h = pil.size
        self.files.append(path.name)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(
            f'<figure><img src="{html.escape(path.name)}" width="{round(w * scale)}" '
            f'height="{round(h * scale)}" alt="{html.escape(caption or name)}">{cap}</figure>'
        )
        return path

    def grid(
        self,
        visuals: Mapping[str, torch.Tensor],
        name: str,
        caption: str = "",
        max_cols: int = 8,
        scale: float | None = None,
    ) -> Path:
        """One grid image, a row per entry of ``visuals`` (``(n, 3, h, w)`` in [-1, 1]); the
        row names go into the caption. Small images are shown enlarged."""
        g = rows_grid(dict(visuals), max_cols=max_cols)
        if scale is None:
            h = next(iter(visuals.values())).shape[-2]
            scale = max(1.0, min(4.0, 96 / max(h, 1)))
        rows = "rows, top to bottom: " + ", ".join(visuals)
        return self.image(g, name, f"{caption} ({rows})" if caption else rows, scale=scale)

    # -- tables and curves
    def table(
        self,
        header: Sequence[str],
        rows: Sequence[Sequence[Any]],
        caption: str = "",
        digits: int = 3,
    ) -> None:
        self.parts.append(html_table(header, rows, caption, digits))

    def curves(
        self,
        series: Mapping[str, Sequence[tuple[float, float]]],
        title: str = "",
        groups: Mapping[str, Sequence[str]] | None = None,
        width: int = 300,
        height: int = 170,
        smooth: float = 0.0,
        xlabel: str = "iteration",
        ylabel: str = "",
        marks: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
    ) -> None:
        """Inline SVG charts: one per group (``{chart title: [series names]}``), or one per
        series when no groups are given (``smooth``, ``xlabel``, ``ylabel``: see
        :func:`line_chart_svg`; ``marks``: ``{chart title: marks}``)."""
        if groups is None:
            groups = {k: [k] for k in series}
        charts = [
            line_chart_svg(
                {k: series[k] for k in names if k in series},
                t,
                width,
                height,
                smooth=smooth,
                xlabel=xlabel,
                ylabel=ylabel,
                marks=(marks or {}).get(t),
            )
            for t, names in groups.items()
        ]
        head = f"<p>{html.escape(title)}</p>" if title else ""
        self.parts.append(f'<div class="curves">{head}{"".join(charts)}</div>')

    # -- output
    def html(self) -> str:
        body = "\n".join(self.parts)
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(self.title)}</h1>\n{body}\n</body>\n</html>\n"
        )

    def write(self, name: str = "index.html") -> Path:
        """Write the page (atomically: complete or not at all; a failed write is one
        :class:`~spap.errors.WriteError` line naming the file) and return its path."""
        path = self.dir / name
        data = self.html().encode("utf-8")
        atomic_write(path, lambda fh: fh.write(data))
        return path

    # -- attention
    def colour_scale(self, name: str = "colour_scale") -> Path:
        """The heat-map colour scale of the attention overlays, labelled 0, 0.5, 1."""
        ramp = torch.linspace(0, 1, 256).reshape(1, 1, 1, 256).expand(1, 1, 14, 256)
        img = colorize(ramp)[0] * 2 - 1
        path = self.image(img, name, caption="")
        src = html.escape(path.name)
        self.parts[-1] = (
            f'<figure><img src="{src}" width="256" height="14" alt="attention colour scale">'
            '<figcaption style="display:flex;justify-content:space-between;width:256px">'
            "<span>0</span><span>0.5 (even split)</span><span>1</span></figcaption>"
            "</figure>"
        )
        return path

    def attention(
        self,
        images: torch.Tensor,
        network: nn.Module,
        recorded: Mapping[str, list[torch.Tensor]],
        prefix: str,
        caption: str = "",
        input_name: str = "input",
    ) -> None:
        """Overlays of every unit's maps on ``images`` (recorded while ``network`` ran on
        them), one grid per unit, each row labelled with the fuse step and the dilation
        rate that enters there, above the colour scale."""
        units = dict(attention_units(network))
        maps = attention_maps(recorded, tuple(images.shape[-2:]))
        for name in recorded:
            label = unit_label(name)
            unit = units.get(name)
            rows: dict[str, torch.Tensor] = {input_name: images}
            for key in sorted(k for k in maps if k == label or k.startswith(label + "_")):
                if isinstance(unit, SPAP) and key != label:
                    k = int(key.rsplit("_", 1)[1])
                    rate = unit.rates[unit.cascade[k + 1]]
                    row = f"{prefix} {label} step {k + 1}: rate {rate} enters"
                else:
                    row = f"{prefix} {label} attention received"
                rows[row] = overlay(images, maps[key])
            if len(rows) > 1:
                self.grid(rows, f"attention_{prefix}_{label}", caption=f"{caption} unit {label}")
        self.colour_scale()


# ----------------------------------------------------------------------------- a run's report


def _best_marks(series: Mapping[str, Sequence[tuple[float, float]]]) -> dict[str, Any]:
    marks = {}
    for name, pts in series.items():
        pts = [(x, y) for x, y in pts if math.isfinite(y)]
        if pts:
            pick = min if lower_is_better(name) else max
            x, y = pick(pts, key=lambda p: p[1])
            marks[name] = {f"best: step {int(x)}": (x, y)}
    return marks


def _run_config(run_dir: Path, state: Mapping[str, Any]) -> tuple[Any, str]:
    kind = state["kind"]
    raw = state.get("config") or {}
    cfg = from_dict(get_system(kind).config_class, raw, unknown="warn", source=str(run_dir))
    return cfg, yaml.safe_dump(raw, sort_keys=False)


def eval_section(rep: Report, tb: str | os.PathLike) -> None:
    """The ``eval/*`` curves of a run's TensorBoard folder, each best value marked."""
    rep.heading("Evaluation on the validation images")
    metrics = read_scalars(tb, prefix="eval/")
    if metrics:
        rep.curves(metrics, ylabel="value", marks=_best_marks(metrics))
    else:
        rep.text("No evaluation was logged (set run.eval_every).", note=True)


def gamma_section(rep: Report, tb: str | os.PathLike) -> None:
    """Every attention unit's ``gamma`` and the weight of each entering branch, over time."""
    rep.heading("Attention units: gamma")
    att = read_scalars(tb, prefix="attention/")
    gammas = {k[: -len("/gamma")]: v for k, v in att.items() if k.endswith("/gamma")}
    if not gammas:
        rep.text("No attention unit (or no gamma logged).", note=True)
        return
    rep.text(
        "gamma is each unit's learned blend scalar (0: the unit passes its input through "
        "unchanged).",
        note=True,
    )
    rep.curves(gammas, groups={"gamma of every unit": list(gammas)}, ylabel="gamma", width=620)
    rates = {k: v for k, v in att.items() if "/rate" in k}
    if rates:
        rep.curves(
            rates,
            groups={"mean weight of the branch entering at its fuse step": list(rates)},
            ylabel="mean weight",
            width=620,
        )


def write_run_report(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    which: str = "best",
    num_images: int = 6,
    device: str = "auto",
) -> Path:
    """Write ``out_dir/index.html`` (default ``RUN/report``) for any CycleGAN or GAN run:
    evaluation curves (best marked), losses, each unit's ``gamma``, attention maps with
    their colour scale, translations in both directions (or EMA samples), the resolved
    config. ``which``: ``best`` (when the run has one, else latest) or ``latest``."""
    run_dir = Path(run_dir)
    try:
        ckpt = resolve_best(run_dir) if which == "best" else resolve_checkpoint(run_dir)
    except CheckpointError:
        if which != "best":
            raise
        ckpt = resolve_checkpoint(run_dir)
    state = load_checkpoint(ckpt)
    cfg, config_text = _run_config(run_dir, state)
    kind, step = state["kind"], int(state.get("step", 0))
    loaded = load_generators(ckpt)
    dev = pick_device(device)
    names = {"AtoB": "G_A", "BtoA": "G_B"}  # CycleGAN directions -> reference names
    nets = {names.get(k, k): g.to(dev).eval() for k, g in loaded.generators.items()}
    rep = Report(out_dir or run_dir / "report", title=f"spap {kind} run: {run_dir.name}")
    best = (state.get("monitor") or {}).get("best") or {}
    rep.text(
        f"Checkpoint {ckpt.name} (step {step}) of {run_dir}"
        + (
            f"; best {best.get('metric')} = {format_value(best.get('value'), 4)} at step "
            f"{best.get('step')}"
            if best.get("metric")
            else ""
        )
        + "."
    )
    tb = run_dir / "tb"
    eval_section(rep, tb)
    rep.heading("Training losses")
    losses = read_scalars(tb, prefix="loss/")
    if losses:
        groups = {"discriminator": [k for k in losses if "D" in k.split("_")[0]]}
        groups["generator"] = [k for k in losses if k not in groups["discriminator"]]
        rep.curves(losses, groups={k: v for k, v in groups.items() if v}, ylabel="loss", smooth=0.6)
    gamma_section(rep, tb)
    try:
        images, source = validation_images(cfg, kind, num_images)
    except SpapError as exc:
        images, source = {}, f"validation images not readable ({exc})"
    with torch.no_grad():
        if kind == "cyclegan":
            for direction, src, gen, back in (
                ("AtoB", "A", "G_A", "G_B"),
                ("BtoA", "B", "G_B", "G_A"),
            ):
                if src not in images:
                    continue
                x = images[src].to(dev)
                with record_attention(nets[gen]) as maps:
                    y = nets[gen](x)
                rec = nets[back](y)
                rep.heading(f"Translations {direction} ({gen})")
                rep.grid(
                    {f"real_{src}": x.cpu(), "translation": y.cpu(), "reconstruction": rec.cpu()},
                    f"translations_{direction}",
                    caption=source,
                )
                if maps:
                    rep.heading(f"Attention maps of {gen}", level=3)
                    rep.attention(x.cpu(), nets[gen], maps, gen, caption=gen)
        else:
            z = latents(0, range(num_images), cfg.model.z_dim).to(dev)
            g = nets["G"]
            with record_attention(g) as maps:
                samples = g(z)
            rep.heading("Samples (EMA generator)")
            rep.grid({"samples": samples.cpu()}, "samples", caption="seeds 0 to n-1")
            if "image" in images:
                rep.grid({"real": images["image"]}, "real", caption=source)
            if maps:
                rep.heading("Attention maps", level=3)
                rep.attention(samples.cpu(), g, maps, "G", caption="G (EMA)")
    rep.heading("Resolved config")
    rep.raw(f"<pre>{html.escape(config_text)}</pre>")
    return rep.write()
