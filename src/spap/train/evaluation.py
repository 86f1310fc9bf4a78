"""Evaluation during training, the ``best`` checkpoint, and attention health, for every task.

:class:`RunMonitor` is what the loop calls after each iteration. Every ``run.eval_every``
iterations (and after the last one) rank 0 evaluates the generators on the validation
images and logs ``eval/<metric>`` scalars; the value of ``run.best_metric`` decides whether
the state is the best so far, and then the loop writes a checkpoint that becomes
``checkpoints/best`` (a pointer file naming ``best_step_NNNNNNN.pt``, beside ``latest``; the
file is never removed by ``run.keep_last``). Every ``run.log_every`` iterations it logs the
attention-health scalars of :mod:`spap.train.health`.

Validation images (``run.eval_images`` per domain): the dataset's ``val`` phase when it has
one (``valA``/``valB`` or ``val/``; :func:`spap.data.scenes.write_scenes` writes one), else
the last files of the training phase (sorted by name; those stay in training: give the
dataset a ``val`` phase for a held-out split). The test split is never read. Items are
taken without flips. Each evaluation logs ``perf/eval_seconds`` and ``perf/eval_fraction``
(the share of the process's wall time spent evaluating).

Built-in metrics (no download, CycleGAN):

- ``structure_<dir>``: SSIM between the Sobel edge maps of each input and its translation
  (grey images, edge magnitudes scaled to [0, 1] per image; 1: the same edges). It measures
  whether the translation keeps the input's layout, not whether it looks like the target
  domain;
- ``cycle_<dir>``: mean absolute difference between each input and its reconstruction
  through both generators (images in [-1, 1]; lower is better).

Further metrics (FID/KID of each direction or of the GAN's EMA samples, FCN-score) come
from a ``feature_metrics`` callable the caller hands to :class:`ValidationEvaluator`
(``spap train`` builds it with :func:`spap.eval.intraining.feature_metrics`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from spap.config import RunConfig
from spap.data import build_dataset, detect_layout
from spap.errors import ConfigError
from spap.files import atomic_write
from spap.models.sngan import latents
from spap.train import distributed as D
from spap.train.checkpoint import checkpoint_dir
from spap.train.health import HealthMonitor

__all__ = [
    "Evaluator",
    "RunMonitor",
    "ValidationEvaluator",
    "edge_ssim",
    "lower_is_better",
    "validation_images",
]

log = logging.getLogger(__name__)

#: feature_metrics(name, real, fake) -> {metric: value}; ``name`` is "AtoB", "BtoA" or "gan".
FeatureMetrics = Callable[[str, Tensor, Tensor], dict[str, float]]
_EVAL_SEED = 0x5EA1  # noise of the GAN's evaluation samples


class Evaluator(Protocol):
    def evaluate(self, task: Any, step: int) -> dict[str, float]:
        """Metric name (without ``eval/``) -> value, for the task's current weights."""
        ...


def lower_is_better(metric: str) -> bool:
    """fid, kid, cycle, identity and loss metrics are minimised; everything else maximised."""
    base = metric.split("[")[0].rsplit("/", 1)[-1]
    return bool(re.match(r"(fid|kid|cycle|identity|loss)", base))


# ----------------------------------------------------------------------------- metrics


def _gaussian(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def _ssim(x: Tensor, y: Tensor) -> Tensor:
    """SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5) of (N, 1, H, W) maps in
    [0, 1], per image."""
    size = min(11, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2
    w = _gaussian(size).to(x)
    c1, c2 = 0.01**2, 0.03**2
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mx**2
    syy = F.conv2d(y * y, w) - my**2
    sxy = F.conv2d(x * y, w) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3))


def _edges(x: Tensor) -> Tensor:
    grey = x.float()[:, :3].mean(dim=1, keepdim=True)
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).to(grey)
    gx = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), k[None, None])
    gy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), k.t()[None, None])
    mag = (gx**2 + gy**2).sqrt()
    return mag / mag.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def edge_ssim(x: Tensor, y: Tensor) -> float:
    """Mean SSIM of the Sobel edge maps of ``x`` and ``y`` (N, C, H, W) in [-1, 1]."""
    return float(_ssim(_edges(x), _edges(y)).mean())


# ----------------------------------------------------------------------------- data


def _stack(dataset: Any, indices: range, keys: tuple[str, ...]) -> dict[str, Tensor]:
    items = [dataset[i] for i in indices]
    return {k: torch.stack([it[k] for it in items]) for k in keys}


