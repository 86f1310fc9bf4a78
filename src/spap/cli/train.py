"""``spap train cyclegan|gan``: build the config, then run the shared training loop."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from spap.errors import Preempted, SpapError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a CycleGAN or an unconditional GAN",
        description="Train a CycleGAN (unpaired translation) or a GAN (image synthesis). "
        "Under torchrun every process runs this command; rank 0 writes the run folder.",
    )
    p.add_argument("task", choices=("cyclegan", "gan"), help="what to train")
    p.add_argument("--data", required=False, help="dataset folder (sets data.root)")
    p.add_argument("--out", required=True, help="run folder: config, checkpoints, samples, logs")
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
    from spap.train.checkpoint import list_checkpoints, load_for_resume
    from spap.train.loop import run
    from spap.train.registry import get_task

    task_cls = get_task(args.task)
    out = Path(args.out)
    base = state = None
    if args.resume:
        if not list_checkpoints(out):
            raise SpapError(f"--resume: {out} holds no checkpoint to resume from")
        state = load_for_resume(out, kind=args.task)
        base = state["config"] if state is not None else None
    elif list_checkpoints(out):
        raise SpapError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    cfg = build_config(get_system(args.task), args, base)  # validated before anything is written
    if getattr(cfg, "data", None) is not None and getattr(cfg.data, "root", None) in (None, ""):
        raise SpapError("no dataset: pass --data DIR (or set data.root)")
    _check_writable(out)
    try:
        summary = run(task_cls, cfg, out, resume=args.resume, resume_state=state)
    except Preempted as exc:
        log.warning("%s", exc)
        return 128 + int(exc.signum)
    log.info("finished at step %d; checkpoints in %s", summary["step"], summary["checkpoint"])
    return 0
