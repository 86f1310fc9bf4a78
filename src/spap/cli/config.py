"""``spap config list|show``: the shipped configs, and every key of a task's config.

``spap config show cyclegan`` lists every key of the CycleGAN config with its type, default
and help; ``spap config show cyclegan/facades_spap`` (a shipped config or any YAML file)
shows the values the file sets, and ``key=value`` words after it apply on top, as they do
for ``spap train``. ``spap train TASK ... --print-config`` prints the resolved config of a
whole training command line (flags, ``--resume`` included) as YAML without training.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from spap.errors import ConfigError

FORMATS = ("table", "yaml", "markdown")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="list the shipped configs; show every key of a task's config",
        description="Config discovery: the keys of each task (type, default, help), the "
        "values of a config file, the resolved config of overrides. `spap train TASK ... "
        "--print-config` prints the resolved config of a training command line.",
    )
    config_sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    ls = config_sub.add_parser(
        "list",
        help="the shipped configs (names for --config) and what each sets up",
        description="The shipped configs, by the name `spap train --config` takes, with the "
        "first line of each file's comment.",
    )
    ls.set_defaults(func=list_main)
    show = config_sub.add_parser(
        "show",
        help="every key of a task's config: type, default (or a config file's value), help",
        description="Every key of a task's config, one line each: key, type (with its "
        "allowed values or range), value, help. TARGET is a task (cyclegan, gan: the "
        "defaults) or a config (a shipped name such as cyclegan/facades_spap, or a YAML "
        "file: its values, marked with the default they replace). key=value words apply "
        "on top, as for `spap train`.",
        epilog="examples: spap config show cyclegan | grep lr;  spap config show "
        "gan/celebahq128_spap_c2f --format yaml;  spap config show cyclegan train.lr=1e-4",
    )
    show.add_argument(
        "target", metavar="TASK_OR_CONFIG", help="cyclegan | gan | a config name or file"
    )
    show.add_argument(
        "--kind",
        choices=("cyclegan", "gan"),
        help="the task of a config file outside the shipped configs (default: the schema "
        "the file fits)",
    )
    show.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (default): one line per key; yaml: the resolved config as `spap train` "
        "would use it; markdown: a key | type | default | meaning table",
    )
    show.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override keys, e.g. train.lr=1e-4"
    )
    show.set_defaults(func=show_main)


# ----------------------------------------------------------------------------- helpers


def config_yaml(cfg: Any) -> str:
    """The resolved config ``cfg`` as YAML (what ``RUN_DIR/config.yaml`` holds)."""
    import yaml

    from spap.config import to_dict

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _kind_of(path: Path, data: dict[str, Any], kind: str | None) -> str:
    """The task a config file is for: ``kind``, else the shipped folder it lies in, else the
    one schema it fits."""
    from spap.config import CONFIG_DIR, from_dict
    from spap.systems import SYSTEMS

    if kind is not None:
        return kind
    try:
        folder = path.resolve().relative_to(CONFIG_DIR).parts[0]
    except ValueError:
        folder = ""
    if folder in SYSTEMS:
        return folder
    fits, errors = [], []
    for name, system in SYSTEMS.items():
        try:
            from_dict(system.config_class, data)
            fits.append(name)
        except ConfigError as exc:
            errors.append(f"as a {name} config: {exc}")
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise ConfigError(f"{path} fits no task's config ({'; '.join(errors)})")
    raise ConfigError(f"{path} fits both {' and '.join(fits)} configs; pass --kind")


def resolve_target(
    target: str, overrides: typing.Sequence[str] = (), kind: str | None = None
) -> tuple[str, Any, str]:
    """(kind, resolved config, source) of ``spap config show TARGET key=value ...``."""
    from spap.config import from_dict, merge, parse_overrides, read_yaml, resolve_config_path
    from spap.systems import SYSTEMS

    if target in SYSTEMS and not Path(target).is_file():
        if kind is not None and kind != target:
            raise ConfigError(f"--kind {kind} contradicts the task {target}")
        kind, data, source = target, {}, "defaults + key=value" if overrides else "defaults"
    else:
        path = resolve_config_path(target)
        data = read_yaml(path)
        kind = _kind_of(path, data, kind)
        source = target
    data = merge(data, parse_overrides(overrides))
    return kind, from_dict(SYSTEMS[kind].config_class, data), source


def _sections(cls: type) -> dict[str, str]:
    """Section name -> the first line of its schema's docstring."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out[f.name] = (tp.__doc__ or "").strip().splitlines()[0] if tp.__doc__ else ""
    return out


