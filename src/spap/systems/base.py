"""What every system shares: the adversarial loss names and the registry entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["ADVERSARIAL_LOSSES", "System"]

#: Adversarial losses a config may name (implemented in :mod:`spap.train.losses`).
ADVERSARIAL_LOSSES = ("lsgan", "vanilla", "hinge")


@dataclass(frozen=True)
class System:
    """One kind of model spap trains and serves (``"cyclegan"``, ``"gan"``).

    Attributes:
        kind: the name stored in checkpoints and given to ``spap train``.
        config_class: the dataclass schema of a whole config (``run``, ``data``, ``model``,
            ``train`` sections).
        model_config_class: the schema of its ``model`` section, all inference needs.
        apply_size: what ``--size N`` sets in a plain config dict.
        build_networks: model config -> ``{name: network}`` as named in checkpoints.
    """

    kind: str
    config_class: type
    model_config_class: type
    apply_size: Callable[[dict[str, Any], int], None]
    build_networks: Callable[[Any], dict[str, nn.Module]]
