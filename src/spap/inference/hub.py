"""Names and look-ups of the Hugging Face folder layout (``config.json``, ``model.safetensors``,
``README.md``) and of models on the Hugging Face Hub.

This module only finds folders: :mod:`spap.inference.loading` reads them and
:mod:`spap.inference.pretrained` writes them. ``huggingface_hub`` is an optional dependency
(``pip install 'spap[hub]'``), imported only when a model is fetched from the Hub.

A model is named by a local folder, or by a Hub repository: ``hf://user/name`` (optionally
``hf://user/name@revision``) everywhere a checkpoint is accepted, and also a bare
``user/name`` in ``from_pretrained`` (as in ``transformers``) when no such local path exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from spap.errors import CheckpointError
from spap.layers.pretrained import (  # the file names of the layout, the Hub names
    CARD_NAME,
    CONFIG_NAME,
    HUB_PREFIX,
    WEIGHTS_NAME,
    hub_repo,
    hub_snapshot,
)

__all__ = [
    "CONFIG_NAME",
    "HUB_PREFIX",
    "PRETRAINED_FORMAT",
    "WEIGHTS_NAME",
    "is_pretrained_folder",
    "read_config",
    "resolve",
    "snapshot",
]

#: ``format`` of a ``config.json`` written by spap.
PRETRAINED_FORMAT = "spap-pretrained"


def is_pretrained_folder(path: str | os.PathLike) -> bool:
    """A folder holding ``config.json`` and ``model.safetensors``."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file()


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a folder written by spap (one-line errors)."""
    path = Path(folder) / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"no such file: {path}") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != PRETRAINED_FORMAT:
        raise CheckpointError(
            f"{path}: not a model folder written by spap (its format is not {PRETRAINED_FORMAT!r})"
        )
    return config


def snapshot(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """The local folder of a Hub repository (``user/name`` or ``hf://user/name[@revision]``),
    downloaded into the Hugging Face cache if needed (``huggingface_hub.snapshot_download``;
    with ``HF_HUB_OFFLINE=1`` or ``local_files_only`` only the cache is used)."""
    parsed = hub_repo(repo_id if repo_id.startswith(HUB_PREFIX) else HUB_PREFIX + repo_id)
    assert parsed is not None  # an hf:// name is a repository or an error
    return hub_snapshot(
        parsed[0],
        revision or parsed[1],
        [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, "*.png"],
        cache_dir=cache_dir,
        force_download=force_download,
        token=token,
        local_files_only=local_files_only,
    )


def resolve(name: str | os.PathLike, **hub_kwargs: Any) -> Path:
    """A local path for ``name``: the path itself when it exists, else the snapshot of the
    Hub repository it names (``hf://user/name``, or a bare ``user/name``)."""
    if hub_repo(name) is None:
        return Path(os.fspath(name))
    return snapshot(os.fspath(name), **hub_kwargs)