def _value(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def key_rows(cfg: Any) -> list[tuple[str, str, str, str, str]]:
    """(key, type, value, default, help) for every key of a resolved config (values and
    defaults as ``repr``)."""
    from spap.config import describe

    return [
        (row.key, row.type, repr(_value(cfg, row.key)), row.default, row.help)
        for row in describe(type(cfg))
    ]


def format_table(cfg: Any, kind: str, source: str) -> str:
    """One line per key (grep-friendly: key, value, type, help), grouped by section with
    each section's summary; a value other than the default says which default it replaces."""
    rows = key_rows(cfg)
    changed = sum(1 for r in rows if r[2] != r[3])
    head = f"{kind} config ({source}): {len(rows)} keys"
    if source != "defaults":
        head += f", {changed} not at their default"
    lines = [head, "set one with key=value (e.g. train.lr=1e-4) or in a --config YAML file"]
    wk = max(len(r[0]) for r in rows)
    wt = min(30, max(len(r[1]) for r in rows))
    wv = min(24, max(len(r[2]) for r in rows))
    sections = _sections(type(cfg))
    current = None
    for key, tp, value, default, help_ in rows:
        section = key.split(".")[0]
        if section != current:
            current = section
            lines += ["", f"{section}: {sections.get(section, '')}".rstrip(": ")]
        note = f" [default {default}]" if value != default else ""
        lines.append(f"  {key:<{wk}}  {value:<{wv}}  {tp:<{wt}}  {help_}{note}".rstrip())
    return "\n".join(lines) + "\n"


def format_markdown(cfg: Any, source: str = "defaults") -> str:
    """A ``key | type | default | meaning`` table (``value`` instead of ``default`` for the
    values of a config file)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    column = "default" if source == "defaults" else "value"
    lines = [f"| key | type | {column} | meaning |", "|---|---|---|---|"]
    for key, tp, value, _default, help_ in key_rows(cfg):
        lines.append(f"| `{key}` | {cell(tp)} | `{cell(value)}` | {cell(help_)} |")
    return "\n".join(lines) + "\n"


def task_help(kind: str, width: int | None = None) -> str:
    """The part of ``spap train KIND --help`` that is the task's own: what it trains, its
    data, where its config keys are listed, the shipped configs (wrapped to ``width``,
    default the terminal's)."""
    import shutil
    import textwrap

    from spap.config import describe, shipped_configs
    from spap.systems import get_system

    width = width or max(40, shutil.get_terminal_size().columns - 2)
    cls = get_system(kind).config_class
    sections = _sections(cls)
    n = len(describe(cls))
    configs = [c for c in shipped_configs() if c.split("/")[0] == kind]
    commands = [
        (f"spap config show {kind}", "every key: type, default, help"),
        (f"spap config show {configs[0] if configs else kind}", "a shipped config's values"),
        (f"spap train {kind} ... --print-config", "the resolved config, without training"),
    ]
    w = max(len(c) for c, _ in commands)

    def para(text: str) -> str:
        return textwrap.fill(text, width, subsequent_indent="  ")

    return "\n".join(
        [
            para((cls.__doc__ or kind).strip()),
            para(f"data (--data DIR): {sections.get('data', '')}"),
            "",
            para(
                f"config: {n} keys in the sections {', '.join(sections)}; set any of them "
                "with key=value after the task name or in a --config YAML file:"
            ),
            *(f"  {c:<{w}}  {what}" for c, what in commands),
            para(f"shipped configs (--config NAME): {', '.join(configs)}"),
        ]
    )


# ----------------------------------------------------------------------------- commands


def list_main(args: argparse.Namespace) -> int:
    from spap.config import resolve_config_path, shipped_configs

    names = shipped_configs()
    width = max(len(n) for n in names)
    for name in names:
        first = ""
        for line in resolve_config_path(name).read_text().splitlines():
            if line.startswith("#"):
                first = line.lstrip("# ").strip()
                break
        print(f"{name:<{width}}  {first}".rstrip())
    print("\nspap config show NAME lists every key with the value NAME gives it.")
    return 0


def show_main(args: argparse.Namespace) -> int:
    kind, cfg, source = resolve_target(args.target, args.overrides, args.kind)
    if args.format == "yaml":
        print(config_yaml(cfg), end="")
    elif args.format == "markdown":
        print(format_markdown(cfg, source), end="")
    else:
        print(format_table(cfg, kind, source), end="")
    return 0
