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
from PIL import Image
from torchvision.transforms.functional import to_pil_image

from spap.viz.grid import rows_grid

__all__ = ["Report", "format_value", "html_table", "line_chart_svg", "read_scalars"]

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
) -> str:
    """An inline SVG line chart of ``{name: [(x, y), ...]}`` (one polyline per name, shared
    axes, min/max tick labels, a legend). Non-finite points are dropped.

    ``smooth`` in [0, 1) draws the raw values faintly and, on top, their exponential moving
    average with that weight (as TensorBoard's smoothing slider). Polylines are thinned to
    at most ``max_points`` points.
    """
    clean = {
        k: [(float(x), float(y)) for x, y in v if math.isfinite(x) and math.isfinite(y)]
        for k, v in series.items()
    }
    clean = {k: v for k, v in clean.items() if v}
    left, right, top, bottom = 46, 8, 18 if title else 8, 30
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
                shutil.copyfile(image, path)
            with Image.open(path) as im:
                w, h = im.size
        else:
            pil = _to_pil(image)
            pil.save(path)
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
    ) -> None:
        """Inline SVG charts: one per group (``{chart title: [series names]}``), or one per
        series when no groups are given (``smooth``: see :func:`line_chart_svg`)."""
        if groups is None:
            groups = {k: [k] for k in series}
        charts = [
            line_chart_svg(
                {k: series[k] for k in names if k in series}, t, width, height, smooth=smooth
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
        """Write the page (atomically) and return its path."""
        path = self.dir / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(self.html(), encoding="utf-8")
        os.replace(tmp, path)
        return path
