"""The training loop every task shares.

A :class:`Task` (CycleGAN, GAN) builds its networks and says what one iteration does; the
:func:`run` loop around it owns everything else: device and precision, torch.distributed,
deterministic data order, checkpoints (atomic, last K kept, exact resume), pre-emption
signals, NaN/Inf detection, progress bar, TensorBoard and sample grids.

Exact resume: the data order is a pure function of (seed, epoch) and every sample's
augmentation a pure function of (seed, epoch, index) (see :class:`spap.data.sampler.EpochSampler`);
checkpoints hold the position inside the epoch, every RNG state and every optimizer,
scheduler, pool and scaler state. On the CPU, a run stopped at a checkpoint and resumed
ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
import random
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from spap.config import RunConfig, to_dict
from spap.errors import CheckpointError, ConfigError, DataError, SpapError
from spap.train import distributed as D
from spap.train.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointManager,
    atomic_write_bytes,
    load_for_resume,
    resolve_checkpoint,
)

log = logging.getLogger(__name__)


class NonFiniteLossError(SpapError):
    """A loss became NaN or Inf."""


class Preempted(SpapError):
    """The run was stopped by SIGTERM/SIGINT after saving a checkpoint."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class Interrupted(KeyboardInterrupt):
    """A second SIGTERM/SIGINT: stop at once, without waiting for the step to end."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _all_finite_tensors(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite.

    One sum per tensor, then one sum of those: NaN and Inf propagate through sums, so a
    finite total proves every element finite. That is ~15x cheaper on the CPU than an
    inf-norm (a vectorised sum vs an abs-max per tensor). A non-finite total can also come
    from finite values overflowing; the exact per-element check then decides."""
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return True
    total = torch.stack([t.sum(dtype=torch.float32) for t in tensors]).sum()
    if bool(torch.isfinite(total)):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# ----------------------------------------------------------------------------- context


