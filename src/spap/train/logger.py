"""What a run shows and records on rank 0: the progress bar, TensorBoard scalars and
images, and the sample grids (``samples/step_NNNNNNN.png``)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from spap.config import RunConfig, parse_yaml
from spap.errors import ConfigError
from spap.viz.grid import rows_grid, save_grid

__all__ = ["ProgressLogger"]

log = logging.getLogger(__name__)


class ProgressLogger:
    """Progress bar, TensorBoard and sample grids, on rank 0 only (``enabled``); a no-op
    elsewhere. Use it as a context manager around the loop: while it is open, log records
    are printed above the progress bar instead of onto it."""

    def __init__(
        self, run_dir: Path, run: RunConfig, total: int, start: int, enabled: bool
    ) -> None:
        self.enabled = enabled
        self.run = run
        self.run_dir = run_dir
        self.writer = None
        self.bar = None
        self._write_failed = False
        self._redirect = contextlib.ExitStack()
        self.wandb = None
        if not enabled:
            return

        if run.logger in ("tensorboard", "both"):
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - optional (spap[train])

                self.writer = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("tensorboard not installed: no TensorBoard logs")
        if run.logger in ("wandb", "both"):
            self.wandb = _start_wandb(run_dir)
        self.bar = tqdm(total=total, initial=start, desc="train", unit="it", dynamic_ncols=True)
        self.t0 = time.perf_counter()
        self.images = 0

    def __enter__(self) -> ProgressLogger:
        if self.bar is not None:
            self._redirect.enter_context(logging_redirect_tqdm(tqdm_class=type(self.bar)))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def step(self, step: int, losses: dict[str, float] | None, images: int) -> None:
        """After iteration ``step`` (counted from 1) on ``images`` images (all ranks);
        ``losses`` None: not read back this iteration (the bar keeps the last ones shown,
        nothing is written to TensorBoard)."""
        if not self.enabled:
            return
        self.images += images
        rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
        if self.bar is not None:
            if losses is not None:
                post = {k: f"{v:.3f}" for k, v in list(losses.items())[:6]}
                post["img/s"] = f"{rate:.2f}"
                self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
        if losses is None:
            return
        if self.writer is not None and (step % self.run.log_every == 0 or step == 1):
            for k, v in losses.items():
                self.writer.add_scalar(f"loss/{k}", v, step)
            self.writer.add_scalar("perf/images_per_s", rate, step)
        if self.wandb is not None and (step % self.run.log_every == 0 or step == 1):
            values = {f"loss/{k}": v for k, v in losses.items()}
            values["perf/images_per_s"] = rate
            self.wandb.log(values, step=step)

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_scalar(name, value, step)
        if self.enabled and self.wandb is not None:
            self.wandb.log({name: value}, step=step)

    def visuals(self, visuals: dict[str, torch.Tensor], step: int) -> Path | None:
        """Write the sample grid of ``visuals`` (rows of images in [-1, 1]); its path, or
        None when nothing was written (a failed write warns once and the run goes on)."""
        if not self.enabled or not visuals:
            return None

        grid = rows_grid(visuals)
        path = self.run_dir / "samples" / f"step_{step:07d}.png"
        try:
            save_grid(grid, path)
        except OSError as exc:  # samples are not worth a run: warn, go on (checkpoints decide)
            if not self._write_failed:
                log.warning("could not write the sample grid %s: %s", path, exc.strerror or exc)
            self._write_failed = True
            path = None
        if self.writer is not None:
            self.writer.add_image("samples", (grid + 1) / 2, step)
        return path

    def close(self) -> None:
        self._redirect.close()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _start_wandb(run_dir: Path) -> Any:
    """A Weights & Biases run named after the run folder, its files in ``RUN/wandb``
    (``WANDB_MODE=offline``: nothing leaves the machine; ``wandb sync`` uploads later)."""
    try:
        import wandb  # noqa: PLC0415 - optional (pip install wandb)
    except ImportError:
        log.warning("run.logger asks for wandb, which is not installed (pip install wandb)")
        return None
    config = None
    with contextlib.suppress(OSError, UnicodeDecodeError, ConfigError):
        config = parse_yaml((run_dir / "config.yaml").read_text(), str(run_dir / "config.yaml"))
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", "spap"),
        name=run_dir.name,
        dir=str(run_dir),
        config=config,
        resume="allow",
        id=None,
    )
