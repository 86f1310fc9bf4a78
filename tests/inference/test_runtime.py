"""ONNX Runtime as the generator's runtime (spap.inference.runtime): images within 1 grey
level of PyTorch's (padding, cropping, batching), one export cached beside the checkpoint
and reused, the user cache where that folder cannot be written, PyTorch where onnxruntime
or the exporter is missing, attention maps from PyTorch, and the ``--runtime`` flag."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spap.cli import main as cli
from spap.config import from_dict
from spap.errors import SpapError
from spap.inference import runtime
from spap.inference.pretrained import save_pretrained
from spap.inference.runtime import OnnxGenerator, cache_dir, onnx_generator
from spap.inference.sample import Sampler
from spap.inference.translate import Translator
from spap.systems.gan import GANConfig, apply_size, build_networks

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _helpers():
    spec = importlib.util.spec_from_file_location(
        "_translate_tests", Path(__file__).with_name("test_translate.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


H = _helpers()


@pytest.fixture(autouse=True)
def _user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own user cache folder (never ~/.cache)."""
    folder = tmp_path / "user-cache"
    monkeypatch.setenv("SPAP_CACHE_DIR", str(folder))
    return folder / "onnx"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    return H.write_checkpoint(run / "checkpoints" / "step_0000001.pt", H.SPAP)


@pytest.fixture(scope="module")
def ort(ckpt: Path) -> Translator:
    return Translator.from_checkpoint(ckpt, device="cpu", runtime="onnxruntime")


@pytest.fixture(scope="module")
def eager(ckpt: Path) -> Translator:
    return Translator.from_checkpoint(ckpt, device="cpu")


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


@pytest.mark.slow
def test_folder_within_one_grey_level_of_pytorch(
    ckpt: Path, ort: Translator, eager: Translator, tmp_path: Path
) -> None:
    """Odd sizes (padded to multiples of 4 and cropped back), an image smaller than the
    generator's minimum, batches of 2 of equal-size images, unreadable files skipped."""
    src = tmp_path / "in"
    H.image_folder(src)
    a = eager.translate_folder(src, tmp_path / "eager", batch_size=2)
    b = ort.translate_folder(src, tmp_path / "ort", batch_size=2)
    assert (a.written, sorted(a.skipped)) == (b.written, sorted(b.skipped))
    assert a.written == 8
    outputs = sorted(p.relative_to(tmp_path / "eager") for p in (tmp_path / "eager").rglob("*.png"))
    assert outputs == sorted(
        p.relative_to(tmp_path / "ort") for p in (tmp_path / "ort").rglob("*.png")
    )
    worst = 0
    for rel in outputs:
        x, y = _pixels(tmp_path / "eager" / rel), _pixels(tmp_path / "ort" / rel)
        assert x.shape == y.shape
        worst = max(worst, int(np.abs(x - y).max()))
    assert worst <= 1
    assert isinstance(ort._engines["AtoB"], OnnxGenerator)
    assert ort.runtime == "onnxruntime" and "runtime=onnxruntime" in repr(ort)
    cached = list(cache_dir(ckpt).glob("*-AtoB.onnx"))
    assert len(cached) == 1 and cached[0].parent == ckpt.with_name(ckpt.name + ".onnx-cache")


@pytest.mark.slow
def test_tensors_batch_and_crop_like_pytorch(ort: Translator, eager: Translator) -> None:
    x = torch.rand(3, 3, 22, 30) * 2 - 1
    y = ort.translate(x)
    assert y.shape == (3, 3, 22, 30)
    assert (y - eager.translate(x)).abs().max() <= 1e-4
    one = ort.translate(x[0])
    assert one.shape == (3, 22, 30) and (one - y[0]).abs().max() <= 1e-4


@pytest.mark.slow
def test_attention_maps_come_from_pytorch(ort: Translator, eager: Translator, caplog) -> None:
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with caplog.at_level(logging.INFO, logger="spap.inference.translate"):
        y, maps = ort.translate_with_attention(x)
        ort.translate_with_attention(x)
    notes = [r for r in caplog.records if "ONNX Runtime does not expose" in r.getMessage()]
    assert len(notes) <= 1  # one line per translator (none if an earlier test said it)
    y_ref, maps_ref = eager.translate_with_attention(x)
    assert maps.keys() == maps_ref.keys() and maps
    assert (y - y_ref).abs().max() <= 1e-4


def _no_export(*args, **kwargs):
    raise AssertionError("exported again")


