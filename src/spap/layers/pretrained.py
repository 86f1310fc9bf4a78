"""``save_pretrained`` / ``from_pretrained`` for a unit, in the Hugging Face layout.

>>> unit = SPAP(256, rates=(0, 1, 2, 4), **LayerFactory(norm="instance").layer_kwargs())
>>> unit.save_pretrained("my-unit")          # config.json + model.safetensors + README.md
>>> same = SPAP.from_pretrained("my-unit")   # or "user/my-unit" on the Hugging Face Hub

As ``huggingface_hub.PyTorchModelHubMixin`` does: ``config.json`` holds the constructor
arguments, ``model.safetensors`` the state dict (metadata ``format: pt``) and ``README.md``
a model card (a metadata block with ``library_name: spap``, ``license`` and ``tags``; the
arguments, ``gamma``, the parameter count, how to load the unit). A Hub repository is named
``user/name`` (when no such local path exists) or ``hf://user/name[@revision]``, as
everywhere in spap. Layer callables (``conv_layer``,
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

__all__ = ["PretrainedUnitMixin", "decode_callable", "encode_callable", "render_unit_card"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
UNIT_FORMAT = "spap-unit"
HUB_PREFIX = "hf://"
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


def hub_repo(name: str | os.PathLike) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``name`` names a Hub repository (``hf://user/name`` or
    ``user/name[@revision]`` that is no local path), else None; an ``hf://`` name that is
    no repository id is a one-line error. The one parser of Hub names in spap."""
    text = os.fspath(name)
    explicit = text.startswith(HUB_PREFIX)
    if explicit:
        text = text[len(HUB_PREFIX) :]
    elif Path(text).exists():
        return None
    repo, _, revision = text.partition("@")
    if not _REPO_ID.match(repo):
        if explicit:
            raise CheckpointError(f"{os.fspath(name)!r} is not a Hub repository id (user/name)")
        return None
    return repo, revision or None


def hub_snapshot(
    repo_id: str, revision: str | None, allow_patterns: list[str], **hub_kwargs: Any
) -> Path:
    """The local folder of Hub repository ``repo_id`` (``user/name``), downloaded into the
    Hugging Face cache if needed (``huggingface_hub.snapshot_download`` with
    ``hub_kwargs``: ``cache_dir``, ``force_download``, ``token``, ``local_files_only``; with
    ``HF_HUB_OFFLINE=1`` only the cache is used). One-line errors."""
    try:
        from huggingface_hub import snapshot_download  # noqa: PLC0415 - optional dependency (spap[hub])
    except ImportError:
        raise ConfigError(
            f"loading {repo_id} from the Hugging Face Hub needs huggingface_hub: "
            "pip install 'spap[hub]'"
        ) from None
    try:
        folder = snapshot_download(
            repo_id, revision=revision, allow_patterns=allow_patterns, **hub_kwargs
        )
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, no access: one line
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CheckpointError(f"cannot get {repo_id} from the Hugging Face Hub: {text}") from None
    return Path(folder)


def _card_value(v: Any) -> str:
    if isinstance(v, dict) and "callable" in v:
        args = [
            *map(repr, v.get("args", [])),
            *(f"{k}={x!r}" for k, x in v.get("kwargs", {}).items()),
        ]
        return f"`{v['callable']}({', '.join(args)})`" if args else f"`{v['callable']}`"
    return f"`{json.dumps(v)}`"


def render_unit_card(
    config: dict[str, Any],
    *,
    name: str,
    gamma: float | None,
    parameters: int,
    license: str = "mit",
) -> str:
    """The ``README.md`` model card of a unit whose ``config.json`` is ``config``; ``name``
    is what users load (a Hub id ``user/name`` or a local folder)."""
    cls = str(config.get("class", "SPAP"))
    args = config.get("init_args", {})
    hub = "/" in name and not Path(name).exists()
    ref = f"{HUB_PREFIX}{name}" if hub else name
    tags = ["spap", "pytorch", "attention", cls.lower()]
    lines = [
        "---",
        "library_name: spap",
        f"license: {license}",
        "tags:",
        *(f"- {t}" for t in dict.fromkeys(tags)),
        "---",
        "",
        f"# {name.rstrip('/').rsplit('/', 1)[-1]}",
        "",
        f"A `{cls}` attention unit saved with spap: a PyTorch module mapping a feature map "
        f"`(N, {args.get('channels', 'C')}, H, W)` to one of the same shape, "
        + (
            "`gamma * h + (1 - gamma) * x` (`h`: the attentively fused atrous pyramid of the input `x`)"
            if cls == "SPAP"
            else "`x + gamma * o` (`o`: the attended input)"
        )
        + ", to place inside a generator or discriminator.",
        "",
        "## Configuration",
        "",
        "| argument | value |",
        "|---|---|",
        *(f"| {k} | {_card_value(v)} |" for k, v in args.items()),
        "",
        f"Learned blend weight `gamma`: {'n/a' if gamma is None else f'{gamma:.4g}'} "
        "(0: the unit is the identity). Parameters: "
        f"{parameters:,}. spap version: {config.get('spap_version') or 'unknown'}.",
        "",
        "## How to use",
        "",
        "```python",
        f"from spap import {cls}",
        "",
        f'unit = {cls}.from_pretrained("{name}")   # eval mode; device=..., dtype=... override',
        "```",
        "",
    ]
    if cls == "SPAP":
        lines += [
            "With torch.hub, from a checkout of spap:",
            "",
            "```python",
            "import torch",
            f'unit = torch.hub.load("path/to/spap", "spap_unit", pretrained="{ref}", '
            'source="local")',
            "```",
            "",
        ]
    lines += [
        "## Files",
        "",
        "- `config.json`: the constructor arguments (layer callables by name)",
        "- `model.safetensors`: the state dict",
    ]
    return "\n".join(lines) + "\n"


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

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        repo_id: str | None = None,
        license: str = "mit",
    ) -> Path:
        """Write ``config.json`` (constructor arguments), ``model.safetensors`` (the state
        dict, spectral-norm parametrizations as stored) and ``README.md`` (the model card:
        ``repo_id`` is the name its snippets load, default the folder; ``license`` goes into
        its metadata) into ``save_directory``."""
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
        gamma = getattr(self, "gamma", None)
        card = render_unit_card(
            config,
            name=repo_id or os.fspath(out),
            gamma=float(gamma.detach()) if isinstance(gamma, torch.Tensor) else None,
            parameters=sum(p.numel() for p in self.parameters()),
            license=license,
        ).encode()
        atomic_write(out / CARD_NAME, lambda fh: fh.write(card))
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
        ``user/name`` / ``hf://user/name[@revision]`` (``huggingface_hub.snapshot_download``
        into its cache; the keywords before ``map_location`` are its own). ``overrides``
        replace stored constructor arguments (e.g. ``device``, ``dtype``)."""
        from safetensors.torch import load_file  # noqa: PLC0415 - keeps `from spap import SPAP` torch-only

        folder = Path(os.fspath(pretrained_model_name_or_path))
        hub = hub_repo(pretrained_model_name_or_path)
        if hub is not None:
            folder = hub_snapshot(
                hub[0],
                revision or hub[1],
                [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
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
