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
ends with exactly the weights of an uninterrupted run. A dataset whose size changed since
the checkpoint cannot continue its epoch: the run then continues at the start of the next
epoch, with a warning.

One process at a time trains in a run folder: rank 0 holds its
:class:`~spap.train.checkpoint.RunLock` from before the first write to the end of the run.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from spap.config import RunConfig, to_dict
from spap.data.sampler import EpochSampler
from spap.devices import pick_device, set_threads
from spap.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    Preempted,
    SpapError,
    WriteError,
)
from spap.files import atomic_write, write_error_reason
from spap.train import distributed as D
from spap.train.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointManager,
    RunLock,
    list_checkpoints,
    load_for_resume,
    remove_stale_temporaries,
    resolve_checkpoint,
)
from spap.train.context import RunContext, all_finite
from spap.train.evaluation import Evaluator, RunMonitor
from spap.train.logger import ProgressLogger
from spap.train.rng import rng_state, seed_everything, set_rng_state
from spap.train.signals import SignalGuard, ignore_in_worker
from spap.train.task import Task

__all__ = ["allocation_failure", "run"]

log = logging.getLogger(__name__)


def run(
    task_cls: type[Task],
    cfg: Any,
    run_dir: str | Path,
    resume: bool = False,
    *,
    resume_state: dict[str, Any] | None = None,
    evaluator: Evaluator | None = None,
    fresh: bool = False,
    should_stop: Callable[[int], bool] | None = None,
) -> dict[str, Any]:
    """Train ``task_cls`` with config ``cfg`` into ``run_dir``. Returns a summary dict
    (``run_dir``, ``start_step``, ``step``, ``epoch``, ``skipped_updates``, ``checkpoint``).

    ``resume`` continues from the run's newest readable checkpoint; ``resume_state`` is
    that checkpoint when the caller has already loaded it (it is not read twice).
    ``evaluator`` evaluates every ``run.eval_every`` iterations (default: the built-in
    :class:`~spap.train.evaluation.ValidationEvaluator`; see :mod:`spap.train.evaluation`).
    ``fresh`` refuses a folder that holds checkpoints once its lock is taken (a run that
    another process finished meanwhile). ``should_stop(step)``, when given, is asked after
    every iteration (``step`` counted from 1); True ends the run there as the end of its
    schedule would (final checkpoint, summary): e.g. a time budget (``spap demo``). Under
    torchrun it must answer the same on every rank.

    Nothing is written before the networks and the dataset are built: a config the
    networks cannot use, or a dataset without a usable image, leaves ``run_dir`` untouched.
    A folder another process trains in is refused in one line naming its pid.
    Raises :class:`~spap.errors.Preempted` after checkpointing on SIGTERM/SIGINT and
    :class:`~spap.errors.NonFiniteLossError` on a NaN/Inf under ``run.nan_policy=stop``.
    """
    run_dir = Path(run_dir)
    rc: RunConfig = cfg.run
    if rc.threads is not None:  # else the caller's count (`spap train`: the default rule)
        set_threads(rc.threads)
    info = D.env_info()
    lock = RunLock(run_dir)
    if info.is_main:
        lock.check()  # refuse a busy folder before building anything
    device = pick_device(rc.device, info.local_rank)
    D.init(info, rc.dist_backend, device)
    try:
        return _run(
            task_cls,
            cfg,
            run_dir,
            resume,
            info,
            device,
            resume_state,
            evaluator,
            lock,
            fresh,
            should_stop,
        )
    finally:
        lock.release()
        D.shutdown()