def validation_images(cfg: Any, kind: str, n: int) -> tuple[dict[str, Tensor], str]:
    """The validation images (see the module doc) and where they came from."""
    dc = cfg.data
    if kind == "gan":
        ds = build_dataset(
            "folder", dc.root, size=dc.size, flip=False, seed=0, value_range=dc.value_range
        )
        k = min(n, len(ds))
        return _stack(ds, range(len(ds) - k, len(ds)), ("image",)), (
            f"the last {k} images of {dc.root} (sorted by name)"
        )
    root = Path(dc.root)
    has_val = (root / "valA").is_dir() or (root / "valB").is_dir() or (root / "val").is_dir()
    phase = "val" if has_val else dc.phase
    layout = dc.layout if dc.layout != "auto" else detect_layout(root, phase)
    kwargs: dict[str, Any] = dict(
        direction=dc.direction,
        load_size=dc.load_size,
        crop_size=dc.crop_size,
        preprocess=dc.preprocess,
        flip=False,
        seed=0,
        interpolation=dc.interpolation,
        channels_A=cfg.model.input_nc,
        channels_B=cfg.model.output_nc,
        value_range=dc.value_range,
    )
    if layout == "unaligned":
        kwargs["serial_batches"] = True
    ds = build_dataset(layout, root, phase, **kwargs)
    k = min(n, len(ds))
    idx = range(k) if has_val else range(len(ds) - k, len(ds))
    where = f"{k} images of the val phase" if has_val else f"the last {k} {phase} items"
    return _stack(ds, idx, ("A", "B")), f"{where} of {root}"


@contextlib.contextmanager
def _eval_mode(nets: Mapping[str, torch.nn.Module]):
    modes = {k: n.training for k, n in nets.items()}
    try:
        for n in nets.values():
            n.eval()
        yield
    finally:
        for k, n in nets.items():
            n.train(modes[k])


def _batched(net: torch.nn.Module, x: Tensor, device: torch.device, bs: int = 16) -> Tensor:
    return torch.cat([net(x[i : i + bs].to(device)).float().cpu() for i in range(0, len(x), bs)])


class ValidationEvaluator:
    """The built-in evaluator: ``run.eval_metrics`` on the validation images.

    ``feature_metrics`` (optional) computes FID/KID/FCN-type metrics from (real, fake)
    image tensors; its keys are logged as it names them (e.g. ``fid_AtoB[inception]``).
    """

    def __init__(
        self,
        cfg: Any,
        kind: str,
        feature_metrics: FeatureMetrics | None = None,
    ) -> None:
        rc: RunConfig = cfg.run
        self.cfg = cfg
        self.kind = kind
        self.metrics = list(rc.eval_metrics)
        known = {"structure", "cycle", "fid", "kid", "fcn"}
        bad = [m for m in self.metrics if m not in known]
        if bad:
            raise ConfigError(
                f"run.eval_metrics: unknown metric {bad[0]!r}; choose from {', '.join(sorted(known))}"
            )
        self.feature_metrics = feature_metrics
        self.images, self.source = validation_images(cfg, kind, rc.eval_images)

    def evaluate(self, task: Any, step: int) -> dict[str, float]:
        device = task.ctx.device
        nets = task.networks()
        out: dict[str, float] = {}
        with torch.no_grad(), _eval_mode(nets):
            if self.kind == "gan":
                if self.feature_metrics is None:  # FID/KID left out (warned): nothing to do
                    return out
                n = len(self.images["image"])
                z = latents(_EVAL_SEED, range(n), self.cfg.model.z_dim)
                fake = _batched(nets["G_ema"], z, device)
                if self.feature_metrics is not None:
                    out.update(self.feature_metrics("gan", self.images["image"], fake))
                return out
            a, b = self.images["A"], self.images["B"]
            for direction, x, target, g, back in (
                ("AtoB", a, b, nets["G_A"], nets["G_B"]),
                ("BtoA", b, a, nets["G_B"], nets["G_A"]),
            ):
                y = _batched(g, x, device)
                if "structure" in self.metrics:
                    out[f"structure_{direction}"] = edge_ssim(x, y)
                if "cycle" in self.metrics:
                    rec = _batched(back, y, device)
                    out[f"cycle_{direction}"] = float((rec - x.float()).abs().mean())
                if self.feature_metrics is not None:
                    extra = self.feature_metrics(direction, target, y)
                    if direction == "AtoB" and "fcn" in self.metrics:
                        # FCN-score: the segmentation of the translation against A's labels
                        extra.update(self.feature_metrics("fcn", x, y))
                    out.update(extra)
        return out


# ----------------------------------------------------------------------------- the monitor


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


