"""The systems spap trains and serves: kind -> config schema and network builder.

Training (:mod:`spap.train`) and inference (:mod:`spap.inference`) both start here, so that
neither imports the other: a checkpoint names its kind, the registry gives the schema of its
``model`` section and the function that builds its networks.

>>> from spap.systems import get_system
>>> system = get_system("cyclegan")
>>> nets = system.build_networks(system.model_config_class())   # G_A, G_B, D_A, D_B
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spap.config import from_dict, suggest
from spap.errors import ConfigError
from spap.systems import cyclegan, gan
from spap.systems.base import ADVERSARIAL_LOSSES, System

__all__ = ["ADVERSARIAL_LOSSES", "SYSTEMS", "System", "get_system", "model_config"]

SYSTEMS: dict[str, System] = {
    "cyclegan": System(
        kind="cyclegan",
        config_class=cyclegan.CycleGANConfig,
        model_config_class=cyclegan.CycleGANModelConfig,
        apply_size=cyclegan.apply_size,
        build_networks=cyclegan.build_networks,
    ),
    "gan": System(
        kind="gan",
        config_class=gan.GANConfig,
        model_config_class=gan.SNGANConfig,
        apply_size=gan.apply_size,
        build_networks=gan.build_networks,
    ),
}


def get_system(kind: str) -> System:
    """The system registered under ``kind``."""
    if kind not in SYSTEMS:
        raise ConfigError(f"unknown kind {kind!r}{suggest(str(kind), list(SYSTEMS))}")
    return SYSTEMS[kind]


def model_config(kind: str, config: Mapping[str, Any], source: str = "checkpoint") -> Any:
    """The ``model`` section of a stored config as its dataclass, read leniently: keys this
    release does not know are dropped with a warning naming ``source`` (a checkpoint or an
    export written by another release), other errors name ``source`` too."""
    system = get_system(kind)
    section = config.get("model", {}) if isinstance(config, Mapping) else None
    if not isinstance(section, Mapping):
        raise ConfigError(f"{source}: its stored config has no model section")
    try:
        return from_dict(
            system.model_config_class, section, unknown="warn", source=source, prefix="model."
        )
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