class RunContext:
    """What a task needs from the run: device, precision, distributed helpers, updates."""

    def __init__(self, run: RunConfig, device: torch.device, info: D.DistInfo) -> None:
        self.run = run
        self.device = device
        self.rank = info.rank
        self.world_size = info.world_size
        self.is_main = info.is_main
        self.step = 0
        self.skipped_updates = 0
        #: True when the task's state will be loaded from a checkpoint right after it is built
        #: (tasks skip one-off initialisation such as loading pretrained weights).
        self.resuming = False
        self._scalers: dict[str, torch.amp.GradScaler] = {}
        if run.precision == "fp16" and device.type != "cuda":
            raise ConfigError(
                "run.precision: fp16 needs a CUDA device; use bf16 or fp32 on the CPU"
            )
        if run.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("run.precision: this GPU does not support bf16; use fp16 or fp32")
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[
            run.precision
        ]
        if device.type == "cuda":  # shapes are fixed within a run: autotuning pays off
            torch.backends.cudnn.benchmark = run.cudnn_benchmark

    # -- forward passes
    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for forward passes (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare(self, module: nn.Module) -> nn.Module:
        """Move a network to the device (channels_last, SyncBatchNorm, compile by
        config) and give every rank rank 0's weights. Use the returned module."""
        if D.active() and self.run.sync_batchnorm and self.device.type == "cuda":
            # SyncBatchNorm only runs on CUDA; on CPU ranks keep per-rank batch statistics.
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        module = module.to(self.device)
        if self.run.channels_last:
            module = module.to(memory_format=torch.channels_last)
        D.broadcast_module_(module)
        if self.run.compile:
            try:
                module.compile()
            except Exception as exc:  # compile is an optimisation: never fatal
                log.warning("torch.compile unavailable (%s); running eagerly", exc)
        return module

    def adam(
        self, params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float]
    ) -> torch.optim.Adam:
        """Adam over ``params``: the fused implementation (one kernel per step for all
        tensors) when ``run.fused_optimizer`` and this torch supports it on the device, the
        default otherwise. Fused and default steps agree up to float rounding."""
        params = list(params)
        if self.run.fused_optimizer:
            try:
                return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
            except (RuntimeError, TypeError, ValueError) as exc:  # older torch, other devices
                log.debug("fused Adam unavailable (%s)", exc)
        return torch.optim.Adam(params, lr=lr, betas=betas)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.run.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # -- updates
    def _scaler(self, name: str) -> torch.amp.GradScaler | None:
        if self.run.precision != "fp16":
            return None
        if name not in self._scalers:
            self._scalers[name] = torch.amp.GradScaler("cuda")
        return self._scalers[name]

    def _non_finite(self, msg: str, optimizer: torch.optim.Optimizer) -> bool:
        if self.run.nan_policy == "stop":
            raise NonFiniteLossError(msg + " (set run.nan_policy=skip to skip such updates)")
        log.warning("%s: update skipped", msg)
        self.skipped_updates += 1
        optimizer.zero_grad(set_to_none=True)
        return False

    def optimize(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, name: str) -> bool:
        """One update: finite check, zero_grad, (scaled) backward, gradient averaging across
        ranks, gradient finite check, (unscaled) step. Returns False when the update was
        skipped (``run.nan_policy=skip``); raises :class:`NonFiniteLossError` naming the loss
        and the step under ``run.nan_policy=stop``. Either way no non-finite value ever
        reaches the weights."""
        finite = bool(torch.isfinite(loss.detach()).all())
        if D.any_flag(not finite, self.device):
            value = loss.detach().float()
            value = value.item() if value.numel() == 1 else "not finite"
            return self._non_finite(f"loss {name} is {value} at step {self.step}", optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        optimizer.zero_grad(set_to_none=True)
        scaler = self._scaler(name)
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        if D.active():
            D.all_reduce_mean_([p.grad for p in params if p.grad is not None])
        # A finite loss can still have non-finite gradients (e.g. sqrt at 0); stepping with
        # them would silently turn the weights into NaN. (fp16: the scaler skips such steps.)
        # After the all-reduce the gradients are the same on every rank: so is the decision.
        if scaler is None and not _all_finite_tensors(
            [p.grad for p in params if p.grad is not None]
        ):
            return self._non_finite(
                f"gradient of loss {name} is not finite at step {self.step} "
                f"(loss {float(loss.detach().float().mean()):.6g})",
                optimizer,
            )
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return True

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        D.all_reduce_mean_([t])
        return t

    def barrier(self) -> None:
        D.barrier()

    def scaler_states(self) -> dict[str, Any]:
        return {k: s.state_dict() for k, s in self._scalers.items()}


# ----------------------------------------------------------------------------- task


class Task(abc.ABC):
    """One training system (see ``docs/architecture.md`` for the contract)."""

    kind: ClassVar[str]
    config_class: ClassVar[type]
    batch_size: int

    def __init__(self, cfg: Any, ctx: RunContext) -> None:
        self.cfg = cfg
        self.ctx = ctx

    @staticmethod
    def apply_size(cfg_dict: dict[str, Any], size: int) -> None:
        """Set what ``--size N`` means for this task in a plain config dict."""
        raise NotImplementedError

    @abc.abstractmethod
    def build_dataset(self) -> torch.utils.data.Dataset: ...

    @abc.abstractmethod
    def total_steps(self, steps_per_epoch: int) -> int: ...

    @abc.abstractmethod
    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]: ...

    def on_epoch_end(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called after every complete epoch (learning-rate schedules)."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def visuals(self) -> dict[str, torch.Tensor]:
        return {}


# ----------------------------------------------------------------------------- helpers


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]) + [random.getstate()[2]],
        "python_version": random.getstate()[0],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((state["python_version"], tuple(py[:-1]), py[-1]))
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class SignalGuard:
    """First SIGTERM/SIGINT: ask the loop to checkpoint and stop at the next step
    boundary. Second: stop at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum
        log.warning(
            "received %s: saving a checkpoint at the next step boundary (send again to stop now)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> SignalGuard:
        for s in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _worker_init(_: int) -> None:
    # Workers leave signals to the main process, which checkpoints and shuts them down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _loader(dataset: Any, sampler: Any, batch_size: int, run: RunConfig, device: torch.device):
    from torch.utils.data import DataLoader

    workers = run.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        drop_last=True,
        worker_init_fn=_worker_init if workers > 0 else None,
        # A private generator: creating an iterator must not consume the global RNG,
        # or a resumed run would draw different noise than an uninterrupted one.
        generator=torch.Generator().manual_seed(run.seed),
        prefetch_factor=4 if workers > 0 else None,
    )


class _Logger:
    """Progress bar, TensorBoard scalars/images and sample grids, on rank 0 only."""

    def __init__(
        self, run_dir: Path, run: RunConfig, total: int, start: int, enabled: bool
    ) -> None:
        self.enabled = enabled
        self.run = run
        self.run_dir = run_dir
        self.writer = None
        self.bar = None
        self._write_failed = False
        if not enabled:
            return
        from tqdm.auto import tqdm

        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"))
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            log.warning("tensorboard not installed: no TensorBoard logs")
        self.bar = tqdm(total=total, initial=start, desc="train", unit="it", dynamic_ncols=True)
        self.t0 = time.perf_counter()
        self.images = 0

    def step(self, step: int, losses: dict[str, float], images: int) -> None:
        if not self.enabled:
            return
        self.images += images
        rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
        if self.bar is not None:
            post = {k: f"{v:.3f}" for k, v in list(losses.items())[:6]}
            post["img/s"] = f"{rate:.2f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
        if self.writer is not None and (step % self.run.log_every == 0 or step == 1):
            for k, v in losses.items():
                self.writer.add_scalar(f"loss/{k}", v, step)
            self.writer.add_scalar("perf/images_per_s", rate, step)

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_scalar(name, value, step)

    def visuals(self, visuals: dict[str, torch.Tensor], step: int) -> Path | None:
        if not self.enabled or not visuals:
            return None
        from spap.viz.grid import rows_grid, save_grid

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
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


# ----------------------------------------------------------------------------- loop


def run(
    task_cls: type[Task],
    cfg: Any,
    run_dir: str | Path,
    resume: bool = False,
    *,
    resume_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``task_cls`` with config ``cfg`` into ``run_dir``. Returns a summary dict.

    ``resume`` continues from the run's newest readable checkpoint; ``resume_state`` is
    that checkpoint when the caller has already loaded it (it is not read twice).

    Nothing is written before the networks and the dataset are built: a config the
    networks cannot use, or a dataset without a usable image, leaves ``run_dir`` untouched.
    """
    run_dir = Path(run_dir)
    rc: RunConfig = cfg.run
    info = D.env_info()
    device = D.pick_device(rc.device, info.local_rank)
    D.init(info, rc.dist_backend, device)
    try:
        return _run(task_cls, cfg, run_dir, resume, info, device, resume_state)
    finally:
        D.shutdown()


