from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from spap.apps.demo import MARKER, PARTS, _prepare_out, plan_demo
from spap.cli import main
from spap.errors import SpapError


def test_plan_scales_with_budget_and_size() -> None:
    small, large = plan_demo(0.2, 32), plan_demo(5, 64)
    assert (small.n_train, small.n_test) == (48, 16)
    assert large.n_train == 300 and large.n_test == 50
    assert plan_demo(100, 64).n_train == 400
    for bad in ((0, 64), (1, 30), (1, 66), (1, 512)):
        with pytest.raises(SpapError):
            plan_demo(*bad)


def test_refuses_a_foreign_non_empty_folder(tmp_path: Path, capsys) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--minutes", "0.1", "--size", "32", "--out", str(tmp_path)]) == 2
    assert "holds no earlier demo" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_prepare_out_refreshes_an_earlier_demo(tmp_path: Path) -> None:
    (tmp_path / MARKER).write_text("{}")
    for part in PARTS:
        (tmp_path / part).mkdir()
        (tmp_path / part / "old.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("mine")
    _prepare_out(tmp_path)
    assert not any((tmp_path / p).exists() for p in PARTS)
    assert (tmp_path / "notes.txt").is_file()  # only the demo's own parts are replaced
    _prepare_out(tmp_path / "new" / "folder")
    assert (tmp_path / "new" / "folder").is_dir()


def _numbers_in_table(html: str) -> list[float]:
    table = html[html.index("<table>") : html.index("</table>")]
    return [float(x) for x in re.findall(r"<td>(-?\d+\.\d+)</td>", table)]


def test_demo_tiny_budget_writes_every_part(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    argv = ["demo", "--minutes", "0.2", "--size", "32", "--out", str(out), "--threads", "1"]
    assert main(argv) == 0
    assert torch.get_num_threads() == threads  # restored
    report = out / "report"
    index = report / "index.html"
    assert f"report: {index}" in capsys.readouterr().out
    html = index.read_text()

    # grids, attention overlays, and every image the page links exists next to it
    linked = re.findall(r'<img src="([^"]+)"', html)
    for name in ("labels_to_photo.png", "photo_to_labels.png"):
        assert name in linked
    assert any(n.startswith("attention_G_A") for n in linked)
    assert any(n.startswith("attention_G_B") for n in linked)
    assert all((report / n).is_file() for n in linked)
    assert re.search(r"rows, top to bottom: labels \(input\), G_A \w+_\d", html)

    # loss curves: inline SVG with a line per loss
    assert html.count("<svg") >= 3 and "<polyline" in html
    for loss in ("D_A", "G_A", "cycle_A"):
        assert f">{loss}<" in html

    # metric table: 3 rows x 3 scores, all in [0, 1]
    values = _numbers_in_table(html)
    assert len(values) == 9 and all(0.0 <= v <= 1.0 for v in values)

    metrics = json.loads((report / "metrics.json").read_text())
    for key in ("photo2labels", "labels2photo", "real_photo"):
        for m in ("pixel_acc", "class_acc", "class_iou"):
            v = metrics[key][m]
            assert 0.0 <= v <= 1.0 and not math.isnan(v)
    assert metrics["info"]["cyclegan_steps"] >= 4
    assert metrics["config"]["model"]["attention"] == "spap"
    assert (out / "run" / "checkpoints").is_dir() and (out / MARKER).is_file()
