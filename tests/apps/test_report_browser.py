"""``spap report`` on a CycleGAN run and a GAN run, loaded in a real headless Chromium
(the system's package, driven by Selenium): no console error, every image loaded, a
screenshot kept under ``$SPAP_TEST_ARTIFACTS`` (default: the test's tmp folder)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from spap.cli import main as cli
from train.runs import train_cyclegan, train_gan, write_folder, write_unpaired


def _check_in_browser(driver: Any, index: Path, tmp_path: Path, name: str) -> None:
    driver.get(index.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
    )
    assert len(images) >= 3
    missing = [src for src, done, w in images if not (done and w > 0)]
    assert not missing, f"images not loaded: {missing}"
    assert driver.find_elements("css selector", "svg polyline"), "no curve drawn"
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    out = Path(os.environ.get("SPAP_TEST_ARTIFACTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    shot = out / f"report_{name}.png"
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1200, min(int(height) + 40, 6000))
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 1000


@pytest.mark.slow
def test_cyclegan_report_in_chromium(browser, tmp_path) -> None:
    data = write_unpaired(tmp_path / "data")
    run = tmp_path / "run"
    assert train_cyclegan(data, run, 4, "run.eval_every=2", "run.eval_images=4") == 0
    assert cli(["report", str(run)]) == 0
    index = run / "report" / "index.html"
    text = index.read_text()
    for needed in (
        "Evaluation",
        "best: step",
        "gamma of every unit",
        "step 1: rate 1 enters",
        "Resolved config",
    ):
        assert needed in text, needed
    assert "colour_scale.png" in text and "iteration" in text
    _check_in_browser(browser, index, tmp_path, "cyclegan")


@pytest.mark.slow
def test_gan_report_in_chromium(browser, tmp_path) -> None:
    images = write_folder(tmp_path / "img")
    run = tmp_path / "g"
    assert train_gan(images, run, 2) == 0
    assert cli(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    index = tmp_path / "rep" / "index.html"
    text = index.read_text()
    assert "Samples (EMA generator)" in text and "gamma of every unit" in text
    _check_in_browser(browser, index, tmp_path, "gan")