def _run(
    task_cls: type[Task],
    cfg: Any,
    run_dir: Path,
    resume: bool,
    info: D.DistInfo,
    device: torch.device,
    resume_state: dict[str, Any] | None = None,
    evaluator: Evaluator | None = None,
    lock: RunLock | None = None,
    fresh: bool = False,
    should_stop: Callable[[int], bool] | None = None,
) -> dict[str, Any]:
    rc: RunConfig = cfg.run
    lock = lock or RunLock(run_dir)
    ctx = RunContext(rc, device, info)  # checks precision/device before anything is written
    ctx.defer_checks = True  # no host reads per update: checked when the loop reports
    state = resume_state
    if state is None and resume:
        state = load_for_resume(run_dir, kind=task_cls.kind)

    ctx.resuming = state is not None
    seed_everything(rc.seed)  # identical initial weights on every rank
    with _out_of_memory("build the networks", cfg):
        task = task_cls(cfg, ctx)
    dataset = task.build_dataset()

    sampler = EpochSampler(
        len(dataset), seed=rc.seed, shuffle=True, num_replicas=info.world_size, rank=info.rank
    )
    if len(sampler) < task.batch_size:
        n_dis = getattr(getattr(cfg, "train", None), "n_dis", 1)  # a GAN batch: n_dis chunks
        keys = "train.batch_size (or train.n_dis)" if n_dis > 1 else "train.batch_size"
        fewer = ", run fewer processes" if info.world_size > 1 else ""
        raise DataError(
            f"the dataset has {len(dataset)} usable items, fewer than one batch of "
            f"{task.batch_size} per process; lower {keys}{fewer} or add data"
        )
    step, epoch, position = 0, 0, 0
    if state is not None:
        step, epoch, position = _restore(task, ctx, state, info.rank)
        epoch, position = _changed_dataset(task, state, len(dataset), len(sampler), epoch, position)
        if info.is_main:
            log.info(
                "resuming %s from %s (step %d, epoch %d)", task_cls.kind, state["path"], step, epoch
            )
    else:
        seed_everything(rc.seed + info.rank)  # per-rank noise from here on

    with _name_last_checkpoint(run_dir):
        if info.is_main:  # everything is checked: now the run folder may be written
            _prepare_run_dir(run_dir, cfg, lock, fresh and state is None)
    loader = _loader(dataset, sampler, task.batch_size, rc, device, lock.fd)
    steps_per_epoch = len(loader)
    total = rc.steps if rc.steps is not None else task.total_steps(steps_per_epoch)
    manager = CheckpointManager(run_dir, rc.keep_last)
    monitor = RunMonitor(
        task, cfg, run_dir, total, info.is_main, evaluator, (state or {}).get("monitor")
    )

    def checkpoint() -> Path | None:
        """Save the state after iteration ``step`` (rank 0 writes; every rank takes part)."""
        reports.report()  # a non-finite value since the last report stops the run first
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
                    "runner": {
                        "rng": rng,
                        "scalers": ctx.scaler_states(),
                        "dataset_size": len(dataset),
                    },
                    "monitor": monitor.state_dict(),
                },
                step,
            )
        D.barrier()
        return path

    skipped_files = 0
    scalars_seen: dict[str, float] = {}  # the task's scalars as last logged
    first_step = step
    last_ckpt_step = step if state is not None else -1
    summary: dict[str, Any] = {"run_dir": str(run_dir), "start_step": step}
    with (
        _name_last_checkpoint(run_dir),
        _ThreadWriteErrors(),
        _SafeLogger(_open_logger(run_dir, rc, total, step, info.is_main)) as logger,
        SignalGuard() as guard,
    ):
        reports = _Reports(ctx, logger, monitor, task.batch_size * info.world_size)
        signals = D.LaggedFlag(device)  # under torchrun: seen by every rank one step later
        done = False  # should_stop said so
        while step < total and not done:
            sampler.set_epoch(epoch)
            sampler.set_start(position * task.batch_size)
            yielded = False
            for batch in loader:
                yielded = True
                ctx.iteration = step
                starts = position == 0 or step == first_step  # an epoch, or this process
                if starts or (step + 1) % rc.log_every == 0:
                    _record_scalars(task, logger, step, epoch, starts, scalars_seen)
                with _out_of_memory(f"run step {step}", cfg):
                    losses = task.train_step(batch, step)
                step += 1
                position += 1
                if isinstance(batch, dict) and "skipped" in batch:  # read at the epoch's end
                    skipped_files += torch.as_tensor(batch["skipped"]).sum()
                report = position >= steps_per_epoch or _reports_due(step, total, rc)
                new_best = reports.after_step(step, losses, report)
                if position >= steps_per_epoch:  # the epoch is complete
                    skipped_files = int(skipped_files)
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
                stop = signals.poll(guard.signum is not None, now=report)
                done = should_stop is not None and should_stop(step)
                if step % rc.checkpoint_every == 0 or step == total or stop or new_best or done:
                    monitor.saved(checkpoint(), step)
                    last_ckpt_step = step
                if stop:
                    signum = guard.signum or signal.SIGTERM
                    raise Preempted(
                        f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint "
                        f"saved in {run_dir / 'checkpoints'}; continue with --resume",
                        signum,
                    )
                if step >= total or position == 0 or done:
                    break
            if not yielded:
                raise DataError("the data loader yielded no batch; is the dataset empty?")
        if last_ckpt_step != step:
            checkpoint()
    summary.update(
        **monitor.summary(),
        step=step,
        epoch=epoch,
        skipped_updates=ctx.skipped_updates,
        checkpoint=str(run_dir / "checkpoints"),
    )
    return summary


