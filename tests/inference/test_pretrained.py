"""The Hugging Face layout: save_pretrained / from_pretrained (generators and the SPAP unit),
``spap export --format huggingface``, ``hf://`` ids offline, ``spap push`` up to the upload."""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_translate import write_checkpoint

from spap import SPAP
from spap.cli import main as cli
from spap.errors import CheckpointError, ConfigError, SpapError
from spap.inference import load
from spap.inference.loading import load_generators, read_safetensors
from spap.inference.pretrained import push_to_hub, save_pretrained
from spap.inference.sample import Sampler
from spap.inference.translate import Translator
from spap.layers import LayerFactory

TINY = [
    "run.device=cpu",
    "run.num_workers=0",
    "model.ngf=4",
    "model.ndf=4",
    "model.n_blocks=1",
    "model.attention=spap",
    "model.g_attention_at=[trunk_end]",
    "model.g_attention_options={rates: [0, 1]}",
    "train.n_epochs=1",
    "train.n_epochs_decay=1",
    "train.pool_size=2",
    "train.num_visuals=2",
    "run.sample_every=100",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A CycleGAN trained for 2 steps on a small dataset with test images, and a metrics
    file in its run folder."""
    base = tmp_path_factory.mktemp("hf")
    data = base / "data"
    rng = np.random.default_rng(0)
    for folder in ("trainA", "trainB", "testA", "testB"):
        (data / folder).mkdir(parents=True)
        for i in range(3):
            arr = rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)
            Image.fromarray(arr).save(data / folder / f"{i}.png")
    out = base / "run"
    args = ["train", "cyclegan", "--data", str(data), "--out", str(out), "--size", "32"]
    assert cli([*args, "--steps", "2", "--seed", "1", *TINY]) == 0
    (out / "metrics.json").write_text(json.dumps({"fid": 123.4, "fcn": {"per_pixel_acc": 0.5}}))
    return out


def card_metadata(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_save_load_round_trip(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "facades-spap"
    result = save_pretrained(run, out)
    assert result.max_abs_diff == 0.0 and result.generators == ["AtoB", "BtoA"]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["README.md", "attention.png", "config.json", "model.safetensors", "samples.png"]
    )
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "spap-pretrained" and config["kind"] == "cyclegan"
    assert config["step"] == 2 and config["crop_size"] == 32
    assert config["generators"] == {
        "AtoB": {"input_nc": 3, "output_nc": 3},
        "BtoA": {"input_nc": 3, "output_nc": 3},
    }
    assert config["model"]["g_attention_at"] == ["trunk_end"] and config["model"]["ngf"] == 4
    assert config["metrics"] == {"fid": 123.4, "fcn": {"per_pixel_acc": 0.5}}
    assert set(config["units"]["AtoB"]) == {"block_0"}
    assert config["card"]["examples"] == "test images of the run's dataset"

    # outputs identical, through every way of loading the folder
    x = torch.rand(2, 3, 36, 44) * 2 - 1
    original = Translator.from_checkpoint(run, device="cpu")
    for model in (Translator.from_pretrained(out, device="cpu"), load(out, device="cpu")):
        for d in ("AtoB", "BtoA"):
            assert torch.equal(model.translate(x, d), original.translate(x, d))
    assert load_generators(out / "model.safetensors").source == str(out)

    # the card: metadata block, metrics, grids, the snippet
    meta = card_metadata(out)
    assert meta["library_name"] == "spap" and meta["license"] == "mit"
    assert meta["pipeline_tag"] == "image-to-image"
    assert {"spap", "cyclegan", "image-to-image"} <= set(meta["tags"])
    card = (out / "README.md").read_text()
    assert "| fid | 123.4 |" in card and "| fcn.per_pixel_acc | 0.5 |" in card
    assert "![samples](samples.png)" in card and "![attention](attention.png)" in card
    assert f'Translator.from_pretrained("{out}")' in card
    gamma = float(original.generator("AtoB").attention["block_0"].gamma)
    assert f"| AtoB | block_0 | SPAP | {gamma:.4g} |" in card
    with Image.open(out / "samples.png") as im:  # rows: input A, output, input B, output
        assert im.size == (3 * 32 + 4 * 2, 4 * 32 + 5 * 2)
    huggingface_hub = pytest.importorskip("huggingface_hub")
    parsed = huggingface_hub.ModelCard.load(out / "README.md")
    assert parsed.data.library_name == "spap" and parsed.data.pipeline_tag == "image-to-image"


def test_translator_save_pretrained_leaves_the_model_alone(tmp_path: Path) -> None:
    ck = write_checkpoint(
        tmp_path / "ck" / "step_0000001.pt",
        {
            "attention": "spap",
            "g_attention_at": ["down:0"],
            "g_attention_options": {"rates": [0, 1]},
        },
    )
    t = Translator.from_checkpoint(ck, device="cpu")
    before = {k: v.clone() for k, v in t.generator("AtoB").state_dict().items()}
    result = t.save_pretrained(tmp_path / "out", metrics={"psnr": 20.5}, license="apache-2.0")
    assert result.metrics == {"psnr": 20.5}
    after = t.generator("AtoB").state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in after)
    assert card_metadata(tmp_path / "out")["license"] == "apache-2.0"
    # scenes stand in for a dataset that is not on disk
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "street scenes" in config["card"]["examples"]
    same = Translator.from_pretrained(tmp_path / "out", device="cpu")
    assert same.info["metrics"] == {"psnr": 20.5} and same.source == str(tmp_path / "out")
    x = torch.rand(2, 3, 20, 28) * 2 - 1
    for d in ("AtoB", "BtoA"):
        assert torch.equal(same.translate(x, d), t.translate(x, d))
    with pytest.raises(CheckpointError, match="holds a 'cyclegan' model, but a 'gan' model"):
        Sampler.from_pretrained(tmp_path / "out", device="cpu")


@pytest.fixture(scope="module")
def gan_ckpt(tmp_path_factory) -> Path:
    """A GAN checkpoint (step 5) with a SPAP unit, its EMA generator different from the raw
    one."""
    from spap.config import from_dict, to_dict
    from spap.systems.gan import GANConfig, build_networks
    from spap.train.checkpoint import FORMAT, VERSION, save_checkpoint

    cfg = from_dict(
        GANConfig,
        {
            "data": {"size": 32},
            "model": {
                "resolution": 32,
                "z_dim": 8,
                "g_ch": 2,
                "d_ch": 2,
                "g_attention": {16: "spap"},
                "spap_options": {"rates": [0, 1]},
            },
        },
    )
    torch.manual_seed(0)
    nets = build_networks(cfg.model)
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in nets["G"].state_dict().items()}
    state = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "gan",
        "config": to_dict(cfg),
        "step": 5,
        "epoch": 0,
        "position": 0,
        "runner": {},
        "task": {
            "models": {"G": nets["G"].state_dict(), "G_ema": ema, "D": nets["D"].state_dict()}
        },
        "monitor": {"best": {"metric": "fid", "value": 55.5, "step": 4, "file": ""}},
    }
    return save_checkpoint(state, tmp_path_factory.mktemp("gan") / "step_0000005.pt")


def test_gan_round_trip(gan_ckpt: Path, tmp_path: Path) -> None:
    ck = gan_ckpt
    out = tmp_path / "gan-hf"
    assert (
        cli(["export", "--checkpoint", str(ck), "--format", "huggingface", "--output", str(out)])
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "gan" and config["generators"] == {"G": {}} and config["ema"]
    # no metrics file: the card has the checkpoint's in-training validation
    assert config["metrics"] == {"validation_during_training": {"best_fid": 55.5, "best_step": 4}}
    card = (out / "README.md").read_text()
    assert "| validation_during_training.best_fid | 55.5 |" in card
    assert "these weights are those of step 5" in card
    meta = card_metadata(out)
    assert meta["pipeline_tag"] == "unconditional-image-generation"
    a, b = Sampler.from_checkpoint(ck, device="cpu"), load(out, device="cpu")
    assert isinstance(b, Sampler) and b.step == 5
    assert torch.allclose(a.sample(4, seed=3), b.sample(4, seed=3), atol=1e-5)
    with Image.open(out / "samples.png") as im:  # 16 samples: 2 rows of 8
        assert im.size == (8 * 32 + 9 * 2, 2 * 32 + 3 * 2)


def test_sampler_save_and_from_pretrained(gan_ckpt: Path, tmp_path: Path, capsys) -> None:
    """``Sampler.save_pretrained`` / ``Sampler.from_pretrained``: identical images, the
    folder's metrics kept when it is saved again, raw weights saved as raw, and a folder of
    EMA weights refusing ``--no-ema`` in one line."""
    s = Sampler.from_checkpoint(gan_ckpt, device="cpu")
    result = s.save_pretrained(tmp_path / "gan", metrics={"fid": 40.5})
    assert (result.kind, result.generators, result.max_abs_diff) == ("gan", ["G"], 0.0)
    same = Sampler.from_pretrained(tmp_path / "gan", device="cpu")
    assert same.step == 5 and same.ema and same.source == str(tmp_path / "gan")
    assert torch.equal(same.sample(6, seed=2, batch_size=4), s.sample(6, seed=2, batch_size=4))
    again = same.save_pretrained(tmp_path / "again")
    assert again.metrics == {"fid": 40.5}
    digests = [
        read_safetensors(tmp_path / f / "model.safetensors")[0]["sha256"] for f in ("gan", "again")
    ]
    assert digests[0] == digests[1]  # the same tensors, bit for bit

    raw = Sampler.from_checkpoint(gan_ckpt, device="cpu", ema=False)
    raw.save_pretrained(tmp_path / "raw")
    r = Sampler.from_pretrained(tmp_path / "raw", device="cpu")
    assert not r.ema and torch.equal(r.sample(2, seed=1), raw.sample(2, seed=1))
    assert not torch.equal(r.sample(2, seed=1), same.sample(2, seed=1))
    assert not json.loads((tmp_path / "raw" / "config.json").read_text())["ema"]

    out = tmp_path / "s"
    args = ["sample", "--checkpoint", str(tmp_path / "gan"), "--num", "1", "--output", str(out)]
    assert cli([*args, "--device", "cpu", "--no-ema"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds the EMA generator only" in err[0]
    with pytest.raises(CheckpointError, match="holds a 'gan' model, but a 'cyclegan' model"):
        Translator.from_pretrained(tmp_path / "gan", device="cpu")


def test_every_checkpoint_option_takes_the_folder(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "hf"
    assert (
        cli(["export", "--checkpoint", str(run), "--format", "huggingface", "--output", str(out)])
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    img = tmp_path / "in" / "a.png"
    img.parent.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 26, 3), np.uint8)).save(img)
    for ck, dst in ((run, "from_run"), (out, "from_folder")):
        assert (
            cli(
                [
                    "translate",
                    "--checkpoint",
                    str(ck),
                    "--input",
                    str(img),
                    "--output",
                    str(tmp_path / dst),
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    a = np.asarray(Image.open(tmp_path / "from_run" / "a.png"))
    b = np.asarray(Image.open(tmp_path / "from_folder" / "a.png"))
    assert np.array_equal(a, b)


def test_damaged_folders_fail_in_one_line(run: Path, tmp_path: Path, capsys) -> None:
    out = save_pretrained(run, tmp_path / "hf").path
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    args = ["translate", "--input", str(img), "--output", str(tmp_path / "o"), "--device", "cpu"]

    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # one flipped bit in a weight
    weights.write_bytes(bytes(data))
    assert cli([*args, "--checkpoint", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "digest mismatch" in err and len(err.splitlines()) == 1

    save_pretrained(run, out)
    (out / "config.json").write_text("{not json")
    assert cli([*args, "--checkpoint", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.json: not readable JSON" in err and len(err.splitlines()) == 1

    (out / "config.json").write_text(json.dumps({"format": "spap-pretrained", "kind": "gan"}))
    with pytest.raises(CheckpointError, match="names no generator"):
        load_generators(out)
    with pytest.raises(SpapError, match="is a file"):
        save_pretrained(run, img)


def hub_cache(folder: Path, cache: Path, repo: str = "user/tiny") -> Path:
    """The layout huggingface_hub's cache has after downloading ``repo``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return snap


def offline_env(tmp_path: Path, cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(tmp_path / "hf_home"),
        "CUDA_VISIBLE_DEVICES": "",
    }


@pytest.fixture
def offline(tmp_path: Path, monkeypatch) -> Path:
    """huggingface_hub in offline mode (HF_HUB_OFFLINE=1, read at its import, set on its
    constants module) with an empty cache and no token; returns the cache folder."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    pytest.importorskip("huggingface_hub.constants")  # a lazy package: load the submodule
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    return cache


def test_hub_ids_offline_from_the_cache(run: Path, tmp_path: Path, offline: Path, capsys) -> None:
    """``hf://user/name`` and ``from_pretrained("user/name")`` read huggingface_hub's cache
    in offline mode (a real snapshot_download call; nothing is downloaded)."""
    hub_cache(save_pretrained(run, tmp_path / "hf").path, offline)
    t = Translator.from_pretrained("user/tiny", device="cpu")
    assert "models--user--tiny" in t.source
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (20, 24, 3), np.uint8)).save(img)
    args = ["translate", "--input", str(img), "--device", "cpu"]
    assert cli([*args, "--checkpoint", "hf://user/tiny", "--output", str(tmp_path / "o1")]) == 0
    assert cli([*args, "--checkpoint", str(run), "--output", str(tmp_path / "o2")]) == 0
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "o1" / "a.png")),
        np.asarray(Image.open(tmp_path / "o2" / "a.png")),
    )
    capsys.readouterr()
    assert cli([*args, "--checkpoint", "hf://user/missing", "--output", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("spap translate: error: cannot get user/missing from the Hugging")
    with pytest.raises(SpapError, match="not a Hub repository id"):
        load_generators("hf://not a repo")


@pytest.mark.slow
def test_hub_id_with_the_offline_environment_variable(run: Path, tmp_path: Path) -> None:
    """The same through the environment, as a user sets it, in a fresh process."""
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "cache"
    hub_cache(save_pretrained(run, tmp_path / "hf").path, cache)
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(img)
    cmd = [sys.executable, "-m", "spap.cli", "translate", "--input", str(img), "--device", "cpu"]
    cmd += ["--checkpoint", "hf://user/tiny", "--output", str(tmp_path / "o")]
    proc = subprocess.run(cmd, env=offline_env(tmp_path, cache), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "a.png").is_file()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_push_fails_in_one_line(run: Path, offline: Path, monkeypatch, capsys) -> None:
    """Offline mode, no token, and a Hub that refuses the connection (a real one: a closed
    port on this machine)."""
    import huggingface_hub

    cmd = ["push", "--checkpoint", str(run), "--repo", "u/m"]
    assert cli(cmd) == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert cli(cmd) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no Hugging Face token" in err[0]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    assert cli([*cmd, "--token", "hf_fake"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spap push: error: upload to u/m failed")
    assert cli(["push", "--checkpoint", str(run), "--repo", "no-slash"]) == 2
    assert "--repo must be user/name" in capsys.readouterr().err


def test_push_uploads_the_folder(run: Path, tmp_path: Path, monkeypatch) -> None:
    """Everything up to the upload, with ``HfApi`` replaced by a recorder (the one faked
    step: the network call)."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    pytest.importorskip("huggingface_hub.constants")  # a lazy package: load the submodule
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    class Api:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw["private"]))

        def upload_folder(self, folder_path, repo_id, **kw):
            folder = Path(folder_path)
            calls.append(("upload", repo_id, sorted(p.name for p in folder.iterdir())))
            calls.append(("card", (folder / "README.md").read_text()))
            uploaded = load(folder, device="cpu")  # what the Hub would serve
            calls.append(("outputs", {d: uploaded.translate(x, d) for d in ("AtoB", "BtoA")}))
            return type("Info", (), {"commit_url": "https://hf.co/u/m/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    x = torch.rand(1, 3, 24, 20) * 2 - 1
    original = Translator.from_checkpoint(run, device="cpu")
    url = push_to_hub(run, "u/m", private=True, token="hf_x")
    assert url == "https://hf.co/u/m/commit/1"
    assert calls[1] == ("create", "u/m", True)
    assert calls[2][2] == sorted(
        ["README.md", "attention.png", "config.json", "model.safetensors", "samples.png"]
    )
    assert 'Translator.from_pretrained("u/m")' in calls[3][1]
    assert "--checkpoint hf://u/m" in calls[3][1]
    for d, y in calls[4][1].items():  # the uploaded folder gives the run's outputs
        assert torch.equal(y, original.translate(x, d))
    calls.clear()
    assert original.push_to_hub("u/t", token="hf_x") == url  # the thin method
    assert calls[1] == ("create", "u/t", False) and "| fid | 123.4 |" in calls[3][1]
    # a saved folder goes up as it is, its card naming the repository
    folder = save_pretrained(run, tmp_path / "saved").path
    calls.clear()
    push_to_hub(folder, "u/other", token="hf_x")
    assert 'Translator.from_pretrained("u/other")' in calls[3][1]
    assert (folder / "README.md").read_text().count("u/other") == 0  # the local copy unchanged


def _push_in_a_fresh_process(folder: Path, env: dict[str, str]) -> tuple[int, list[str]]:
    cmd = [sys.executable, "-m", "spap.cli", "push", "--checkpoint", str(folder), "--repo", "u/m"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr.strip().splitlines()


def test_push_without_a_hub_in_a_fresh_process(run: Path, tmp_path: Path) -> None:
    """As a user meets it: huggingface_hub's real client in a fresh process, configured only
    by the environment. No token: one line before any connection; a token and HF_ENDPOINT
    naming a closed port on this machine (a real refused connection): one line naming the
    endpoint."""
    pytest.importorskip("huggingface_hub")
    folder = save_pretrained(run, tmp_path / "hf").path
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), CUDA_VISIBLE_DEVICES="")
    code, err = _push_in_a_fresh_process(folder, env)
    assert code == 2 and len(err) == 1, err
    assert err[0] == (
        "spap push: error: cannot upload to u/m: no Hugging Face token (set HF_TOKEN or run "
        "`hf auth login`)"
    )
    endpoint = f"http://127.0.0.1:{closed_port()}"
    code, err = _push_in_a_fresh_process(
        folder, {**env, "HF_TOKEN": "hf_x", "HF_ENDPOINT": endpoint}
    )
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(
        f"spap push: error: upload to u/m failed: cannot reach the Hugging Face Hub at {endpoint} ("
    )


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A Hub that answers every request with 401, as huggingface.co does for a bad token."""

    def _refuse(self) -> None:
        body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Error-Message", "Invalid credentials in Authorization header")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _refuse

    def log_message(self, *args) -> None:  # quiet
        pass


def test_push_with_a_refused_token_in_one_line(
    run: Path, tmp_path: Path, offline: Path, monkeypatch, capsys
) -> None:
    """A Hub (an HTTP server on this machine) that refuses the token: huggingface_hub's real
    client gets the 401, ``spap push`` says so in one line."""
    import huggingface_hub

    folder = save_pretrained(run, tmp_path / "hf").path
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
        assert cli(["push", "--checkpoint", str(folder), "--repo", "u/m", "--token", "hf_bad"]) == 2
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0] == (
        "spap push: error: upload to u/m failed: the Hub answered 401 Unauthorized (Invalid "
        "credentials in Authorization header); check the token (--token, HF_TOKEN or `hf auth "
        "login`) and its write access to u/m"
    )


# ----------------------------------------------------------------------------- the unit


def test_unit_round_trip(tmp_path: Path) -> None:
    factory = LayerFactory(norm="group", activation="lrelu")
    unit = SPAP(
        16, rates=(0, 1, 3), order="fine_to_coarse", attention="both", **factory.layer_kwargs()
    )
    with torch.no_grad():
        unit.gamma.fill_(0.4)
    unit.save_pretrained(tmp_path / "unit")
    config = json.loads((tmp_path / "unit" / "config.json").read_text())
    assert config["class"] == "SPAP" and config["init_args"]["rates"] == [0, 1, 3]
    assert config["init_args"]["act_layer"] == {
        "callable": "torch.nn.LeakyReLU",
        "args": [0.2],
        "kwargs": {},
    }
    same = SPAP.from_pretrained(tmp_path / "unit")
    x = torch.randn(2, 16, 12, 10)
    assert torch.equal(unit.eval()(x), same(x)) and float(same.gamma.detach()) == pytest.approx(0.4)
    assert repr(same) == repr(unit)
    # the model card, as PyTorchModelHubMixin writes one beside config.json and the weights
    assert sorted(p.name for p in (tmp_path / "unit").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    meta = card_metadata(tmp_path / "unit")
    assert meta == {
        "library_name": "spap",
        "license": "mit",
        "tags": ["spap", "pytorch", "attention"],
    }
    card = (tmp_path / "unit" / "README.md").read_text()
    assert f'SPAP.from_pretrained("{tmp_path / "unit"}")' in card
    assert "| rates | `[0, 1, 3]` |" in card and "| act_layer | `torch.nn.LeakyReLU(0.2)` |" in card
    assert (
        "`gamma`: 0.4 " in card
        and f"Parameters: {sum(p.numel() for p in unit.parameters()):,}." in card
    )
    unit.save_pretrained(tmp_path / "named", repo_id="me/unit", license="apache-2.0")
    card = (tmp_path / "named" / "README.md").read_text()
    assert 'SPAP.from_pretrained("me/unit")' in card and 'pretrained="hf://me/unit"' in card
    assert card_metadata(tmp_path / "named")["license"] == "apache-2.0"


def test_unit_refuses_what_it_cannot_store_or_trust(tmp_path: Path) -> None:
    custom = SPAP(8, rates=(0, 1), norm_layer=lambda c: torch.nn.BatchNorm2d(c))
    with pytest.raises(ConfigError, match="cannot save a unit built with the layer callable"):
        custom.save_pretrained(tmp_path / "custom")
    SPAP(8, rates=(0, 1), act_layer=functools.partial(torch.nn.ELU, 0.5)).save_pretrained(
        tmp_path / "ok"
    )
    path = tmp_path / "ok" / "config.json"
    config = json.loads(path.read_text())
    config["init_args"]["act_layer"] = {"callable": "os.system", "args": ["echo pwned"]}
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="is not a torch.nn or spap.layers callable"):
        SPAP.from_pretrained(tmp_path / "ok")
    with pytest.raises(CheckpointError, match="no such file"):
        SPAP.from_pretrained(tmp_path / "nothing")


def test_unit_from_a_hub_id_offline(tmp_path: Path, offline: Path) -> None:
    unit = SPAP(8, rates=(0, 2))
    unit.save_pretrained(tmp_path / "unit")
    hub_cache(tmp_path / "unit", offline, "user/unit")
    x = torch.randn(1, 8, 6, 6)
    for name in ("user/unit", "hf://user/unit", "hf://user/unit@main"):  # as everywhere in spap
        same = SPAP.from_pretrained(name)
        assert same.rates == (0, 2) and torch.equal(same(x), unit.eval()(x))
    with pytest.raises(CheckpointError, match="cannot get user/other from the Hugging Face Hub"):
        SPAP.from_pretrained("user/other")
    with pytest.raises(CheckpointError, match="is not a Hub repository id"):
        SPAP.from_pretrained("hf://not a repo")