def _exported(ort: Translator, ckpt: Path) -> Path:
    """The export of the module's checkpoint (made by ``ort`` on first use)."""
    ort.translate(torch.zeros(1, 3, 8, 8))
    (cached,) = Path(str(ckpt) + ".onnx-cache").glob("*-AtoB.onnx")
    return cached


@pytest.mark.slow
def test_export_cached_once_and_reused(
    ckpt: Path, ort: Translator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """A second translator of the same weights (here: a copy of the checkpoint, with its
    cache) loads the cached file without exporting; a damaged one is exported again."""
    cached = _exported(ort, ckpt)
    own = shutil.copy(ckpt, tmp_path / "step_0000001.pt")
    folder = Path(str(own) + ".onnx-cache")
    shutil.copytree(cached.parent, folder)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    first = ort.translate(x)
    monkeypatch.setattr(runtime, "write_onnx", _no_export)
    again = Translator.from_checkpoint(own, device="cpu", runtime="onnxruntime").translate(x)
    assert torch.equal(first, again)
    monkeypatch.undo()
    monkeypatch.setenv("SPAP_CACHE_DIR", str(tmp_path / "user-cache"))

    (copy,) = folder.glob("*.onnx")
    copy.write_bytes(copy.read_bytes()[:1000])  # damaged
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="spap.inference.runtime"):
        fixed = Translator.from_checkpoint(own, device="cpu", runtime="onnxruntime").translate(x)
    assert any("cannot be used" in r.getMessage() for r in caplog.records)
    assert sum("exporting the AtoB generator" in r.getMessage() for r in caplog.records) == 1
    assert (fixed - first).abs().max() <= 1e-6
    assert [p.name for p in folder.iterdir()] == [copy.name]  # no temporary file left


@pytest.mark.slow
def test_user_cache_when_the_checkpoint_folder_is_not_writable(
    ckpt: Path, ort: Translator, tmp_path: Path, _user_cache: Path, monkeypatch
) -> None:
    """A file where the cache folder would go (a real mkdir failure): exports are cached in
    $SPAP_CACHE_DIR/onnx instead (here holding a copy of the export, so none is made)."""
    cached = _exported(ort, ckpt)
    own = Path(shutil.copy(ckpt, tmp_path / "step_0000001.pt"))
    Path(str(own) + ".onnx-cache").write_text("in the way")
    assert cache_dir(own) == _user_cache
    shutil.copy(cached, _user_cache / cached.name)
    monkeypatch.setattr(runtime, "write_onnx", _no_export)
    t = Translator.from_checkpoint(own, device="cpu", runtime="onnxruntime")
    x = torch.rand(1, 3, 12, 8) * 2 - 1
    assert torch.equal(t.translate(x), ort.translate(x))
    assert t._engines["AtoB"].path == _user_cache / cached.name