def _record_scalars(
    task: Task,
    logger: ProgressLogger,
    step: int,
    epoch: int,
    starts: bool,
    seen: dict[str, float],
) -> None:
    """Record the task's scalars (learning rates) as iteration ``step`` uses them, at that
    iteration's TensorBoard step (``step + 1``, as its losses); when ``starts`` (an epoch,
    or this process's run), also log those that changed since they were last logged."""
    values = task.scalars()
    for name, value in values.items():
        logger.scalar(name, value, step + 1)
    if not starts:
        return
    changed = [
        f"{k} {seen[k]:.6g} -> {v:.6g}" if k in seen else f"{k} {v:.6g}"
        for k, v in values.items()
        if seen.get(k) != v
    ]
    if changed and logger.enabled:
        log.info("epoch %d (counted from 0): %s", epoch, ", ".join(changed))
    seen.update(values)


def _restore(task: Task, ctx: RunContext, state: dict[str, Any], rank: int) -> tuple[int, int, int]:
    """Load a checkpoint into the task and the run; its (step, epoch, position)."""
    try:
        task.load_state_dict(state["task"])
        rngs = state["runner"]["rng"]
        set_rng_state(rngs[min(rank, len(rngs) - 1)])
        ctx.load_scaler_states(state["runner"].get("scalers", {}))
        return state["step"], state.get("epoch", 0), state.get("position", 0)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"cannot resume from {state.get('path', 'the checkpoint')}: it does not fit "
            f"this config ({type(exc).__name__}: {first}); resume without changing "
            "model keys"
        ) from None


def _changed_dataset(
    task: Task, state: dict[str, Any], size: int, per_rank: int, epoch: int, position: int
) -> tuple[int, int]:
    """(epoch, position) to resume at. A dataset whose size differs from the checkpoint's
    (``runner.dataset_size``; older checkpoints: a position past the epoch's end) cannot
    continue its epoch's order: the run continues at the start of the next epoch."""
    runner = state.get("runner")
    stored = runner.get("dataset_size") if isinstance(runner, dict) else None
    past_end = position * task.batch_size > per_rank
    if (stored is None or stored == size) and not past_end:
        return epoch, position
    source = state.get("path", "the checkpoint")
    then = f"{stored} items then" if stored is not None else "more items then"
    if position == 0:
        log.warning(
            "the dataset changed since %s was written (%s, %d now); epoch %d and later use "
            "the new dataset",
            source,
            then,
            size,
            epoch,
        )
        return epoch, 0
    log.warning(
        "the dataset changed since %s was written (%s, %d now): epoch %d cannot be "
        "continued in its order; the run continues at the start of epoch %d",
        source,
        then,
        size,
        epoch,
        epoch + 1,
    )
    task.on_epoch_end(epoch)
    return epoch + 1, 0


