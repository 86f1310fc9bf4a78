"""A tiny image task for the reliability tests, with hooks to make steps slow, hang, or
produce NaN/Inf losses and gradients.

It reads images through the real data package (:class:`spap.data.ImageFolderDataset`) and
trains a two-layer conv net to reproduce them, through the real training loop. Subprocess
tests run it behind the real ``spap train`` command with ``toyrun.py``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spap.config import RunConfig, option
from spap.errors import ConfigError
from spap.systems import System
from spap.train.context import RunContext
from spap.train.task import Task

#: Every task built in this process, newest last (in-process tests inspect ``seen``).
INSTANCES: list[ToyTask] = []


@dataclasses.dataclass
class ToyData:
    root: str | None = option(None, "image folder")
    size: int = option(8, "crop size", min=4)
    load_size: int | None = option(None, "resize target (default: size)", min=1)

    def validate(self) -> None:
        if self.load_size is not None and self.size > self.load_size:
            raise ConfigError(
                f"data.size ({self.size}) is larger than data.load_size ({self.load_size})"
            )


@dataclasses.dataclass
class ToyTrain:
    lr: float = option(0.01, "Adam learning rate", min=0.0)
    batch_size: int = option(2, "images per step", min=1)
    epochs: int = option(2, "epochs of the full schedule", min=1)
    width: int = option(4, "hidden channels", min=1)
    ballast: int = option(0, "extra trained parameters (makes checkpoints big)", min=0)
    sleep: float = option(0.0, "seconds to sleep in every step", min=0.0)
    hang_at: int = option(-1, "step that touches train.hang_file, then sleeps 120 s")
    hang_file: str = option("", "file touched when the hanging step starts")
    bad_at: int = option(-1, "step whose loss (or gradient) is made non-finite")
    bad_value: str = option("nan", "nan | inf", choices=("nan", "inf"))
    bad_where: str = option("loss", "loss | grad", choices=("loss", "grad"))
    clip_grad_norm: float | None = option(None, "clip gradients to this global L2 norm", min=0.0)


@dataclasses.dataclass
class ToyConfig:
    run: RunConfig = option(default_factory=RunConfig)
    data: ToyData = option(default_factory=ToyData)
    train: ToyTrain = option(default_factory=ToyTrain)


def toy_net(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.Tanh(), nn.Conv2d(width, 3, 3, padding=1)
    )


def apply_size(cfg_dict: dict[str, Any], size: int) -> None:
    cfg_dict.setdefault("data", {})["size"] = size


class ToyTask(Task):
    kind = "toy"
    config_class = ToyConfig

    def __init__(self, cfg: ToyConfig, ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        tc = cfg.train
        self.net = ctx.prepare(toy_net(tc.width))
        self.ballast = nn.Parameter(torch.zeros(tc.ballast, device=ctx.device))
        params = [*self.net.parameters()] + ([self.ballast] if tc.ballast else [])
        self.opt = torch.optim.Adam(params, lr=tc.lr)
        self.batch_size = tc.batch_size
        self.seen: list[str] = []  # image paths used, in order (in-process tests read it)
        INSTANCES.append(self)

    def build_dataset(self) -> torch.utils.data.Dataset:
        from spap.data import ImageFolderDataset

        dc = self.cfg.data
        return ImageFolderDataset(
            dc.root, size=dc.size, load_size=dc.load_size, seed=self.cfg.run.seed
        )

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.cfg.train.epochs * steps_per_epoch

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        tc = self.cfg.train
        self.seen.extend(batch["path"])
        if tc.sleep:
            time.sleep(tc.sleep)
        if step == tc.hang_at:
            Path(tc.hang_file).touch()
            time.sleep(120)
        x = self.ctx.to_device(batch["image"])
        noise = 0.01 * torch.randn(x.shape)  # the global RNG: restored on resume
        with self.ctx.autocast():
            loss = ((self.net(x + noise.to(x.device)) - x) ** 2).mean()
        if tc.ballast:
            loss = loss + 1e-3 * (self.ballast - 1).square().mean()
        if step == tc.bad_at:
            bad = float(tc.bad_value)
            if tc.bad_where == "loss":
                loss = loss * bad
            else:  # a finite loss (+ 0) with a non-finite gradient (sqrt' at 0 is inf)
                w = next(self.net.parameters())
                zero = 0 * w.sum() if tc.bad_value == "nan" else (w - w.detach()).sum()
                loss = loss + zero.sqrt()  # nan: d/dw = inf * 0; inf: d/dw = inf * 1
        self.ctx.optimize(loss, self.opt, "loss_rec", max_norm=tc.clip_grad_norm)
        return {"rec": float(loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        models = {"net": self.net.state_dict()}
        if self.cfg.train.ballast:
            models["ballast"] = {"w": self.ballast.detach()}
        return {"models": models, "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["models"]["net"])
        if self.cfg.train.ballast:
            with torch.no_grad():
                self.ballast.copy_(state["models"]["ballast"]["w"])
        self.opt.load_state_dict(state["opt"])


class CliToyTask(ToyTask):
    """The toy task under the name ``spap train gan`` uses (see ``toyrun.py``)."""

    kind = "gan"


#: The toy's config schema under the name ``gan``, for the command line (see ``toyrun.py``):
#: register it in :data:`spap.systems.SYSTEMS` next to ``CliToyTask`` in the task registry.
CLI_TOY_SYSTEM = System(
    kind="gan",
    config_class=ToyConfig,
    model_config_class=ToyTrain,
    apply_size=apply_size,
    build_networks=lambda model: {"net": toy_net(model.width)},
)
