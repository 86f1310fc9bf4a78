"""Typed configuration: dataclass schemas, YAML files, ``key=value`` overrides.

A task's configuration is a tree of dataclasses (the schema: every key, its type, its
default and its help text). YAML files under ``configs/`` set the values of a setup and
may inherit another file with ``base: other.yaml``. Command-line ``key=value`` pairs
override single keys (``train.lr=1e-4``, ``model.attention=spap``).

Validation happens before any data is read or any file is written:

- an unknown key fails with the closest valid key suggested;
- a value of the wrong type fails with the key's name;
- ``choices`` / ``min`` / ``max`` in a field's metadata are checked;
- a section's optional ``validate()`` method checks relations between keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from spap.errors import ConfigError

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Folder holding the shipped YAML configs (``configs/`` at the top of the repository
#: is a link to it).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: Sequence[Any] | None = None,
    min: float | None = None,
    max: float | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with help text and simple constraints."""
    meta = {"help": help, "choices": choices, "min": min, "max": max}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class RunConfig:
    """Run machinery shared by every task (device, precision, checkpoints, logging)."""

    seed: int = option(0, "seed of every random choice (weights, data order, augmentation)")
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    precision: str = option(
        "fp32",
        "fp32 | bf16 | fp16 (fp16 needs CUDA; bf16 on CPU only where the processor supports it)",
        choices=("fp32", "bf16", "fp16"),
    )
    channels_last: bool = option(False, "use channels_last memory format for the networks")
    compile: bool = option(
        False,
        "torch.compile the networks; each compiles on its first call (forward and backward); if "
        "compiling fails (no working C++ compiler or Triton, an unsupported operation) one "
        "warning is logged, that call is repeated eagerly and every network runs eagerly from "
        "then on",
    )
    cudnn_benchmark: bool = option(
        True,
        "CUDA: let cuDNN time and pick the fastest convolution algorithm per input shape "
        "(false: the default algorithms, for repeatable runs)",
    )
    fused_optimizer: bool = option(
        True, "fused Adam kernels where this torch has them (same update up to float rounding)"
    )
    steps: int | None = option(
        None, "stop after this many iterations (default: the task's schedule)", min=1
    )
    checkpoint_every: int = option(
        1000, "save a checkpoint every N iterations (and at the end)", min=1
    )
    keep_last: int = option(3, "how many checkpoints to keep (plus the `latest` pointer)", min=1)
    log_every: int = option(50, "write scalars to TensorBoard every N iterations", min=1)
    sample_every: int = option(500, "write a sample grid every N iterations", min=1)
    num_workers: int = option(2, "data-loading worker processes per rank", min=0)
    nan_policy: str = option(
        "stop",
        "what to do when a loss is NaN/Inf: stop the run or skip the update",
        choices=("stop", "skip"),
    )
    dist_backend: str = option(
        "auto",
        "torch.distributed backend under torchrun: auto (nccl on CUDA, else gloo) | nccl | gloo",
        choices=("auto", "nccl", "gloo"),
    )
    sync_batchnorm: bool = option(
        True,
        "convert BatchNorm to SyncBatchNorm when distributed on CUDA (CPU ranks keep per-rank statistics)",
    )


# ----------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, lenient: str = "") -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, lenient)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of keys, got {value!r}")
        return _build(tp, value, prefix=key + ".", lenient=lenient)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _check_meta(value: Any, meta: Mapping[str, Any], key: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None:
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v not in choices:
                raise ConfigError(f"{key}: {v!r} is not one of {', '.join(map(repr, choices))}")
    lo, hi = meta.get("min"), meta.get("max")
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if lo is not None and v < lo:
            raise ConfigError(f"{key}: {v!r} is below the minimum {lo}")
        if hi is not None and v > hi:
            raise ConfigError(f"{key}: {v!r} is above the maximum {hi}")


def suggest(name: str, valid: Sequence[str], prefix: str = "") -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or an empty string."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _build(cls: type[T], data: Mapping[str, Any], prefix: str = "", lenient: str = "") -> T:
    """Build ``cls`` from ``data``. ``lenient`` (a source name) drops unknown keys with a
    warning naming it instead of failing: for configs stored by another release."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [key for key in data if key not in fields]
    for key in unknown:
        if not lenient:
            raise ConfigError(
                f"unknown config key {prefix + str(key)!r}{suggest(str(key), list(fields), prefix)}"
            )
        log.warning(
            "%s: ignoring the config key %r, unknown to this release", lenient, prefix + str(key)
        )
    if unknown:
        data = {k: v for k, v in data.items() if k in fields}
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        if name in data:
            value = _coerce(data[name], hints[name], key, lenient)
        elif dataclasses.is_dataclass(hints[name]) and f.default_factory is dataclasses.MISSING:
            value = _build(hints[name], {}, prefix=key + ".", lenient=lenient)
        else:
            continue
        _check_meta(value, f.metadata, key)
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{prefix or 'config'}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def from_dict(
    cls: type[T],
    data: Mapping[str, Any],
    *,
    unknown: str = "error",
    source: str = "",
    prefix: str = "",
) -> T:
    """Build the dataclass ``cls`` from a plain mapping (see module doc).

    ``unknown="error"`` (for what a user writes) fails on an unknown key; ``"warn"`` (for
    configs read back from a checkpoint or an export of another release) drops it with a
    warning naming ``source``. ``prefix`` is prepended to key names in messages (e.g.
    ``"model."`` when ``data`` is one section)."""
    if unknown not in ("error", "warn"):
        raise ValueError(f"unknown must be 'error' or 'warn', got {unknown!r}")
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping of keys, got {type(data).__name__}")
    lenient = (source or "stored config") if unknown == "warn" else ""
    return _build(cls, data, prefix=prefix, lenient=lenient)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML- and checkpoint-safe dict of a config (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


# ----------------------------------------------------------------------------- files


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given, or relative to the shipped ``configs/`` folder."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (CONFIG_DIR / p, CONFIG_DIR / p.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file not found: {path} (shipped configs live in {CONFIG_DIR})")


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, merging the file named by its ``base`` key underneath it."""
    p = resolve_config_path(path).resolve()
    if p in _seen:
        raise ConfigError(f"config inheritance loop through {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {p}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file must hold a mapping of keys")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = Path(base) if Path(base).is_absolute() else p.parent / base
    return merge(read_yaml(base_path, _seen + (p,)), data)


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``top`` wins. Sections (dicts) merge key by key."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "model.rates=[1,2,4]"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {pair!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> T:
    """Schema defaults <- YAML file (with ``base`` chain) <- overrides, validated."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    if isinstance(overrides, Mapping):
        data = merge(data, overrides)
    else:
        data = merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) rows for every key of a schema, for docs and ``--help``."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(describe(hints[f.name], key + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        rows.append((key, default, f.metadata.get("help", "")))
    return rows