def _close_in_worker(fd: int | None, worker_id: int) -> None:
    """``worker_init_fn``: leave signals to the main process, and drop the copy of the run
    folder's lock a forked worker inherits (else a killed run's workers would hold it until
    they notice the main process is gone)."""
    ignore_in_worker(worker_id)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _loader(
    dataset: Any,
    sampler: Any,
    batch_size: int,
    run: RunConfig,
    device: torch.device,
    lock_fd: int | None = None,
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
        worker_init_fn=functools.partial(_close_in_worker, lock_fd) if workers > 0 else None,
        # A private generator: creating an iterator must not consume the global RNG,
        # or a resumed run would draw different noise than an uninterrupted one.
        generator=torch.Generator().manual_seed(run.seed),
        prefetch_factor=4 if workers > 0 else None,
    )


def _prepare_run_dir(run_dir: Path, cfg: Any, lock: RunLock, fresh: bool) -> None:
    """Lock the run folder (creating it), clean what a killed process left, write
    ``config.yaml``."""
    lock.acquire()
    if fresh and list_checkpoints(run_dir):
        raise SpapError(
            f"{run_dir} already holds a run (another process wrote it meanwhile); pass "
            "--resume to continue it or choose another --out"
        )
    remove_stale_temporaries(run_dir, prefixes=(".config.yaml.",))
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False).encode()
    atomic_write(run_dir / "config.yaml", lambda fh: fh.write(text))


_BYTES_RE = re.compile(r"allocate (\d+) bytes")


def allocation_failure(exc: BaseException) -> str | None:
    """``"out of memory (tried to allocate 72 TB)"`` when ``exc`` is a failed allocation
    (CPU or CUDA), else None."""
    text = str(exc)
    if not (
        isinstance(exc, (MemoryError, torch.OutOfMemoryError))
        or "can't allocate memory" in text
        or "out of memory" in text.lower()
        or "size calculation overflowed" in text
    ):
        return None
    found = _BYTES_RE.search(text)
    if found is None:
        return "out of memory"
    size, units = float(found.group(1)), ["bytes", "KB", "MB", "GB", "TB", "PB"]
    while size >= 1000 and len(units) > 1:
        size /= 1000
        units.pop(0)
    return f"out of memory (tried to allocate {size:.3g} {units[0]})"


def _model_keys(cfg: Any) -> str:
    """`` (model.ngf=64, model.ndf=64, ...)``: the integer sizes of the model section."""
    model = getattr(cfg, "model", None)
    if model is None:
        return ""
    sizes = [
        f"model.{k}={v}"
        for k, v in to_dict(model).items()
        if isinstance(v, int) and not isinstance(v, bool)
    ]
    return f" ({', '.join(sizes[:8])})" if sizes else ""


