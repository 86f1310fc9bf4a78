"""Bad configs fail at start, naming the key, before any data is read or any file written.

Every case points ``--data`` at a folder that does not exist: getting the config error
(not the missing-data error) shows the config was checked before any data was touched.
The run folder must not exist afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from spap.cli import main as cli_main

# (task, arguments, text the one-line message must hold)
CASES = [
    ("gan", ["train.lrg=1"], "unknown config key 'train.lrg' (did you mean 'train.lr_g'?)"),
    ("cyclegan", ["model.ngff=4"], "unknown config key 'model.ngff' (did you mean 'model.ngf'?)"),
    ("cyclegan", ["run.chekpoint_every=5"], "(did you mean 'run.checkpoint_every'?)"),
    ("gan", ["train.batch_size=abc"], "train.batch_size: expected an integer, got 'abc'"),
    ("gan", ["run.nan_policy=maybe"], "run.nan_policy: 'maybe' is not one of 'stop', 'skip'"),
    ("cyclegan", ["train.lr=-0.1"], "train.lr: -0.1 is below the minimum 0.0"),
    ("gan", ["train.lr_g=-1"], "train.lr_g: -1.0 is below the minimum 0.0"),
    ("gan", ["train.betas_d=[0.5, 2]"], "train.betas_d: 2.0 is above the maximum 1.0"),
    ("cyclegan", ["data.crop_size=64", "data.load_size=32"],
     "data.crop_size (64) is larger than data.load_size (32)"),
    ("cyclegan", ["--size", "30"], "data.crop_size must be a multiple of 4"),
    ("gan", ["--size", "33"], "model.resolution: 33 is not one of 32, 64, 128, 256"),
    ("gan", ["--steps", "0"], "run.steps: 0 is below the minimum 1"),
    ("gan", ["run.precision=fp16"], "run.precision: fp16 needs a CUDA device"),
    ("gan", ["--size", "32", "model.g_attention={7: spap}"],
     "model.g_attention: no block outputs 7x7 features at resolution 32"),
    ("gan", ["--config", "no/such/config.yaml"], "config file not found: no/such/config.yaml"),
    # SPAP rate lists the unit cannot use (checked when the networks are built: still before
    # any data or file)
    ("gan", ["--size", "32", "model.g_attention={16: spap}", "model.spap_options={rates: [4, 2, 1]}"],
     "rates must be strictly increasing"),
    ("gan", ["--size", "32", "model.d_attention={16: spap}", "model.spap_options={rates: [3]}"],
     "SPAP needs at least two branches"),
    ("cyclegan", ["--size", "16", "model.n_layers_d=1", "model.attention=spap",
                  "model.g_attention_at=[trunk_end]", "model.g_attention_options={rates: [2, 2]}"],
     "rates must be strictly increasing"),
    ("cyclegan", ["--size", "16", "model.n_layers_d=1", "model.attention=spap",
                  "model.d_attention_at=[1]", "model.d_attention_options={rates: [-1, 2]}"],
     "rates must be non-negative integers"),
]  # fmt: skip
IDS = [f"{t}:{' '.join(a)[:40]}" for t, a, _ in CASES]


@pytest.mark.parametrize(("task", "extra", "expect"), CASES, ids=IDS)
def test_bad_config_fails_at_start(
    tmp_path: Path, task: str, extra: list[str], expect: str, capsys
) -> None:
    out = tmp_path / "run"
    code = cli_main(["train", task, "--data", str(tmp_path / "no_data"), "--out", str(out),
                     *extra])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("spap train: error: ") and expect in err[0], err[0]
    assert not out.exists(), "a file was written before the config was checked"


def test_bad_config_in_a_yaml_file(tmp_path: Path, capsys) -> None:
    from spap.train.config import CONFIG_DIR

    cfg = tmp_path / "my.yaml"  # a user's file on top of a shipped one
    cfg.write_text(f"base: {CONFIG_DIR / 'cyclegan' / 'facades.yaml'}\ntrain:\n  lamda_A: 5\n")
    out = tmp_path / "run"
    code = cli_main(["train", "cyclegan", "--data", str(tmp_path / "x"), "--out", str(out),
                     "--config", str(cfg)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "unknown config key 'train.lamda_A' (did you mean 'train.lambda_A'?)" in err[0]
    assert not out.exists()
    cfg.write_text("train: [unclosed\n")
    assert cli_main(["train", "cyclegan", "--out", str(out), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"spap train: error: cannot parse {cfg}")


SPAP_KEY_CASES = [
    ("gan", ["--size", "32", "model.g_attention={16: spap}", "model.spap_options={rates: [4, 2, 1]}"],
     "model.spap_options"),
    ("cyclegan", ["--size", "16", "model.n_layers_d=1", "model.attention=spap",
                  "model.g_attention_at=[trunk_end]", "model.g_attention_options={rates: [2, 2]}"],
     "model.g_attention_options"),
]  # fmt: skip


@pytest.mark.xfail(
    reason="SPAP options are free dicts, checked only by the SPAP constructor, whose message "
    "names `rates` but not the config key; SNGANConfig.validate (spap/models/sngan.py) and "
    "CycleGANModelConfig.validate (spap/models/cyclegan.py) should check them and prefix the key",
    strict=False,
)
@pytest.mark.parametrize(("task", "extra", "key"), SPAP_KEY_CASES, ids=["gan", "cyclegan"])
def test_spap_rate_errors_name_the_config_key(
    tmp_path: Path, task: str, extra: list[str], key: str, capsys
) -> None:
    cli_main(["train", task, "--data", str(tmp_path), "--out", str(tmp_path / "r"), *extra])
    assert key in capsys.readouterr().err


@pytest.mark.xfail(
    reason="the GAN's data section has data.size, but check_transform_options is called with "
    "the CycleGAN names (spap/train/gan.py GANDataConfig.validate)",
    strict=False,
)
def test_gan_crop_error_names_its_own_key(tmp_path: Path, capsys) -> None:
    cli_main(["train", "gan", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
              "--size", "32", "data.load_size=16"])  # fmt: skip
    err = capsys.readouterr().err
    assert "data.size" in err and "data.crop_size" not in err
