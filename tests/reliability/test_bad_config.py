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
    ("gan", ["--size", "32", "data.load_size=16"], "data.size (32) is larger than data.load_size"),
    # SPAP rate lists the unit cannot use
    ("gan", ["--size", "32", "model.g_attention={16: spap}", "model.spap_options={rates: [4, 2, 1]}"],
     "model.spap_options: rates must be strictly increasing"),
    ("gan", ["--size", "32", "model.d_attention={16: spap}", "model.spap_options={rates: [3]}"],
     "model.spap_options: rates has only 1 branch: SPAP needs at least two branches"),
    ("gan", ["--size", "32", "model.g_attention={16: spap}", "model.spap_options={ratez: [1, 2]}"],
     "model.spap_options: unknown option 'ratez' for attention 'spap'; did you mean 'rates'?"),
    ("cyclegan", ["--size", "16", "model.n_layers_d=1", "model.attention=spap",
                  "model.g_attention_at=[trunk_end]", "model.g_attention_options={rates: [2, 2]}"],
     "model.g_attention_options: rates must be strictly increasing"),
    ("cyclegan", ["--size", "16", "model.n_layers_d=1", "model.attention=spap",
                  "model.d_attention_at=[1]", "model.d_attention_options={rates: [-1, 2]}"],
     "model.d_attention_options: rates must be non-negative integers"),
    # non-finite numbers, for every float option
    ("cyclegan", ["train.lr=nan"], "train.lr: expected a finite number, got 'nan'"),
    ("cyclegan", ["train.lr=inf"], "train.lr: expected a finite number, got 'inf'"),
    ("cyclegan", ["train.lambda_A=.nan"], "train.lambda_A: expected a finite number, got nan"),
    ("gan", ["train.ema_decay=nan"], "train.ema_decay: expected a finite number"),
    ("gan", ["train.lr_g=1e999"], "train.lr_g: expected a finite number, got '1e999'"),
    ("gan", ["train.betas_g=[0.5, .inf]"], "train.betas_g[1]: expected a finite number"),
    ("cyclegan", ["train.clip_grad_norm=-.inf"], "train.clip_grad_norm: expected a finite"),
    # impossible sizes: refused, or caught when the networks are allocated
    ("cyclegan", ["model.ngf=100000000000000000000"], "model.ngf: 100000000000000000000 does "
     "not fit in 64 bits"),
    ("cyclegan", ["model.ngf=100000000"], "cannot build the networks: out of memory (tried to "
     "allocate 58.8 GB); the model is too large for this machine (model.input_nc=3, "
     "model.output_nc=3, model.ngf=100000000"),
    ("gan", ["model.z_dim=1000000000"], "cannot build the networks: out of memory"),
    ("gan", ["model.g_ch=100000000"], "cannot build the networks: out of memory"),
    ("cyclegan", ["model.n_blocks=100000000"], "model.n_blocks: 100000000 is above the maximum 1000"),
    # devices
    ("gan", ["run.device=foo"], "unknown device 'foo': use auto, cpu, cuda or cuda:N"),
    ("cyclegan", ["run.device=meta"], "device 'meta' is not supported"),
    # modes that keep each image's size cannot batch images
    ("cyclegan", ["data.preprocess=none", "train.batch_size=2"],
     "train.batch_size=2 with data.preprocess=none: it keeps each image's own size"),
    ("cyclegan", ["data.preprocess=scale_width", "train.batch_size=4"],
     "train.batch_size=4 with data.preprocess=scale_width"),
    ("gan", ["data.preprocess=none"], "data.preprocess=none keeps each image's own size"),
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
    from spap.config import CONFIG_DIR

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
