"""``spap app``: the Gradio demo (its functions, a Space folder, and the page in a real
headless Chromium)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "inference"))
from test_translate import write_checkpoint  # noqa: E402

from spap.cli import main as cli  # noqa: E402

pytest.importorskip("gradio")

SPAP_MODEL = {
    "attention": "spap",
    "g_attention_at": ["down:0", "trunk_end"],
    "g_attention_options": {"rates": [0, 1]},
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_checkpoint(
        tmp_path_factory.mktemp("run") / "checkpoints" / "step_0000001.pt", SPAP_MODEL, gamma=0.25
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "street.png"
    from spap.data.scenes import render_scene

    labels, _, _ = render_scene(3, 64)
    Image.fromarray(labels[:60, :52]).save(path)  # 52x60: padded inside, cropped back
    return path


def spap_translate(ckpt: Path, image: Path, out: Path, direction: str) -> np.ndarray:
    args = ["translate", "--checkpoint", str(ckpt), "--input", str(image), "--output", str(out)]
    assert cli([*args, "--direction", direction, "--device", "cpu"]) == 0
    return np.asarray(Image.open(out / f"{image.stem}.png"))


def test_translate_equals_spap_translate(ckpt: Path, image: Path, tmp_path: Path) -> None:
    from spap.apps.app import SpapApp

    app = SpapApp(ckpt, device="cpu")
    assert "AtoB: down_0 (gamma 0.250), block_1 (gamma 0.250)" in app.describe()
    png, gallery, download = app.translate(str(image), "BtoA")
    assert png == download
    want = spap_translate(ckpt, image, tmp_path / "cli", "BtoA")
    got = np.asarray(Image.open(png))
    assert got.shape == (60, 52, 3) and np.array_equal(got, want)
    captions = [c for _, c in gallery]
    assert captions == [
        "block_1, fuse step 0 (gamma 0.250)",
        "down_0, fuse step 0 (gamma 0.250)",
    ]
    for path, _ in gallery:
        with Image.open(path) as im:
            assert im.size == (52, 60)


def test_sampler_app(tmp_path: Path) -> None:
    from spap.apps.app import SpapApp
    from spap.config import from_dict, to_dict
    from spap.inference.sample import Sampler
    from spap.systems.gan import GANConfig, build_networks
    from spap.train.checkpoint import FORMAT, VERSION, save_checkpoint

    model = {"resolution": 32, "z_dim": 8, "g_ch": 2, "d_ch": 2, "g_attention": {16: "spap"}}
    cfg = from_dict(
        GANConfig, {"data": {"size": 32}, "model": {**model, "spap_options": {"rates": [0, 1]}}}
    )
    nets = build_networks(cfg.model)
    g = nets["G"].state_dict()
    state = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "gan",
        "config": to_dict(cfg),
        "step": 3,
        "epoch": 0,
        "position": 0,
        "runner": {},
        "task": {
            "models": {
                "G": g,
                "G_ema": {k: v.clone() for k, v in g.items()},
                "D": nets["D"].state_dict(),
            }
        },
    }
    ck = save_checkpoint(state, tmp_path / "gan" / "step_0000003.pt")
    app = SpapApp(ck, device="cpu")
    png, gallery, _ = app.sample(7)
    want = Sampler.from_checkpoint(ck, device="cpu").sample(1, seed=7)[0]
    want = ((want.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(png)), want)
    assert gallery and all("gamma" in c for _, c in gallery)


def test_space_folder(ckpt: Path, tmp_path: Path, capsys) -> None:
    space = tmp_path / "space"
    assert cli(["app", "--checkpoint", str(ckpt), "--space", str(space)]) == 0
    assert "wrote the Space" in capsys.readouterr().out
    names = {p.name for p in space.iterdir()}
    assert {"app.py", "requirements.txt", "README.md", "model", "spap"} <= names
    front = yaml.safe_load((space / "README.md").read_text().split("---\n")[1])
    import gradio

    assert front["sdk"] == "gradio" and front["sdk_version"] == gradio.__version__
    assert front["app_file"] == "app.py"
    reqs = (space / "requirements.txt").read_text().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in reqs and all("==" in r for r in reqs)
    compile((space / "app.py").read_text(), "app.py", "exec")
    assert (space / "model" / "config.json").is_file() and (
        space / "spap" / "apps" / "app.py"
    ).is_file()
    assert not list(space.rglob("__pycache__"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert cli(["app", "--checkpoint", str(ckpt), "--space", str(tmp_path / "busy")]) == 2
    assert "holding other files" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(cmd: list[str], port: int, cwd: Path | None = None, env: dict | None = None):
    """Start a server process and wait until it answers on ``port``."""
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        **(env or {}),
    }
    log = Path(tempfile.mkdtemp()) / "app.log"
    with open(log, "wb") as fh:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the app exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("the app did not answer within 240 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_space_app_serves(ckpt: Path, tmp_path: Path) -> None:
    """The Space's own app.py runs from its folder, with its copy of spap."""
    space = tmp_path / "space"
    assert cli(["app", "--checkpoint", str(ckpt), "--space", str(space)]) == 0
    port = free_port()
    env = {"GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1", "PYTHONPATH": ""}
    proc = serve([sys.executable, "app.py"], port, cwd=space, env=env)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10) as r:
            assert b"spap-input" in r.read()
    finally:
        stop(proc)


@pytest.mark.slow
def test_in_a_browser(browser, ckpt: Path, image: Path, tmp_path: Path) -> None:
    """Upload a file in headless Chromium, translate, download: the PNG equals what
    ``spap translate`` writes for that file; a screenshot is kept in $SPAP_TEST_ARTIFACTS."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    artifacts = Path(os.environ.get("SPAP_TEST_ARTIFACTS") or tmp_path / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "spap.cli", "app", "--checkpoint", str(ckpt)]
    proc = serve([*cmd, "--port", str(port), "--device", "cpu"], port)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 120)
        upload = wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#spap-input input[type=file]")
        )
        upload.send_keys(str(image))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#spap-input img"))
        browser.find_element(
            By.XPATH, "//*[@id='spap-direction']//label[contains(., 'BtoA')]"
        ).click()
        browser.find_element(By.CSS_SELECTOR, "#spap-run").click()
        link = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#spap-download a[href]"))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#spap-attention img")) == 2)
        captions = browser.find_element(By.CSS_SELECTOR, "#spap-attention").text
        assert "down_0, fuse step 0 (gamma 0.250)" in captions
        assert "block_1, fuse step 0 (gamma 0.250)" in captions
        browser.save_screenshot(str(artifacts / "spap_app.png"))
        with urllib.request.urlopen(link.get_attribute("href"), timeout=30) as r:
            got = np.asarray(Image.open(io.BytesIO(r.read())))
    finally:
        stop(proc)
    want = spap_translate(ckpt, image, tmp_path / "cli", "BtoA")
    assert got.shape == want.shape == (60, 52, 3)
    assert np.abs(got.astype(int) - want).max() == 0  # the same file spap translate writes
    assert (artifacts / "spap_app.png").stat().st_size > 10_000
