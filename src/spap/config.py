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

import contextlib
import dataclasses
import difflib
import logging
import math
import reprlib
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
    threads: int | None = option(
        None,
        "PyTorch CPU threads per process (default: OMP_NUM_THREADS if set, else the cores this "
        "process may use by CPU affinity and cgroup quota, divided among torchrun's local "
        "processes)",
        min=1,
    )
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
    logger: str = option(
        "tensorboard",
        "where scalars go: tensorboard | wandb (Weights & Biases; WANDB_MODE=offline works "
        "without an account) | both",
        choices=("tensorboard", "wandb", "both"),
    )
    eval_every: int = option(
        0,
        "evaluate on the validation images every N iterations and at the end (0: never; "
        "the shipped configs evaluate every 1000 or 5000); rank 0 evaluates, the test split "
        "is never used",
        min=0,
    )
    eval_metrics: list[str] = option(
        default_factory=lambda: ["structure", "cycle", "fid", "kid"],
        help="metrics of in-training evaluation: structure, cycle (CycleGAN, no download), "
        "fcn (CycleGAN, needs run.eval_segnet), fid, kid (torch-fidelity: Inception when its "
        "weights are present, else run.eval_segnet's features, else left out with a warning)",
    )
    eval_images: int = option(
        50,
        "validation images per domain: the `val` phase when the dataset has one (held out; "
        "`spap data scenes` writes one), else the last N training files (sorted by name), "
        "which stay in training",
        min=2,
    )
    eval_segnet: str | None = option(
        None,
        "a `spap seg train` checkpoint: FCN-score during training and, without Inception "
        "weights, the features of FID/KID",
    )
    best_metric: str = option(
        "auto",
        "the scalar that picks the `best` checkpoint, e.g. eval/fid_AtoB or "
        "eval/structure_AtoB (lower is better for fid/kid/cycle, higher otherwise); auto: the "
        "first metric computed",
    )
    health_gamma_steps: int = option(
        2000,
        "warn once when an attention unit's gamma has moved less than health_gamma_eps from "
        "its start after this many iterations (0: off)",
        min=0,
    )
    health_gamma_eps: float = option(1e-3, "see health_gamma_steps", min=0)
    health_identity_below: float = option(
        0.01,
        "warn once when a CycleGAN translation differs from its input by less than this mean "
        "absolute value (images in [-1, 1]): identity collapse",
        min=0,
    )
    health_inversion_below: float = option(
        -0.5,
        "warn once when the brightness of a CycleGAN translation correlates with its input's "
        "below this (Pearson r): colour inversion",
        min=-1,
        max=1,
    )
    health_d_loss_below: float = option(
        0.02,
        "warn once when every discriminator loss stays below this for health_d_window "
        "iterations: the discriminator wins everything",
        min=0,
    )
    health_d_window: int = option(1000, "see health_d_loss_below (0: off)", min=0)
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

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40
for _attr in ("maxlist", "maxtuple", "maxdict", "maxset"):
    setattr(_REPR, _attr, 6)


