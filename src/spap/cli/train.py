"""``spap train cyclegan|gan``: build the config, then run the shared training loop."""

from __future__ import annotations

import argparse
import copy
import logging
import os
from pathlib import Path
from typing import Any

from spap.errors import Preempted, SpapError

log = logging.getLogger(__name__)


class _TaskHelp(argparse.Action):
    """``-h``: with a task before it (``spap train cyclegan -h``), the task's own help."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        kwargs.update(nargs=0, default=argparse.SUPPRESS)
        super().__init__(option_strings, argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, *args: Any) -> None:
        task = getattr(namespace, "task", None)
        if task:
            from spap.cli.config import task_help

            # a copy whose program name holds the task and whose lists leave the task out
            parser, full = copy.copy(parser), parser
            parser.prog = f"{full.prog} {task}"
            parser.formatter_class = argparse.RawDescriptionHelpFormatter
            parser.description = task_help(task)
            parser.epilog = None
            parser._actions = [a for a in full._actions if a.dest != "task"]
            parser._action_groups = []
            for group in full._action_groups:
                group = copy.copy(group)
                group._group_actions = [a for a in group._group_actions if a.dest != "task"]
                parser._action_groups.append(group)
        parser.print_help()
        parser.exit()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a CycleGAN or an unconditional GAN",
        description="Train a CycleGAN (unpaired translation) or a GAN (image synthesis). "
        "Under torchrun every process runs this command; rank 0 writes the run folder.",
        epilog="Each task's own help: spap train cyclegan --help, spap train gan --help; "
        "every config key of a task: spap config show cyclegan|gan.",
        add_help=False,
    )
    p.add_argument("-h", "--help", action=_TaskHelp, help="show this help (after a task: its own)")
    p.add_argument("task", choices=("cyclegan", "gan"), help="what to train")
    p.add_argument("--data", required=False, help="dataset folder (sets data.root)")
    p.add_argument(
        "--out", help="run folder: config, checkpoints, samples, logs (required to train)"
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config of this command line (YAML) and exit without training",
    )
    p.add_argument(
        "--config",
        help="YAML config (a file, or a name under configs/, e.g. cyclegan/facades_spap)",
    )
    p.add_argument("--size", type=int, help="training image size (crop size / resolution)")
    p.add_argument("--steps", type=int, help="stop after N iterations (sets run.steps)")
    p.add_argument("--seed", type=int, help="random seed (sets run.seed)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest good checkpoint",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override any config key, e.g. train.lr=1e-4",
    )
    p.set_defaults(func=main)


def build_config(system: Any, args: argparse.Namespace, base: dict[str, Any] | None = None) -> Any:
    """Schema defaults <- --config file (or the resumed run's config) <- flags <- key=value."""
    from spap.config import from_dict, merge, parse_overrides, read_yaml

    data: dict[str, Any] = dict(base or {})
    if args.config:
        data = merge(data, read_yaml(args.config))
    if args.size is not None:
        system.apply_size(data, args.size)
    flags: dict[str, Any] = {}
    if args.data is not None:
        flags.setdefault("data", {})["root"] = str(args.data)
    if args.steps is not None:
        flags.setdefault("run", {})["steps"] = args.steps
    if args.seed is not None:
        flags.setdefault("run", {})["seed"] = args.seed
    data = merge(merge(data, flags), parse_overrides(args.overrides))
    return from_dict(system.config_class, data)


def _check_writable(out: Path) -> None:
    """Fail now if the run folder cannot be created or written, without creating it (it is
    created once the config, the networks and the dataset are known to be usable)."""
    if out.exists() and not out.is_dir():
        raise SpapError(f"the run folder {out} exists and is not a folder")
    parent = out
    while not parent.exists():  # the nearest existing ancestor must let us create `out`
        if parent.is_symlink():
            raise SpapError(f"cannot create the run folder {out}: {parent} is a broken link")
        parent = parent.parent
    if not parent.is_dir():
        raise SpapError(f"cannot create the run folder {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        what = "is not writable" if parent == out else f"cannot be created in {parent}"
        raise SpapError(f"the run folder {out} {what} (permission denied)")


def main(args: argparse.Namespace) -> int:
    from spap.systems import get_system
    from spap.train.checkpoint import RunLock, list_checkpoints, load_for_resume
    from spap.train.loop import run
    from spap.train.registry import get_task

    task_cls = get_task(args.task)
    if args.out is None and (args.resume or not args.print_config):
        raise SpapError("the following argument is required: --out (the run folder)")
    out = Path(args.out) if args.out is not None else None
    base = state = None
    if out is not None and not args.print_config:
        RunLock(out).check()  # another process trains there: refuse before any work
    if args.resume:
        if not list_checkpoints(out):
            raise SpapError(f"--resume: {out} holds no checkpoint to resume from")
        state = load_for_resume(out, kind=args.task)
        base = _stored_config(get_system(args.task), state) if state is not None else None
    elif not args.print_config and list_checkpoints(out):
        raise SpapError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    cfg = build_config(get_system(args.task), args, base)  # validated before anything is written
    if args.print_config:
        from spap.cli.config import config_yaml

        print(config_yaml(cfg), end="")
        return 0
    if getattr(cfg, "data", None) is not None and getattr(cfg.data, "root", None) in (None, ""):
        raise SpapError("no dataset: pass --data DIR (or set data.root)")
    _check_writable(out)
    evaluator = _evaluator(cfg, args.task, out)
    try:
        summary = _run_naming_checkpoint(
            run,
            state,
            task_cls,
            cfg,
            out,
            resume=args.resume,
            resume_state=state,
            evaluator=evaluator,
            fresh=not args.resume,
        )
    except Preempted as exc:
        log.warning("%s", exc)
        return 128 + int(exc.signum)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: once, not once per rank
        log.info("finished at step %d; checkpoints in %s", summary["step"], summary["checkpoint"])
    return 0


def _run_naming_checkpoint(run: Any, state: dict[str, Any] | None, *args: Any, **kwargs: Any):
    """``run(...)``; a resumed run's config errors (its values come from the checkpoint
    unless overridden) say which checkpoint is being resumed."""
    from spap.errors import ConfigError

    try:
        return run(*args, **kwargs)
    except ConfigError as exc:
        if state is None:
            raise
        raise ConfigError(f"resuming {state.get('path', 'the checkpoint')}: {exc}") from None


def _stored_config(system: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The config a checkpoint was trained with, checked alone first: its errors name the
    checkpoint file (not the command line)."""
    from spap.config import from_dict
    from spap.errors import CheckpointError, ConfigError

    source = state.get("path", "the checkpoint")
    config = state.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: holds no stored config; it cannot be resumed")
    try:
        from_dict(system.config_class, config, unknown="warn", source=source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: its stored config is not usable: {exc}") from None
    return config


def _evaluator(cfg: Any, kind: str, out: Path) -> Any:
    """In-training evaluation with FID/KID/FCN when torch-fidelity is installed (rank 0)."""
    if cfg.run.eval_every <= 0 or int(os.environ.get("RANK", "0")) != 0:
        return None
    from spap.train.evaluation import ValidationEvaluator

    try:
        from spap.eval.intraining import feature_metrics
    except ImportError as exc:  # spap[eval] not installed
        if set(cfg.run.eval_metrics) & {"fid", "kid", "fcn"}:
            log.warning("in-training FID/KID/FCN left out: %s (pip install spap[eval])", exc)
        return ValidationEvaluator(cfg, kind)
    return ValidationEvaluator(cfg, kind, feature_metrics(cfg, out))
