"""The ``spap`` command: parses arguments, then calls the library modules.

Each subcommand lives in its own module under ``spap.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
namespace, returning an exit code or None).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Sequence

from spap import __version__
from spap.errors import SpapError

# Subcommand modules, in the order `spap --help` lists them.
COMMANDS: tuple[str, ...] = (
    "train",
    "translate",
    "sample",
    "export",
    "eval",
    "seg",
    "data",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spap",
        description="Spatial Pyramid Attentive Pooling: GAN image synthesis and "
        "unpaired image-to-image translation.",
    )
    parser.add_argument("--version", action="version", version=f"spap {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"spap.cli.{name}").register(sub)
    return parser


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` words may follow or sit between options.

    argparse binds a ``nargs="*"`` positional once, at its first position, so the
    ``key=value`` words of ``spap train gan --data D --out R train.lr=1e-4`` come back as
    unrecognised arguments; they are appended (in order) to the subcommand's ``overrides``.
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        if isinstance(getattr(args, "overrides", None), list) and all(map(_is_override, extra)):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


#: Optional packages -> the extra that installs them (pyproject.toml).
EXTRAS = {
    "tensorboard": "train",
    "torch_fidelity": "eval",
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "export",
}


def _missing_extra(exc: ModuleNotFoundError) -> str | None:
    """``"... needs torch-fidelity: pip install 'spap[eval]'"`` for an optional package."""
    top = (exc.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    return f"this needs {top.replace('_', '-')}, which is not installed: pip install 'spap[{EXTRAS[top]}]'"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _os_error(exc: OSError) -> str:
    """``[Errno 13] Permission denied: 'x'`` -> ``x: permission denied``."""
    what = (exc.strerror or _one_line(exc)).rstrip(".")
    what = what[:1].lower() + what[1:]
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{' -> '.join(names)}: {what}" if names else what


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except SpapError as exc:
        print(f"spap {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        hint = _missing_extra(exc)
        if hint is None or args.verbose:
            raise
        print(f"spap {args.command}: error: {hint}", file=sys.stderr)
        return 2
    except OSError as exc:  # missing/unwritable files, full disk: the user's environment
        if args.verbose:
            raise
        print(f"spap {args.command}: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a second SIGINT/SIGTERM during training, or Ctrl-C
        signum = int(getattr(exc, "signum", signal.SIGINT))
        print(f"spap {args.command}: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