def _short(value: Any, limit: int = 80) -> str:
    """A ``repr`` of a (user-written) value cut to ``limit`` characters: a message never
    quotes more than a short prefix of a bad value, however large."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        raise ConfigError(errors[0] if errors else f"{key}: bad value {_short(value)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of keys, got {_short(value)}")
        return _build(tp, value, prefix=key + ".", lenient=lenient)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {_short(value)}")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {_short(value)}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {_short(value)}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if not (isinstance(value, float) and value.is_integer()):
                raise ConfigError(f"{key}: expected an integer, got {_short(value)}")
            value = int(value)
        if not -(2**63) <= value < 2**63:
            raise ConfigError(f"{key}: {_short(value)} does not fit in 64 bits")
        return value
    if tp is float:
        number = value
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_short(value)}")
        try:
            number = float(number)
        except OverflowError:  # an int beyond the float range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {_short(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_short(value)}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_short(value)}")
    return value


def _check_meta(value: Any, meta: Mapping[str, Any], key: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None:
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v not in choices:
                raise ConfigError(
                    f"{key}: {_short(v)} is not one of {', '.join(map(repr, choices))}"
                )
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
                f"unknown config key {_short(prefix + str(key))}"
                f"{suggest(str(key)[:100], list(fields), prefix)}"
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
    name = p.as_posix().removesuffix(".yaml")
    hint = suggest(name, shipped_configs())
    raise ConfigError(
        f"config file not found: {path}{hint}; `spap config list` names the shipped configs "
        f"(in {CONFIG_DIR})"
    )


def shipped_configs() -> list[str]:
    """Names of the shipped configs (``cyclegan/facades_spap``, ...), sorted."""
    return sorted(
        f.relative_to(CONFIG_DIR).with_suffix("").as_posix() for f in CONFIG_DIR.rglob("*.yaml")
    )


#: Largest config file (and override value) parsed: the shipped configs hold about 2 KB,
#: and PyYAML parses about 40 KB a second on a busy CPU core.
MAX_CONFIG_BYTES = 64 << 10


class _AliasRefused(Exception):
    def __init__(self, event: Any) -> None:
        super().__init__(event.anchor)
        self.event = event


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain values only) without aliases. An alias (``*name``)
    repeats an anchored node; nested aliases let a kilobyte describe gigabytes ("billion
    laughs"), which would be expanded as soon as the config is copied, checked, printed or
    written back to the run folder. Configs inherit with ``base:`` instead."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _AliasRefused(self.peek_event())
        return super().compose_node(parent, index)


#: Deepest nesting of YAML collections a config may hold (PyYAML's scanner slows down with
#: the square of the nesting, and its composer recurses).
MAX_YAML_DEPTH = 64
_OPEN = (
    yaml.FlowSequenceStartToken,
    yaml.FlowMappingStartToken,
    yaml.BlockSequenceStartToken,
    yaml.BlockMappingStartToken,
)
_CLOSE = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)


def _check_depth(text: str, source: str) -> None:
    """Refuse nesting beyond :data:`MAX_YAML_DEPTH` from the token stream, before the
    costly parse (syntax errors are left to it)."""
    depth = 0
    with contextlib.suppress(yaml.YAMLError):
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, _OPEN):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise ConfigError(
                        f"{source}: nested too deeply to be a config (> {MAX_YAML_DEPTH} levels)"
                    )
            elif isinstance(token, _CLOSE):
                depth -= 1


def parse_yaml(text: str, source: str = "config") -> Any:
    """Parse one YAML document of plain values, without aliases and nested at most
    :data:`MAX_YAML_DEPTH` levels; ConfigError (naming ``source``, quoting little) for
    anything else."""
    _check_depth(text, source)
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    except _AliasRefused as exc:
        line = exc.event.start_mark.line + 1
        raise ConfigError(
            f"{source}, line {line}: YAML aliases ({_short('*' + str(exc.event.anchor), 40)}) "
            "are not accepted in spap configs; write the value out, or inherit a file with "
            "`base:`"
        ) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a config") from None
    except yaml.YAMLError as exc:
        text = " ".join(str(exc).split())
        raise ConfigError(f"cannot parse {source}: {_short(text, 300)[1:-1]}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, merging the file named by its ``base`` key underneath it.
    Aliases, files over :data:`MAX_CONFIG_BYTES` and non-text files are refused."""
    p = resolve_config_path(path).resolve()
    if p in _seen:
        raise ConfigError(f"config inheritance loop through {p}")
    size = p.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{p}: {size} bytes is too large for a config file (at most {MAX_CONFIG_BYTES})"
        )
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text (UTF-8) file, so not a YAML config") from None
    data = parse_yaml(text, str(p)) or {}
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
            raise ConfigError(f"override {_short(pair)} is not of the form key=value")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {_short(pair)} has an empty key")
        try:  # YAML without aliases; anything else (or anything huge) stays the string given
            if len(raw) > MAX_CONFIG_BYTES:
                value = raw
            else:
                value = parse_yaml(raw, "override") if raw.strip() else None
        except ConfigError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {_short(pair)} conflicts with another override")
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


def type_name(tp: Any) -> str:
    """A type annotation as a user reads it: ``int``, ``str | None``, ``dict[int, str]``."""
    if tp is type(None):
        return "None"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{inner}]" if args else name
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _constraints(meta: Mapping[str, Any]) -> str:
    parts = []
    if meta.get("choices") is not None:
        parts.append("one of " + ", ".join(map(str, meta["choices"])))
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        parts.append(f"{lo} to {hi}")
    elif lo is not None:
        parts.append(f">= {lo}")
    elif hi is not None:
        parts.append(f"<= {hi}")
    return "; ".join(parts)


class ConfigKey(typing.NamedTuple):
    """One key of a schema (see :func:`describe`)."""

    key: str
    type: str
    default: str
    help: str


def describe(cls: type, prefix: str = "") -> list[ConfigKey]:
    """``(key, type, default, help)`` rows for every key of a schema, for docs, ``--help``
    and ``spap config show``. ``type`` holds the annotation and the key's constraints
    (``int, >= 1``; ``str, one of fp32, bf16, fp16``); ``default`` is its ``repr``."""
    rows: list[ConfigKey] = []
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
        tp = type_name(hints[f.name])
        extra = _constraints(f.metadata)
        rows.append(
            ConfigKey(key, f"{tp}, {extra}" if extra else tp, default, f.metadata.get("help", ""))
        )
    return rows
