"""``save_pretrained`` / ``from_pretrained`` for a unit, in the Hugging Face layout.

>>> unit = SPAP(256, rates=(0, 1, 2, 4), **LayerFactory(norm="instance").layer_kwargs())
>>> unit.save_pretrained("my-unit")          # config.json + model.safetensors
>>> same = SPAP.from_pretrained("my-unit")   # or "user/my-unit" on the Hugging Face Hub

As ``huggingface_hub.PyTorchModelHubMixin`` does: ``config.json`` holds the constructor
arguments and ``model.safetensors`` the state dict. Layer callables (``conv_layer``,
``norm_layer``, ``act_layer``) are stored by name: ``torch.nn`` classes, callables of
``spap.layers`` and ``functools.partial`` of either with JSON arguments; only those names are
resolved on load, so a config file can never import or run other code. ``safetensors`` and
``huggingface_hub`` (for a Hub id) are imported only when called: ``from spap import SPAP``
still loads only torch.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from spap.errors import CheckpointError, ConfigError
from spap.files import atomic_write

__all__ = ["PretrainedUnitMixin", "decode_callable", "encode_callable"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
UNIT_FORMAT = "spap-unit"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LAYER_ARGS = ("conv_layer", "norm_layer", "act_layer")

T = TypeVar("T", bound="PretrainedUnitMixin")


def _name_of(fn: Any) -> str | None:
    """``torch.nn.X`` or ``spap.layers.<module>.<name>`` for a callable that has one."""
    name = getattr(fn, "__name__", None)
    if name is None:
        return None
    if getattr(nn, name, None) is fn:
        return f"torch.nn.{name}"
    module = getattr(fn, "__module__", "") or ""
    if (
        module.startswith("spap.layers.")
        and getattr(importlib.import_module(module), name, None) is fn
    ):
        return f"{module}.{name}"
    return None


def encode_callable(fn: Any) -> Any:
    """A JSON description of a layer callable, or raise :class:`ConfigError`."""
    if fn is None:
        return None
    if isinstance(fn, functools.partial):
        inner = _name_of(fn.func)
        try:
            json.dumps([fn.args, fn.keywords])
        except TypeError:
            inner = None
        if inner is not None:
            return {"callable": inner, "args": list(fn.args), "kwargs": dict(fn.keywords)}
    else:
        name = _name_of(fn)
        if name is not None:
            return {"callable": name}
    raise ConfigError(
        f"cannot save a unit built with the layer callable {fn!r}: save_pretrained stores "
        "torch.nn classes, spap.layers callables and functools.partial of them"
    )


def decode_callable(spec: Any, source: str = "config.json") -> Any:
    """The callable of :func:`encode_callable`'s description (only ``torch.nn`` and
    ``spap.layers`` names are resolved)."""
    if spec is None:
        return None
    name = spec.get("callable") if isinstance(spec, dict) else None
    if not isinstance(name, str):
        raise CheckpointError(f"{source}: unreadable layer callable {spec!r}")
    module, _, attr = name.rpartition(".")
    if module == "torch.nn":
        fn = getattr(nn, attr, None)
    elif module.startswith("spap.layers.") and re.fullmatch(r"[\w.]+", module):
        try:
            fn = getattr(importlib.import_module(module), attr, None)
        except ImportError:
            fn = None
    else:
        fn = None
    if not callable(fn):
        raise CheckpointError(
            f"{source}: layer callable {name!r} is not a torch.nn or spap.layers callable"
        )
    args, kwargs = spec.get("args", []), spec.get("kwargs", {})
    return functools.partial(fn, *args, **kwargs) if args or kwargs else fn


class PretrainedUnitMixin:
    """Adds ``save_pretrained`` / ``from_pretrained`` to a unit whose constructor arguments
    are recorded in ``self._init_args`` (a dict) by its ``__init__``."""

    _init_args: dict[str, Any]
    # TorchScript never sees the recorded arguments (callables are no TorchScript types).
    __jit_ignored_attributes__ = ["_init_args"]

    def hub_config(self) -> dict[str, Any]:
        """The ``config.json`` content: class, constructor arguments (layer callables by
        name), spap version."""
        args = dict(self._init_args)
        for key in _LAYER_ARGS:
            if key in args:
                args[key] = encode_callable(args[key])
        for key in ("device", "dtype"):
            args.pop(key, None)
        if isinstance(args.get("rates"), tuple):
            args["rates"] = list(args["rates"])
        try:
            from importlib.metadata import version  # noqa: PLC0415 - only when saving

            spap_version = version("spap")
        except Exception:  # noqa: BLE001 - not installed as a distribution
            spap_version = ""
        return {
            "format": UNIT_FORMAT,
            "class": type(self).__name__,
            "spap_version": spap_version,
            "init_args": args,
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``config.json`` (constructor arguments) and ``model.safetensors`` (the state
        dict, spectral-norm parametrizations as stored) into ``save_directory``."""
        from safetensors.torch import save  # noqa: PLC0415 - keeps `from spap import SPAP` torch-only

        config = self.hub_config()
        out = Path(save_directory)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"{out} is a file; name a folder to save the unit into")
        out.mkdir(parents=True, exist_ok=True)
        assert isinstance(self, nn.Module)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        data = save(state, metadata={"format": "pt"})
        atomic_write(out / WEIGHTS_NAME, lambda fh: fh.write(data))
        text = (json.dumps(config, indent=2) + "\n").encode()
        atomic_write(out / CONFIG_NAME, lambda fh: fh.write(text))
        return out

    @classmethod
    def from_pretrained(
        cls: type[T],
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        token: str | bool | None = None,
        local_files_only: bool = False,
        map_location: str | torch.device = "cpu",
        **overrides: Any,
    ) -> T:
        """A unit from a folder written by :meth:`save_pretrained`, or from a Hub repository
        ``user/name`` (``huggingface_hub.snapshot_download``). ``overrides`` replace stored
        constructor arguments (e.g. ``device``, ``dtype``)."""
        from safetensors.torch import load_file  # noqa: PLC0415 - keeps `from spap import SPAP` torch-only

        folder = Path(os.fspath(pretrained_model_name_or_path))
        if not folder.exists() and _REPO_ID.match(str(pretrained_model_name_or_path)):
            try:
                from huggingface_hub import snapshot_download  # noqa: PLC0415 - optional dependency (spap[hub])
            except ImportError:
                raise ConfigError(
                    "loading a unit from the Hub needs huggingface_hub: pip install 'spap[hub]'"
                ) from None
            try:
                folder = Path(
                    snapshot_download(
                        str(pretrained_model_name_or_path),
                        revision=revision,
                        cache_dir=cache_dir,
                        force_download=force_download,
                        token=token,
                        local_files_only=local_files_only,
                        allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "README.md"],
                    )
                )
            except Exception as exc:  # noqa: BLE001 - offline, unknown repo: one line
                text = " ".join(str(exc).split())[:300]
                raise CheckpointError(
                    f"cannot get {pretrained_model_name_or_path} from the Hub: {text}"
                ) from None
        cfg_path = folder / CONFIG_NAME
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"no such file: {cfg_path}") from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{cfg_path}: not readable JSON ({exc})") from None
        if not isinstance(config, dict) or config.get("format") != UNIT_FORMAT:
            raise CheckpointError(f"{cfg_path}: not a unit saved by spap's save_pretrained")
        if config.get("class") != cls.__name__:
            raise CheckpointError(
                f"{cfg_path}: holds a {config.get('class')!r} unit, not {cls.__name__!r}"
            )
        args = dict(config.get("init_args") or {})
        for key in _LAYER_ARGS:
            if key in args:
                args[key] = decode_callable(args[key], str(cfg_path))
        args.update(overrides)
        try:
            unit = cls(**args)
        except TypeError as exc:
            raise CheckpointError(f"{cfg_path}: constructor arguments do not fit ({exc})") from None
        try:
            state = load_file(os.fspath(folder / WEIGHTS_NAME), device=str(map_location))
        except FileNotFoundError:
            raise CheckpointError(f"no such file: {folder / WEIGHTS_NAME}") from None
        except Exception as exc:  # noqa: BLE001 - damaged file
            raise CheckpointError(f"{folder / WEIGHTS_NAME}: not readable ({exc})") from None
        assert isinstance(unit, nn.Module)
        try:
            unit.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{folder}: weights do not fit the config ({first})") from None
        return unit.to(map_location).eval()