class RunMonitor:
    """Evaluation, the best checkpoint and attention health, around the loop.

    The loop calls :meth:`after_step` after each iteration (every rank: the return value,
    "a new best: checkpoint now", is the same on all of them), :meth:`saved` after each
    checkpoint, and stores :meth:`state_dict` in every checkpoint.
    """

    def __init__(
        self,
        task: Any,
        cfg: Any,
        run_dir: Path,
        total: int,
        is_main: bool,
        evaluator: Evaluator | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        rc: RunConfig = cfg.run
        self.rc = rc
        self.task = task
        self.run_dir = Path(run_dir)
        self.total = total
        self.is_main = is_main
        self.health = HealthMonitor(rc, task)
        self.best: dict[str, Any] = {"metric": "", "value": None, "step": -1, "file": ""}
        self.eval_seconds = 0.0
        self.train_t0 = time.perf_counter()
        self._pending_best = False
        self.evaluator = evaluator
        if evaluator is None and rc.eval_every > 0 and is_main:
            self.evaluator = ValidationEvaluator(cfg, task.kind)
        if (
            self.evaluator is not None
            and is_main
            and isinstance(self.evaluator, ValidationEvaluator)
        ):
            log.info("evaluating every %d iterations on %s", rc.eval_every, self.evaluator.source)
        if state:
            self.load_state_dict(state)

    # -- state
    def state_dict(self) -> dict[str, Any]:
        best = dict(self.best)
        best["value"] = float("nan") if best["value"] is None else float(best["value"])
        return {"best": best, "health": self.health.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        best = dict(state.get("best", {}))
        if best:
            v = best.get("value")
            best["value"] = None if v is None or (isinstance(v, float) and math.isnan(v)) else v
            self.best.update(best)
        self.health.load_state_dict(state.get("health", {}))

    # -- per iteration
    def _due(self, step: int) -> bool:
        every = self.rc.eval_every
        return every > 0 and (step % every == 0 or step == self.total)

    def after_step(self, step: int, losses: Mapping[str, float], logger: Any) -> bool:
        """After iteration ``step`` (counted from 1): health every ``run.log_every``,
        evaluation when due. True when the state is the best so far (on every rank)."""
        self.health.losses(step, losses)
        if self.is_main and (step % self.rc.log_every == 0 or step == 1):
            for tag, value in self.health.check(step).items():
                logger.scalar(tag, value, step)
        if not self._due(step):
            return False
        new_best = False
        if self.is_main and self.evaluator is not None:
            t0 = time.perf_counter()
            values = self.evaluator.evaluate(self.task, step)
            seconds = time.perf_counter() - t0
            self.eval_seconds += seconds
            for name, value in values.items():
                logger.scalar(f"eval/{name}", value, step)
            elapsed = time.perf_counter() - self.train_t0
            logger.scalar("perf/eval_seconds", seconds, step)
            logger.scalar("perf/eval_fraction", self.eval_seconds / max(elapsed, 1e-9), step)
            new_best = self._update_best(step, values)
        device = self.task.ctx.device
        self._pending_best = D.any_flag(new_best, device)
        return self._pending_best

    def _pick_metric(self, values: Mapping[str, float]) -> str | None:
        want = self.rc.best_metric
        if want == "auto":
            return next(iter(values), None)
        want = want.removeprefix("eval/")
        for name in values:
            if name == want or name.split("[")[0] == want:
                return name
        return None

    def _update_best(self, step: int, values: Mapping[str, float]) -> bool:
        name = self._pick_metric(values)
        if name is None:
            if values:
                log.warning(
                    "run.best_metric=%s is not among the evaluated metrics (%s): no best "
                    "checkpoint",
                    self.rc.best_metric,
                    ", ".join(values),
                )
            return False
        value = float(values[name])
        if not math.isfinite(value):
            return False
        low = lower_is_better(name)
        old, old_step = self.best.get("value"), self.best.get("step", -1)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
        if old is None or self.best.get("metric") != name or (value < old if low else value > old):
            if old is None or self.best.get("metric") != name:
                log.info("eval at step %d: %s; best %s so far", step, shown, name)
            else:
                log.info(
                    "eval at step %d: %s; new best %s %.4g (step %d had %.4g, better by %.3g)",
                    step,
                    shown,
                    name,
                    value,
                    old_step,
                    old,
                    abs(value - old),
                )
            self.best.update(metric=name, value=value, step=step)
            return True
        log.info(
            "eval at step %d: %s; best stays step %d (%s %.4g, this one worse by %.3g)",
            step,
            shown,
            old_step,
            name,
            old,
            abs(value - old),
        )
        return False

    def saved(self, path: Path | None, step: int) -> None:
        """After a checkpoint of ``step`` was written to ``path`` (rank 0)."""
        if not self._pending_best or path is None or self.best.get("step") != step:
            return
        self._pending_best = False
        folder = checkpoint_dir(self.run_dir)
        target = folder / f"best_{path.name}"
        tmp = folder / f".{target.name}.link.tmp"
        with contextlib.suppress(OSError):
            tmp.unlink()
        try:
            os.link(path, tmp)  # same bytes, no copy; survives keep_last removing `path`
        except OSError:
            atomic_write(tmp, lambda fh: fh.write(path.read_bytes()))
        os.replace(tmp, target)
        previous = _read_text(folder / "best")
        atomic_write(folder / "best", lambda fh: fh.write(target.name.encode()))
        if previous and previous != target.name:
            with contextlib.suppress(OSError):
                (folder / previous).unlink()
        self.best["file"] = target.name

    def summary(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.train_t0
        return {
            "best": dict(self.best),
            "eval_seconds": self.eval_seconds,
            "eval_fraction": self.eval_seconds / max(elapsed, 1e-9),
        }