def _prepare_run_dir(run_dir: Path, cfg: Any) -> None:
    import yaml

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(to_dict(cfg), sort_keys=False).encode()
        atomic_write_bytes(run_dir / "config.yaml", lambda fh: fh.write(text))
    except OSError as exc:
        raise SpapError(f"cannot write the run folder {run_dir}: {exc.strerror or exc}") from None


def _check_weights(task_state: dict[str, Any], step: int, device: torch.device) -> None:
    """Refuse to checkpoint non-finite weights (the last good checkpoint stays ``latest``)."""
    bad = ""
    for net, sd in task_state.get("models", {}).items():
        floats = {k: t for k, t in sd.items() if torch.is_tensor(t) and t.is_floating_point()}
        if not _all_finite_tensors(list(floats.values())):
            bad = next(f"{net}.{k}" for k, t in floats.items() if not torch.isfinite(t).all())
            break
    if D.any_flag(bool(bad), device):
        raise NonFiniteLossError(
            f"weights {bad or '(on another rank)'} are not finite at step {step}; "
            "no checkpoint written, the last good one is kept"
        )


@contextlib.contextmanager
def _name_last_checkpoint(run_dir: Path):
    """A run stopped by a non-finite value or a failed checkpoint write says which
    checkpoint it can be resumed from."""
    try:
        yield
    except (NonFiniteLossError, CheckpointError) as exc:
        try:
            where = f"the last good checkpoint is {resolve_checkpoint(run_dir)}"
        except CheckpointError:
            where = "no checkpoint was saved"
        raise type(exc)(f"{exc}; {where}") from exc


