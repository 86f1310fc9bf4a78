"""Task registry: name -> training task class (imported lazily)."""

from __future__ import annotations

import importlib

from spap.config import suggest
from spap.errors import ConfigError

TASKS: dict[str, str] = {
    "cyclegan": "spap.train.cyclegan:CycleGANTask",
    "gan": "spap.train.gan:GANTask",
}


def get_task(name: str) -> type:
    """The Task class registered under ``name``."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}{suggest(name, list(TASKS))}")
    module, attr = TASKS[name].split(":")
    return getattr(importlib.import_module(module), attr)
