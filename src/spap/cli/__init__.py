"""The ``spap`` command: parses arguments, then calls the library modules.

Each subcommand lives in its own module under ``spap.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
namespace, returning an exit code or None).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

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
    "report",
    "config",
    "app",
    "push",
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
    parser.add_argument("--threads", type=_threads_count, default=None, help=THREADS_HELP)
    for name in COMMANDS:
        importlib.import_module(f"spap.cli.{name}").register(sub)
    for command in sub.choices.values():  # `spap train ... --threads 1` as well
        _add_threads_option(command)
    return parser


THREADS_HELP = (
    "PyTorch CPU threads per process (default: OMP_NUM_THREADS if set, else the cores this "
    "process may use by CPU affinity and cgroup CPU quota, divided among torchrun's local "
    "processes; for `spap train` the same as run.threads=N)"
)


def _threads_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _add_threads_option(command: argparse.ArgumentParser) -> None:
    """``--threads`` after the subcommand too; it leaves the value given before it alone
    unless given again (default SUPPRESS: argparse copies a subcommand's defaults over)."""
    action = command._option_string_actions.get("--threads")
    if action is None:
        command.add_argument(
            "--threads", type=_threads_count, default=argparse.SUPPRESS, help=THREADS_HELP
        )
    else:  # a subcommand of its own with --threads (spap demo): same value, same rule
        action.default, action.type, action.help = argparse.SUPPRESS, _threads_count, THREADS_HELP


def quiet_openmp_wait(environ: dict[str, str] | None = None) -> None:
    """Let idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``)
    unless the environment already says how they wait. Takes effect only in a process that
    has not imported PyTorch yet: on a machine whose cores other work keeps busy, spinning
    threads make every training step several times slower (docs/training.md)."""
    env = os.environ if environ is None else environ
    if not any(k in env for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")):
        env["OMP_WAIT_POLICY"] = "PASSIVE"


def _apply_threads(args: argparse.Namespace) -> int | None:
    """The one thread rule (:func:`spap.devices.set_threads`), before the command runs;
    for ``spap train`` a ``--threads`` becomes ``run.threads`` (stored with the run).
    Returns the count to restore afterwards when PyTorch was already in use (``main``
    called from Python)."""
    previous = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    from spap.devices import set_threads

    threads = getattr(args, "threads", None)
    if (
        threads is not None
        and args.command == "train"
        and isinstance(getattr(args, "overrides", None), list)
    ):
        args.overrides = [*args.overrides, f"run.threads={threads}"]
    set_threads(threads)
    return previous


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device``: where a command runs its networks (the rule of :mod:`spap.devices`)."""
    parser.add_argument(
        "--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)"
    )


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    """``--runtime``: a generator run in PyTorch or in ONNX Runtime."""
    parser.add_argument(
        "--runtime",
        default="torch",
        choices=("torch", "onnxruntime"),
        help="run the generator in PyTorch (default) or in ONNX Runtime on the CPU (exported "
        "once, cached beside the checkpoint; PyTorch where onnxruntime is not installed and "
        "for --attention maps)",
    )


@contextlib.contextmanager
def progress_bar(enabled: bool, **tqdm_options: Any) -> Iterator[Callable[[int, Any], None]]:
    """A ``progress(done, total)`` callback that draws a tqdm bar (``tqdm_options``: its
    ``unit``, ``desc``, ...), opened at the first call, when the total is known, and closed
    on leaving the block; with ``enabled`` false it draws nothing."""
    bar = None

    def progress(done: int, total: Any) -> None:
        nonlocal bar
        if not enabled:
            return
        if bar is None:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, **tqdm_options)
        bar.n = done
        bar.refresh()

    try:
        yield progress
    finally:
        if bar is not None:
            bar.close()


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
        takes_overrides = isinstance(getattr(args, "overrides", None), list)
        unknown = [a for a in extra if not _is_override(a)] if takes_overrides else extra
        if unknown:  # name only what is wrong, not the valid key=value words around it
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.overrides = [*args.overrides, *extra]
    return args


def check_output_folder(path: str | Path, option: str = "--output") -> None:
    """Fail in one line, before any work, when ``path`` cannot be (or become) a folder: it
    is a file or a broken link, or one of its parents is a file."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise SpapError(f"{option} {p} is a broken link; name a folder (new or existing)")
    if p.exists() and not p.is_dir():
        raise SpapError(
            f"{option} {p} is a file, not a folder; name a folder (new or existing) to write into"
        )
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise SpapError(f"{option} {p} cannot be created: {parent} is a file, not a folder")


#: Optional packages -> the extra that installs them (pyproject.toml).
EXTRAS = {
    "tensorboard": "train",
    "torch_fidelity": "eval",
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "export",
    "huggingface_hub": "hub",
    "gradio": "app",
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


def _ignore_file_size_signal() -> None:
    """Under a file-size limit (``ulimit -f``) a write past it raises SIGXFSZ, whose default
    kills the process without a word; ignored, the write fails with EFBIG instead, which
    the command reports in one line (``could not write ...: file too large``)."""
    if hasattr(signal, "SIGXFSZ"):
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def main(argv: Sequence[str] | None = None) -> int:
    quiet_openmp_wait()  # before anything imports torch
    _ignore_file_size_signal()
    parser = build_parser()
    args = parse_args(parser, argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous_threads = None
    try:
        previous_threads = _apply_threads(args)
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
    finally:
        if previous_threads is not None:
            sys.modules["torch"].set_num_threads(previous_threads)
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