def _run(
    task_cls: type[Task],
    cfg: Any,
    run_dir: Path,
    resume: bool,
    info: D.DistInfo,
    device: torch.device,
    resume_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    rc: RunConfig = cfg.run
    ctx = RunContext(rc, device, info)  # checks precision/device before anything is written
    state = resume_state
    if state is None and resume:
        state = load_for_resume(run_dir, kind=task_cls.kind)

    ctx.resuming = state is not None
    seed_everything(rc.seed)  # identical initial weights on every rank
    task = task_cls(cfg, ctx)
    dataset = task.build_dataset()

    from spap.data.sampler import EpochSampler

    sampler = EpochSampler(
        len(dataset), seed=rc.seed, shuffle=True, num_replicas=info.world_size, rank=info.rank
    )
    if len(sampler) < task.batch_size:
        raise DataError(
            f"the dataset has {len(dataset)} usable items, fewer than one batch of "
            f"{task.batch_size} per process; lower the batch size or add data"
        )
    step, epoch, position = 0, 0, 0
    if state is not None:
        try:
            task.load_state_dict(state["task"])
            step, epoch, position = state["step"], state["epoch"], state["position"]
            rngs = state["runner"]["rng"]
            set_rng_state(rngs[min(info.rank, len(rngs) - 1)])
            for name, scaler_state in state["runner"].get("scalers", {}).items():
                scaler = ctx._scaler(name)
                if scaler is not None:
                    scaler.load_state_dict(scaler_state)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(
                f"cannot resume from {state.get('path', 'the checkpoint')}: it does not fit "
                f"this config ({type(exc).__name__}: {first}); resume without changing "
                "model keys"
            ) from None
        if info.is_main:
            log.info(
                "resuming %s from %s (step %d, epoch %d)", task_cls.kind, state["path"], step, epoch
            )
    else:
        seed_everything(rc.seed + info.rank)  # per-rank noise from here on

    if info.is_main:  # everything is checked: now the run folder may be written
        _prepare_run_dir(run_dir, cfg)
    loader = _loader(dataset, sampler, task.batch_size, rc, device)
    steps_per_epoch = len(loader)
    total = rc.steps if rc.steps is not None else task.total_steps(steps_per_epoch)
    manager = CheckpointManager(run_dir, rc.keep_last)

    def checkpoint() -> Path | None:
        task_state = task.state_dict()
        _check_weights(task_state, step, device)
        rng = [rng_state()]
        if D.active():
            gathered: list[Any] = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        path = None
        if info.is_main:
            path = manager.save(
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "kind": task_cls.kind,
                    "config": to_dict(cfg),
                    "step": step,
                    "epoch": epoch,
                    "position": position,
                    "task": task_state,
                    "runner": {"rng": rng, "scalers": ctx.scaler_states()},
                },
                step,
            )
        D.barrier()
        return path

    logger = _Logger(run_dir, rc, total, step, info.is_main)
    skipped_files = 0
    last_ckpt_step = step if state is not None else -1
    summary: dict[str, Any] = {"run_dir": str(run_dir), "start_step": step}
    try:
        with SignalGuard() as guard, _name_last_checkpoint(run_dir):
            while step < total:
                sampler.set_epoch(epoch)
                sampler.set_start(position * task.batch_size)
                yielded = False
                for batch in loader:
                    yielded = True
                    ctx.step = step
                    losses = task.train_step(batch, step)
                    step += 1
                    position += 1
                    if isinstance(batch, dict) and "skipped" in batch:
                        skipped_files += int(torch.as_tensor(batch["skipped"]).sum())
                    for k, v in losses.items():
                        if not math.isfinite(v) and rc.nan_policy == "stop":
                            raise NonFiniteLossError(f"loss {k} is {v} at step {step - 1}")
                    logger.step(step, losses, task.batch_size * info.world_size)
                    if position >= steps_per_epoch:  # the epoch is complete
                        task.on_epoch_end(epoch)
                        if D.active():  # every rank's share of the epoch
                            t = torch.tensor([float(skipped_files)], device=device)
                            D.all_reduce_mean_([t])
                            skipped_files = round(float(t) * info.world_size)
                        if skipped_files and info.is_main:
                            log.warning(
                                "epoch %d: %d unreadable files skipped", epoch, skipped_files
                            )
                        logger.scalar("data/skipped_files", skipped_files, step)
                        skipped_files = 0
                        epoch += 1
                        position = 0
                    if step % rc.sample_every == 0 or step == total:
                        logger.visuals(task.visuals(), step)
                    stop = D.any_flag(guard.signum is not None, device)
                    if step % rc.checkpoint_every == 0 or step == total or stop:
                        checkpoint()
                        last_ckpt_step = step
                    if stop:
                        signum = guard.signum or signal.SIGTERM
                        raise Preempted(
                            f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint "
                            f"saved in {run_dir / 'checkpoints'}; continue with --resume",
                            signum,
                        )
                    if step >= total or position == 0:
                        break
                if not yielded:
                    raise DataError("the data loader yielded no batch; is the dataset empty?")
            if last_ckpt_step != step:
                checkpoint()
    finally:
        logger.close()
    summary.update(
        step=step,
        epoch=epoch,
        skipped_updates=ctx.skipped_updates,
        checkpoint=str(run_dir / "checkpoints"),
    )
    return summary
