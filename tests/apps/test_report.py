from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from PIL import Image

from spap.apps.report import Report, format_value, html_table, line_chart_svg, read_scalars


def test_format_value() -> None:
    assert format_value(0.12345) == "0.123"
    assert format_value(float("nan")) == "n/a"
    assert format_value(None) == "n/a"
    assert format_value(7) == "7"
    assert format_value("x") == "x"


def test_html_table_escapes_and_formats() -> None:
    t = html_table(["name", "acc"], [["<b>", 0.5], ["c", float("nan")]], caption="cap & co")
    assert "&lt;b&gt;" in t and "<b>" not in t
    assert "<td>0.500</td>" in t and "<td>n/a</td>" in t
    assert "cap &amp; co" in t
    assert t.count("<tr>") == 3


def test_line_chart_maps_points_into_the_plot_area() -> None:
    svg = line_chart_svg({"a": [(0, 1.0), (10, 3.0)], "b": [(5, 2.0)]}, "t", width=200, height=100)
    pts = re.search(r'points="([^"]+)"', svg).group(1).split()
    (x0, y0), (x1, y1) = (tuple(map(float, p.split(","))) for p in pts)
    assert x0 < x1 and y0 > y1  # larger y drawn higher
    assert x0 >= 0 and x1 <= 200 and y1 >= 0 and y0 <= 100
    assert "<circle" in svg  # a single-point series
    assert ">a<" in svg and ">b<" in svg
    # degenerate and non-finite input still gives a valid chart
    assert "no data" in line_chart_svg({"a": [(0, math.nan)]})
    assert "<polyline" in line_chart_svg({"a": [(0, 1.0), (1, 1.0)]})


def test_read_scalars(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path))
    for step in (1, 2, 3):
        w.add_scalar("loss/G", 1.0 / step, step)
        w.add_scalar("perf/x", 5.0, step)
    w.close()
    s = read_scalars(tmp_path, prefix="loss/")
    assert list(s) == ["G"]
    assert [p[0] for p in s["G"]] == [1, 2, 3]
    assert math.isclose(s["G"][2][1], 1 / 3, rel_tol=1e-6)
    assert read_scalars(tmp_path / "missing") == {}


def test_report_writes_page_and_images(tmp_path: Path) -> None:
    rep = Report(tmp_path / "rep", title="T <1>")
    rep.heading("Grids")
    vis = {"real": torch.zeros(3, 3, 8, 8), "fake": torch.ones(2, 3, 8, 8)}
    grid = rep.grid(vis, "grid one", caption="test")
    single = rep.image(torch.full((3, 4, 6), -1.0), "single")
    copied = rep.image(single, "copy")
    rep.table(["metric", "value"], [["acc", 0.25]])
    rep.curves(
        {"G": [(1, 2.0), (2, 1.0)], "D": [(1, 1.0), (2, 1.5)]}, groups={"losses": ["G", "D"]}
    )
    page = rep.write()

    text = page.read_text()
    assert page.name == "index.html"
    assert "T &lt;1&gt;" in text
    for p in (grid, single, copied):
        assert p.parent == page.parent and p.is_file()
        assert f'src="{p.name}"' in text
    assert grid.name == "grid_one.png"
    assert "rows, top to bottom: real, fake" in text
    with Image.open(grid) as im:  # 3 columns of 8 px with 2 px padding, 2 rows
        assert im.size == (3 * 8 + 4 * 2, 2 * 8 + 3 * 2)
    with Image.open(single) as im:
        assert im.size == (6, 4) and im.getpixel((0, 0)) == (0, 0, 0)
    assert "<td>0.250</td>" in text
    assert text.count("<svg") == 1 and text.count("<polyline") == 2


def test_line_chart_smoothing_and_thinning() -> None:
    pts = [(i, float(i % 2)) for i in range(1000)]  # alternating 0, 1
    svg = line_chart_svg({"a": pts}, smooth=0.9, max_points=50)
    lines = re.findall(r'<polyline[^>]*points="([^"]+)"', svg)
    assert len(lines) == 2 and 'stroke-opacity="0.25"' in svg  # raw (faint) + EMA
    raw, ema = ([tuple(map(float, p.split(","))) for p in line.split()] for line in lines)
    assert len(raw) == len(ema) == 50
    # the raw series spans the whole height, the EMA of 0/1 stays near the middle
    raw_span = max(y for _, y in raw) - min(y for _, y in raw)
    ema_span = max(y for _, y in ema[10:]) - min(y for _, y in ema[10:])
    assert ema_span < 0.3 * raw_span
