"""The training loop every task shares.

A :class:`~spap.train.task.Task` (CycleGAN, GAN) builds its networks and says what one
iteration does; :func:`run` owns everything around it: device and precision (through the
:class:`~spap.train.context.RunContext`), torch.distributed, deterministic data order,
checkpoints (atomic, last K kept, exact resume), pre-emption signals
(:mod:`spap.train.signals`), NaN/Inf detection, and the progress bar, TensorBoard and
sample grids (:mod:`spap.train.logger`).

Exact resume: the data order is a pure function of (seed, epoch) and every sample's
augmentation a pure function of (seed, epoch, index) (see :class:`spap.data.sampler.EpochSampler`);
checkpoints hold the position inside the epoch, every RNG state and every optimizer,
scheduler, pool and scaler state. On the CPU, a run stopped at a checkpoint and resumed
ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from spap.config import RunConfig, to_dict
from spap.data.sampler import EpochSampler
from spap.devices import pick_device
from spap.errors import CheckpointError, DataError, NonFiniteLossError, Preempted, SpapError
from spap.train import distributed as D
from spap.train.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointManager,
    atomic_write_bytes,
    load_for_resume,
    resolve_checkpoint,
)
from spap.train.context import RunContext, all_finite
from spap.train.logger import ProgressLogger
from spap.train.rng import rng_state, seed_everything, set_rng_state
from spap.train.signals import SignalGuard, ignore_in_worker
from spap.train.task import Task

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(
    task_cls: type[Task],
    cfg: Any,
    run_dir: str | Path,
    resume: bool = False,
    *,
    resume_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``task_cls`` with config ``cfg`` into ``run_dir``. Returns a summary dict
    (``run_dir``, ``start_step``, ``step``, ``epoch``, ``skipped_updates``, ``checkpoint``).

    ``resume`` continues from the run's newest readable checkpoint; ``resume_state`` is
    that checkpoint when the caller has already loaded it (it is not read twice).

    Nothing is written before the networks and the dataset are built: a config the
    networks cannot use, or a dataset without a usable image, leaves ``run_dir`` untouched.
    Raises :class:`~spap.errors.Preempted` after checkpointing on SIGTERM/SIGINT and
    :class:`~spap.errors.NonFiniteLossError` on a NaN/Inf under ``run.nan_policy=stop``.
    """
    run_dir = Path(run_dir)
    rc: RunConfig = cfg.run
    info = D.env_info()
    device = pick_device(rc.device, info.local_rank)
    D.init(info, rc.dist_backend, device)
    try:
        return _run(task_cls, cfg, run_dir, resume, info, device, resume_state)
    finally:
        D.shutdown()


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
        step, epoch, position = _restore(task, ctx, state, info.rank)
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
        """Save the state after iteration ``step`` (rank 0 writes; every rank takes part)."""
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

    skipped_files = 0
    last_ckpt_step = step if state is not None else -1
    summary: dict[str, Any] = {"run_dir": str(run_dir), "start_step": step}
    with (
        ProgressLogger(run_dir, rc, total, step, info.is_main) as logger,
        SignalGuard() as guard,
        _name_last_checkpoint(run_dir),
    ):
        while step < total:
            sampler.set_epoch(epoch)
            sampler.set_start(position * task.batch_size)
            yielded = False
            for batch in loader:
                yielded = True
                ctx.iteration = step
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
                        log.warning("epoch %d: %d unreadable files skipped", epoch, skipped_files)
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
    summary.update(
        step=step,
        epoch=epoch,
        skipped_updates=ctx.skipped_updates,
        checkpoint=str(run_dir / "checkpoints"),
    )
    return summary


def _restore(task: Task, ctx: RunContext, state: dict[str, Any], rank: int) -> tuple[int, int, int]:
    """Load a checkpoint into the task and the run; its (step, epoch, position)."""
    try:
        task.load_state_dict(state["task"])
        rngs = state["runner"]["rng"]
        set_rng_state(rngs[min(rank, len(rngs) - 1)])
        ctx.load_scaler_states(state["runner"].get("scalers", {}))
        return state["step"], state["epoch"], state["position"]
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"cannot resume from {state.get('path', 'the checkpoint')}: it does not fit "
            f"this config ({type(exc).__name__}: {first}); resume without changing "
            "model keys"
        ) from None


def _loader(
    dataset: Any, sampler: Any, batch_size: int, run: RunConfig, device: torch.device
) -> torch.utils.data.DataLoader:
    workers = run.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        drop_last=True,
        worker_init_fn=ignore_in_worker if workers > 0 else None,
        # A private generator: creating an iterator must not consume the global RNG,
        # or a resumed run would draw different noise than an uninterrupted one.
        generator=torch.Generator().manual_seed(run.seed),
        prefetch_factor=4 if workers > 0 else None,
    )


def _prepare_run_dir(run_dir: Path, cfg: Any) -> None:
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
        if not all_finite(list(floats.values())):
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