@contextlib.contextmanager
def _out_of_memory(what: str, cfg: Any):
    """A failed allocation becomes one line naming what ran out and the model's sizes."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        why = allocation_failure(exc)
        if why is None:
            raise
        if what.startswith("build"):
            raise ConfigError(
                f"cannot {what}: {why}; the model is too large for this machine{_model_keys(cfg)}"
            ) from None
        raise SpapError(
            f"cannot {what}: {why}; lower train.batch_size or the image size{_model_keys(cfg)}"
        ) from None


def _open_logger(run_dir: Path, rc: RunConfig, total: int, step: int, main: bool) -> ProgressLogger:
    """The progress logger; a TensorBoard log that cannot even be created (a full disk at
    the start) stops the run in one line."""
    try:
        return ProgressLogger(run_dir, rc, total, step, main)
    except OSError as exc:
        raise WriteError(
            f"could not write the TensorBoard log in {run_dir / 'tb'}: {write_error_reason(exc)}"
        ) from None


class _SafeLogger:
    """The progress logger, with its write failures (TensorBoard events on a full disk)
    turned into one warning: logs are not worth a run (the next checkpoint write decides).
    Everything else is the logger's own."""

    def __init__(self, logger: ProgressLogger) -> None:
        self._logger = logger
        self._failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self._logger, name)(*args)
        except OSError as exc:
            if not self._failed:
                log.warning(
                    "could not write the TensorBoard log in %s: %s; training goes on without it",
                    self._logger.run_dir / "tb",
                    write_error_reason(exc),
                )
            self._failed = True
            self._logger.writer = None
            return None

    def step(self, *args: Any) -> None:
        self._call("step", *args)

    def scalar(self, *args: Any) -> None:
        self._call("scalar", *args)

    def visuals(self, *args: Any) -> Any:
        return self._call("visuals", *args)

    def close(self) -> None:
        failed = self._failed
        self._call("close")
        if self._failed and not failed:  # the TensorBoard writer failed: close the rest
            self._call("close")

    def __enter__(self) -> _SafeLogger:
        self._logger.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _ThreadWriteErrors:
    """While the loop runs, a background writer thread (TensorBoard's) that dies of an
    ``OSError`` is logged at debug level instead of printing a traceback; the error reaches
    the loop at the next write (see :class:`_SafeLogger`)."""

    def __enter__(self) -> _ThreadWriteErrors:
        self._old = threading.excepthook

        def hook(args: Any) -> None:
            if isinstance(args.exc_value, OSError):
                log.debug("background writer %s failed: %s", args.thread, args.exc_value)
                return
            self._old(args)

        threading.excepthook = hook
        return self

    def __exit__(self, *exc: Any) -> None:
        threading.excepthook = self._old


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
    except (NonFiniteLossError, CheckpointError, WriteError) as exc:
        try:
            where = f"the last good checkpoint is {resolve_checkpoint(run_dir)}"
        except CheckpointError:
            where = "no checkpoint was saved"
        raise type(exc)(f"{exc}; {where}") from exc


def _reports_due(step: int, total: int, rc: RunConfig) -> bool:
    """Whether the loop reads the values of iteration ``step`` (counted from 1) back from
    the device: when it logs, writes samples, checkpoints or evaluates, and at the end."""
    every = (rc.log_every, rc.sample_every, rc.checkpoint_every, rc.eval_every)
    return step in (1, total) or any(n > 0 and step % n == 0 for n in every)


class _Reports:
    """The task's losses (tensors on the device, or floats) of the iterations since the
    last report, and the run context's deferred update checks: read back together when
    the loop reports, so iterations in between read nothing back from the device.

    A report first lets the context raise or count non-finite updates
    (:meth:`RunContext.flush`), then checks the losses under ``run.nan_policy=stop``,
    then hands every iteration's losses to the run monitor in order and the last one's to
    the progress logger. A task that returns a non-finite float is reported at once."""

    def __init__(self, ctx: RunContext, logger: Any, monitor: RunMonitor, images: int) -> None:
        self.ctx, self.logger, self.monitor, self.images = ctx, logger, monitor, images
        self.pending: list[tuple[int, dict[str, Any]]] = []

    def after_step(self, step: int, losses: dict[str, Any], report: bool) -> bool:
        """After iteration ``step``; True when the monitor asks for a checkpoint."""
        self.pending.append((step, losses))
        if not report:
            report = any(not torch.is_tensor(v) and not math.isfinite(v) for v in losses.values())
        if not report:
            self.logger.step(step, None, self.images)
            return False
        return self.report(log_last=True)

    def report(self, *, log_last: bool = False) -> bool:
        self.ctx.flush()
        pending, self.pending = self.pending, []
        if not pending:
            return False
        tensors = [v for _, d in pending for v in d.values() if torch.is_tensor(v)]
        stacked = [t.detach().float().reshape(()) for t in tensors]
        read = iter(torch.stack(stacked).tolist() if stacked else ())
        new_best = False
        for i, (step, losses) in enumerate(pending):
            values = {k: next(read) if torch.is_tensor(v) else float(v) for k, v in losses.items()}
            for k, v in values.items():
                if not math.isfinite(v) and self.ctx.run.nan_policy == "stop":
                    raise NonFiniteLossError(f"loss {k} is {v} at step {step - 1}")
            if log_last and i == len(pending) - 1:
                self.logger.step(step, values, self.images)
            new_best = self.monitor.after_step(step, values, self.logger)
        return new_best
