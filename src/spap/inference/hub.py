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
import re
from pathlib import Path
from typing import Any

from spap.errors import CheckpointError, SpapError

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

#: File names of the layout (those of ``huggingface_hub.PyTorchModelHubMixin``).
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
#: ``format`` of a ``config.json`` written by spap.
PRETRAINED_FORMAT = "spap-pretrained"
#: Prefix naming a Hub repository where a path is expected.
HUB_PREFIX = "hf://"

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


def _split_revision(name: str) -> tuple[str, str | None]:
    repo, _, revision = name.partition("@")
    return repo, (revision or None)


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
    name = repo_id[len(HUB_PREFIX) :] if repo_id.startswith(HUB_PREFIX) else repo_id
    name, rev = _split_revision(name)
    revision = revision or rev
    if not _REPO_ID.match(name):
        raise SpapError(f"{repo_id!r} is not a Hub repository id (user/name)")
    try:
        import huggingface_hub  # noqa: PLC0415 - optional dependency (spap[hub])
    except ImportError:
        raise SpapError(
            f"loading {name} from the Hugging Face Hub needs huggingface_hub: "
            "pip install 'spap[hub]'"
        ) from None
    try:
        folder = huggingface_hub.snapshot_download(
            name,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            local_files_only=local_files_only,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, "*.png"],
        )
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, no access: one line
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CheckpointError(f"cannot get {name} from the Hugging Face Hub: {text}") from None
    return Path(folder)


def resolve(name: str | os.PathLike, **hub_kwargs: Any) -> Path:
    """A local path for ``name``: the path itself when it exists, else the snapshot of the
    Hub repository it names (``hf://user/name``, or a bare ``user/name``)."""
    text = os.fspath(name)
    if text.startswith(HUB_PREFIX):
        return snapshot(text, **hub_kwargs)
    if Path(text).exists() or not _REPO_ID.match(_split_revision(text)[0]):
        return Path(text)
    return snapshot(text, **hub_kwargs)
