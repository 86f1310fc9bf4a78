"""Config machinery: YAML base chain, overrides, strict validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from spap.config import RunConfig, load_config, option, parse_overrides, to_dict
from spap.errors import ConfigError


@dataclasses.dataclass
class _Model:
    width: int = option(64, "channels", min=1)
    rates: list[int] = option(default_factory=lambda: [1, 2, 4], help="rates")
    kind: str = option("none", "attention", choices=("none", "spap"))


@dataclasses.dataclass
class _Train:
    lr: float = option(2e-4, "learning rate", min=0.0)
    load_size: int = option(286, "load")
    crop_size: int = option(256, "crop")

    def validate(self) -> None:
        if self.crop_size > self.load_size:
            raise ConfigError("train.crop_size is larger than train.load_size")


@dataclasses.dataclass
class _Cfg:
    model: _Model = option(default_factory=_Model)
    train: _Train = option(default_factory=_Train)
    run: RunConfig = option(default_factory=RunConfig)


def test_defaults_yaml_base_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("model:\n  width: 32\ntrain:\n  lr: 0.001\n")
    (tmp_path / "top.yaml").write_text("base: base.yaml\nmodel:\n  kind: spap\n")
    cfg = load_config(_Cfg, tmp_path / "top.yaml", ["train.lr=5e-4", "model.rates=[1,3]"])
    assert (cfg.model.width, cfg.model.kind, cfg.model.rates) == (32, "spap", [1, 3])
    assert cfg.train.lr == 5e-4
    assert to_dict(cfg)["run"]["seed"] == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.widht=3", "unknown config key 'model.widht' (did you mean 'model.width'?)"),
        ("trian.lr=1", "unknown config key 'trian' (did you mean 'train'?)"),
        ("train.lr=-1", "train.lr: -1.0 is below the minimum 0.0"),
        ("model.width=abc", "model.width: expected an integer"),
        ("model.kind=sagan", "model.kind: 'sagan' is not one of"),
        ("train.crop_size=300", "crop_size is larger than train.load_size"),
        ("run.precision=fp8", "run.precision"),
        ("novalue", "not of the form key=value"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(_Cfg, None, [override])
    assert message in str(exc.value)


def test_parse_overrides_nested() -> None:
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}