def test_read_only_mount_uses_the_user_cache(ckpt: Path, tmp_path: Path, _user_cache: Path) -> None:
    """A checkpoint on a read-only filesystem (a tmpfs remounted read-only)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)]
    if shutil.which("mount") is None or subprocess.run(cmd, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        own = Path(shutil.copy(ckpt, mnt / "step_0000001.pt"))
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        assert cache_dir(own) == _user_cache
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_no_writable_cache_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("SPAP_CACHE_DIR", str(tmp_path / "file"))
    with pytest.raises(SpapError, match="cannot write the ONNX Runtime cache folder"):
        cache_dir(None)


def test_pytorch_where_onnxruntime_is_missing(
    eager: Translator, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    with caplog.at_level(logging.INFO, logger="spap.inference.runtime"):
        t = Translator(eager.generators, "cpu", runtime="onnxruntime")
    assert t.runtime == "torch"
    (line,) = [r.getMessage() for r in caplog.records]
    assert "onnxruntime is not installed" in line and "spap[export]" in line
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    assert torch.equal(t.translate(x), eager.translate(x))


def test_pytorch_where_the_exporter_is_missing(
    eager: Translator, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    g = eager.generator("AtoB")
    with caplog.at_level(logging.INFO, logger="spap.inference.runtime"):
        engine = onnx_generator(g, "AtoB", source=None)
    assert engine is g
    assert any("onnxscript is not installed" in r.getMessage() for r in caplog.records)


def test_bad_runtime_and_cuda_refused(eager: Translator) -> None:
    with pytest.raises(SpapError, match="runtime must be one of torch, onnxruntime"):
        Translator(eager.generators, "cpu", runtime="tensorrt")
    with pytest.raises(SpapError, match="runs on the CPU"):
        Translator(eager.generators, "cuda", runtime="onnxruntime")


@pytest.mark.slow
def test_sampler_within_one_grey_level(tmp_path: Path) -> None:
    model = {
        "resolution": 32,
        "z_dim": 8,
        "g_ch": 2,
        "d_ch": 2,
        "g_attention": {8: "sagan", 16: "spap"},
        "spap_options": {"rates": [0, 1, 2]},
    }
    data = {"model": model}
    apply_size(data, 32)
    cfg = from_dict(GANConfig, data)
    torch.manual_seed(0)
    g = build_networks(cfg.model)["G"].eval()
    eager = Sampler(g, "cpu")
    ort = Sampler(g, "cpu", runtime="onnxruntime")
    assert (
        ort.sample(5, seed=3, batch_size=2) - eager.sample(5, seed=3, batch_size=2)
    ).abs().max() <= 1e-4
    eager.write(tmp_path / "eager", num=3, batch_size=2)
    ort.write(tmp_path / "ort", num=3, batch_size=2)
    for name in ("000000.png", "000001.png", "000002.png"):
        diff = np.abs(_pixels(tmp_path / "eager" / name) - _pixels(tmp_path / "ort" / name))
        assert diff.max() <= 1
    for p in g.parameters():  # the sampler's own module is untouched by the export
        assert p.device.type == "cpu"
    assert "runtime=onnxruntime" in repr(ort)


@pytest.mark.slow
def test_cli_translate_runtime(ckpt: Path, tmp_path: Path, caplog) -> None:
    src = tmp_path / "in"
    H.image_folder(src)
    base = ["translate", "--checkpoint", str(ckpt), "--input", str(src), "--batch-size", "2"]
    assert cli([*base, "--output", str(tmp_path / "eager")]) == 0
    with caplog.at_level(logging.INFO):
        code = cli(
            [*base, "--output", str(tmp_path / "ort"), "--runtime", "onnxruntime", "--attention"]
        )
    assert code == 0
    assert any("ONNX Runtime does not expose" in r.getMessage() for r in caplog.records)
    for p in (tmp_path / "eager").glob("*.png"):
        assert np.abs(_pixels(p) - _pixels(tmp_path / "ort" / p.name)).max() <= 1
    assert list((tmp_path / "ort" / "attention").glob("*.png"))


@pytest.mark.slow
def test_one_onnx_writer_for_export_and_cache(ckpt: Path, ort: Translator, tmp_path: Path) -> None:
    """``spap export --format onnx`` and the runtime cache go through one writer
    (``write_onnx``): for the same generator and trace input (16x16, the same seed) they
    write the same bytes."""
    cached = _exported(ort, ckpt)
    out = tmp_path / "g.onnx"
    assert cli(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--output", str(out),
                "--size", "16"]) == 0  # fmt: skip
    assert out.read_bytes() == cached.read_bytes()


@pytest.mark.slow
def test_a_model_folder_caches_beside_itself(
    ckpt: Path, eager: Translator, tmp_path: Path, _user_cache: Path
) -> None:
    """A Hugging Face folder: the export goes to ``<folder>.onnx-cache`` beside it, nothing
    is written into the folder (it is what ``spap push`` uploads), the user cache stays
    empty."""
    folder = save_pretrained(ckpt, tmp_path / "hf").path
    before = sorted(p.name for p in folder.iterdir())
    t = Translator.from_pretrained(folder, device="cpu", runtime="onnxruntime")
    x = torch.rand(2, 3, 18, 26) * 2 - 1
    assert (t.translate(x) - eager.translate(x)).abs().max() <= 1e-4
    assert isinstance(t._engines["AtoB"], OnnxGenerator)
    (cached,) = (tmp_path / "hf.onnx-cache").iterdir()
    assert cached.name.endswith("-AtoB.onnx") and t._engines["AtoB"].path == cached
    assert sorted(p.name for p in folder.iterdir()) == before
    assert not _user_cache.exists() or not list(_user_cache.iterdir())


def test_hub_snapshots_cache_in_the_user_cache(
    ckpt: Path, tmp_path: Path, _user_cache: Path
) -> None:
    """A folder inside huggingface_hub's cache (``models--u--m/snapshots/REV``) belongs to
    huggingface_hub: its exports go to the user cache."""
    folder = save_pretrained(ckpt, tmp_path / "hf").path
    snap = tmp_path / "hub" / "models--u--m" / "snapshots" / "0123abcd"
    shutil.copytree(folder, snap)
    assert cache_dir(snap) == _user_cache
    assert cache_dir(folder) == tmp_path / "hf.onnx-cache"
    assert cache_dir(tmp_path / "hub") == _user_cache  # any other folder: no file to sit beside
