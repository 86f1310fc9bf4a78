"""What a task gets from the run: the device, precision, distributed helpers, and the one
way to update weights.

An update is ``ctx.optimize(loss, optimizer, name)``, or, to accumulate gradients over
several losses (micro-batches), ``ctx.backward(loss, name)`` as often as needed and then
``ctx.step(optimizer, name)``. Either way no NaN or Inf ever reaches the weights: a
non-finite loss or gradient stops the run (``run.nan_policy=stop``,
:class:`~spap.errors.NonFiniteLossError` naming the loss and the step) or skips that
update (``skip``, counted in :attr:`RunContext.skipped_updates`).

With :attr:`RunContext.defer_checks` (the training loop sets it) the checks read nothing
back from the device: every update computes a found-non-finite flag on the device and the
optimizer skips the update there when it is set (the fused optimizers' ``found_inf``
support, the one ``GradScaler`` uses; other optimizers read the flag, one host read per
update); :meth:`RunContext.flush` (called by the loop when it logs) reads the flags of all
updates since the last call at once, then stops the run or counts and reports the skipped
updates, naming their steps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch._functorch import config

from spap.config import RunConfig
from spap.errors import ConfigError, NonFiniteLossError
from spap.layers import attention_units
from spap.train import distributed as D

__all__ = ["RunContext", "all_finite", "non_finite"]

log = logging.getLogger(__name__)


def all_finite(tensors: list[torch.Tensor]) -> bool:
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


def non_finite(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Whether any element of any tensor is NaN or Inf, as a 0-d bool tensor on ``device``
    (nothing is read back to the host).

    One float64 sum per tensor, then one sum of those: NaN and Inf propagate through sums,
    and float64 cannot overflow on sums of float32 (or narrower) values, so the result is
    exact. (MPS has no float64: float32 sums there, where an overflowing sum of finite
    values reads as non-finite.)"""
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return torch.zeros((), dtype=torch.bool, device=device)
    dtype = torch.float32 if tensors[0].device.type == "mps" else torch.float64
    total = torch.stack([t.sum(dtype=dtype) for t in tensors]).sum()
    return ~torch.isfinite(total)


class RunContext:
    """What a task needs from the run: device, precision, distributed helpers, updates.

    Attributes a task may read: ``run`` (the :class:`~spap.config.RunConfig`), ``device``,
    ``rank``, ``world_size``, ``is_main``, ``amp_dtype``, ``resuming`` (the task's state is
    loaded from a checkpoint right after it is built: skip one-off initialisation such as
    loading pretrained weights), ``iteration`` (the index of the running iteration, set by
    the loop) and ``skipped_updates`` (with ``defer_checks``: as of the last :meth:`flush`).

    ``defer_checks`` (False by default; the loop sets it): decide about non-finite losses
    and gradients on the device and report them at :meth:`flush` instead of reading them
    back at every update (see the module doc). Under fp16 the gradient scaler reads its
    found-inf flag back anyway: there the checks stay immediate.
    """

    def __init__(self, run: RunConfig, device: torch.device, info: D.DistInfo) -> None:
        self.run = run
        self.device = device
        self.rank = info.rank
        self.world_size = info.world_size
        self.is_main = info.is_main
        self.iteration = 0
        self.skipped_updates = 0
        self.resuming = False
        self.defer_checks = False
        # deferred checks: per update name, the accumulated "loss not finite" flag; per
        # update since the last flush(), (iteration, name, scalar loss?, [bad loss, bad
        # gradient, loss value]) on the device
        self._bad_loss: dict[str, torch.Tensor] = {}
        self._pending: list[tuple[int, str, bool, torch.Tensor]] = []
        self._scalers: dict[str, torch.amp.GradScaler] = {}
        # per update name, between backward() and step():
        self._refused: dict[str, str] = {}  # why the update is skipped (a non-finite loss)
        self._losses: dict[str, torch.Tensor] = {}  # the last loss, for messages
        self._compile_failed = False
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

    # -- networks and data
    def prepare(self, module: nn.Module) -> nn.Module:
        """Move a network to the device (channels_last and SyncBatchNorm by config), give
        every rank rank 0's weights and, with ``run.compile``, compile it. Use the returned
        module.

        Compiling happens on the network's first call (forward and backward together). If
        it fails (no working C++ compiler, no Triton, an operation the compiler cannot
        handle), one warning is logged and every network of the run runs eagerly from then
        on: the failed call is repeated eagerly, so training goes on. A deep copy of a
        compiled network (e.g. a weight average) runs eagerly."""
        if D.active() and self.run.sync_batchnorm and self.device.type == "cuda":
            # SyncBatchNorm only runs on CUDA; on CPU ranks keep per-rank batch statistics.
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        module = module.to(self.device)
        if self.run.channels_last:
            module = module.to(memory_format=torch.channels_last)
        D.broadcast_module_(module)
        if self.run.compile and not self._compile_failed:
            try:
                module.compile()
            except Exception as exc:  # e.g. a Python version dynamo does not support
                self._compile_failure(exc)
            else:
                module._compiled_call_impl = _CompiledCall(module, self)
        return module

    def _compile_failure(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        log.warning(
            "torch.compile failed (%s: %s); every network runs eagerly from now on",
            type(exc).__name__,
            first,
        )
        self._compile_failed = True

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for forward passes (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def adam(
        self,
        params: Iterable[nn.Parameter],
        lr: float,
        betas: tuple[float, float],
        *,
        gamma_lr_mult: float = 1.0,
        networks: Iterable[nn.Module] = (),
    ) -> torch.optim.Adam:
        """Adam over ``params``: the fused implementation (one kernel per step for all
        tensors) when ``run.fused_optimizer`` and this torch supports it on the device, the
        default otherwise. Fused and default steps agree up to float rounding.

        ``gamma_lr_mult`` != 1 puts the blend scalars ``gamma`` of the attention units in
        ``networks`` in a second parameter group whose learning rate is ``lr *
        gamma_lr_mult`` (schedules scale both groups alike); at 1 there is one group."""
        params: Any = list(params)
        if gamma_lr_mult != 1.0:
            gammas = {
                id(unit.gamma)
                for net in networks
                for _, unit in attention_units(net)
                if isinstance(getattr(unit, "gamma", None), nn.Parameter)
            }
            params = [
                {"params": [p for p in params if id(p) not in gammas]},
                {"params": [p for p in params if id(p) in gammas], "lr": lr * gamma_lr_mult},
            ]
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
    def optimize(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        name: str,
        *,
        max_norm: float | None = None,
    ) -> bool | torch.Tensor:
        """One update from one loss: ``zero_grad``, :meth:`backward`, :meth:`step`.
        Returns whether the update was applied (see :meth:`step`)."""
        optimizer.zero_grad(set_to_none=True)
        self.backward(loss, name)
        return self.step(optimizer, name, max_norm=max_norm)

    def backward(self, loss: torch.Tensor, name: str) -> None:
        """Add the gradients of ``loss`` to those of the update ``name`` (the loss's name in
        messages, and the key of its fp16 gradient scaler).

        Call it once per micro-batch, then :meth:`step` with the same ``name``: gradients
        accumulate, so use losses whose sum is the loss of the whole batch (sum-reduced, or
        each mean divided by the number of micro-batches). A non-finite loss raises
        :class:`~spap.errors.NonFiniteLossError` (``run.nan_policy=stop``) or makes the
        coming :meth:`step` skip the update (``skip``); it is never back-propagated.
        With ``defer_checks`` it is back-propagated and the coming :meth:`step` skips the
        update on the device; :meth:`flush` reports it."""
        if self._deferred(name):
            bad = ~torch.isfinite(loss.detach()).all()
            prev = self._bad_loss.get(name)
            self._bad_loss[name] = bad if prev is None else prev | bad
            self._losses[name] = loss.detach()
            loss.backward()
            return
        finite = bool(torch.isfinite(loss.detach()).all())
        if D.any_flag(not finite, self.device):  # every rank decides alike
            value = loss.detach().float()
            value = value.item() if value.numel() == 1 else "not finite"
            msg = f"loss {name} is {value} at step {self.iteration}"
            if self.run.nan_policy == "stop":
                raise NonFiniteLossError(msg + " (set run.nan_policy=skip to skip such updates)")
            self._refused.setdefault(name, msg)
            return
        if name in self._refused:  # the update is skipped anyway
            return
        self._losses[name] = loss.detach()
        scaler = self._scaler(name)
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(
        self, optimizer: torch.optim.Optimizer, name: str, *, max_norm: float | None = None
    ) -> bool | torch.Tensor:
        """Apply the gradients :meth:`backward` accumulated for the update ``name``: average
        them across ranks, unscale them (fp16), clip them to the global L2 norm
        ``max_norm`` (``None``: no clipping), check they are finite, step ``optimizer`` and
        clear its gradients (``zero_grad(set_to_none=True)``).

        Returns False when the update was skipped (``run.nan_policy=skip`` and a non-finite
        loss or gradient); a non-finite gradient under ``stop`` raises
        :class:`~spap.errors.NonFiniteLossError`. Under fp16 the gradient scaler skips
        steps whose gradients overflowed (and lowers its scale) instead; that counts as
        applied. With ``defer_checks`` nothing is read back: the update is skipped on the
        device, the return value is a 0-d bool tensor (reading it waits for the device) and
        :meth:`flush` raises or reports."""
        if self._deferred(name):
            return self._deferred_step(optimizer, name, max_norm)
        refused = self._refused.pop(name, None)
        loss = self._losses.pop(name, None)
        if refused is not None:
            return self._skip(refused, optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        if D.active():
            D.all_reduce_mean_(grads)
        scaler = self._scaler(name)
        # A finite loss can still have non-finite gradients (e.g. sqrt at 0); stepping with
        # them would silently turn the weights into NaN. (fp16: the scaler skips such steps.)
        # After the all-reduce the gradients are the same on every rank: so is the decision.
        if scaler is None and not all_finite(grads):
            value = "" if loss is None else f" (loss {float(loss.float().mean()):.6g})"
            msg = f"gradient of loss {name} is not finite at step {self.iteration}{value}"
            if self.run.nan_policy == "stop":
                raise NonFiniteLossError(msg + " (set run.nan_policy=skip to skip such updates)")
            return self._skip(msg, optimizer)
        if max_norm is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)  # clip the true gradients; scaler.step knows
            nn.utils.clip_grad_norm_(params, max_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return True

    def _deferred(self, name: str) -> bool:
        return self.defer_checks and self._scaler(name) is None

    def _deferred_step(
        self, optimizer: torch.optim.Optimizer, name: str, max_norm: float | None
    ) -> torch.Tensor:
        loss = self._losses.pop(name, None)
        bad_loss = self._bad_loss.pop(name, None)
        if bad_loss is None:
            bad_loss = torch.zeros((), dtype=torch.bool, device=self.device)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        if D.active():  # the loss flag rides along with the gradients: every rank decides alike
            flag = bad_loss.to(grads[0].dtype if grads else torch.float32).reshape(1)
            D.all_reduce_mean_([*grads, flag])
            bad_loss = flag[0] > 0
        bad_grad = non_finite(grads, self.device)
        bad = bad_loss | bad_grad
        if max_norm is not None:
            nn.utils.clip_grad_norm_(params, max_norm)
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            # fused Adam/AdamW/SGD: the kernel leaves weights and state alone when found_inf
            # is set (GradScaler's protocol: attributes read by step(), removed after it)
            optimizer.grad_scale = None
            optimizer.found_inf = bad.float()
            try:
                optimizer.step()
            finally:
                del optimizer.grad_scale, optimizer.found_inf
        elif not bool(bad):  # one host read: this optimizer cannot skip on the device
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = (
            torch.full((), math.nan, device=self.device) if loss is None else loss.float().mean()
        )
        scalar = loss is not None and loss.numel() == 1
        row = torch.stack([bad_loss.float(), bad_grad.float(), value.reshape(())])
        self._pending.append((self.iteration, name, scalar, row))
        return ~bad

    def flush(self) -> None:
        """Read the flags of the updates since the last call (one host read) and act on
        them as ``run.nan_policy`` says: raise :class:`~spap.errors.NonFiniteLossError`
        naming the first non-finite loss or gradient and its step (``stop``), or log each
        skipped update with its step and count it in :attr:`skipped_updates` (``skip``).
        Every rank must call it at the same iterations. A no-op without ``defer_checks``."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        rows = torch.stack([row for *_, row in pending]).tolist()
        for (iteration, name, scalar, _), (bad_loss, bad_grad, value) in zip(pending, rows):
            if not (bad_loss or bad_grad):
                continue
            if bad_loss:
                msg = f"loss {name} is {value if scalar else 'not finite'} at step {iteration}"
            else:
                loss = "" if math.isnan(value) and not scalar else f" (loss {value:.6g})"
                msg = f"gradient of loss {name} is not finite at step {iteration}{loss}"
            if self.run.nan_policy == "stop":
                raise NonFiniteLossError(msg + " (set run.nan_policy=skip to skip such updates)")
            log.warning("%s: update skipped", msg)
            self.skipped_updates += 1

    def _skip(self, msg: str, optimizer: torch.optim.Optimizer) -> bool:
        log.warning("%s: update skipped", msg)
        self.skipped_updates += 1
        optimizer.zero_grad(set_to_none=True)
        return False

    def _scaler(self, name: str) -> torch.amp.GradScaler | None:
        if self.run.precision != "fp16":
            return None
        if name not in self._scalers:
            self._scalers[name] = torch.amp.GradScaler("cuda")
        return self._scalers[name]

    def scaler_states(self) -> dict[str, Any]:
        """The fp16 gradient scalers' states, by update name (checkpoints hold them)."""
        return {k: s.state_dict() for k, s in self._scalers.items()}

    def load_scaler_states(self, states: dict[str, Any]) -> None:
        """Restore :meth:`scaler_states` (ignored unless ``run.precision=fp16``)."""
        for name, state in states.items():
            scaler = self._scaler(name)
            if scaler is not None:
                scaler.load_state_dict(state)

    # -- distributed
    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        D.all_reduce_mean_([t])
        return t

    def barrier(self) -> None:
        D.barrier()


class _CompiledCall:
    """A prepared network's call under ``run.compile``: the compiled call while compiling
    works; after the first failure (of any network of the run) the eager call, for good.

    It takes the place of the call ``nn.Module.compile()`` installs, so the network keeps
    its class, its state-dict keys and its hooks."""

    def __init__(self, module: nn.Module, ctx: RunContext) -> None:
        self._module = weakref.ref(module)  # the module holds this object
        self._compiled = module._compiled_call_impl
        self._ctx = ctx

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module = self._module()
        if not self._ctx._compile_failed:
            try:
                # Lower the backward graph now, not at the first backward: a compiler that
                # fails, fails here, where the call can still be repeated eagerly.
                with _backward_lowered_with_forward():
                    return self._compiled(*args, **kwargs)
            except Exception as exc:
                if not _is_compile_error(exc):
                    raise
                self._ctx._compile_failure(exc)
        module._compiled_call_impl = None  # eager from now on
        return module._call_impl(*args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        return None  # a copy of the network (e.g. a weight average) runs eagerly


def _backward_lowered_with_forward() -> contextlib.AbstractContextManager:
    if hasattr(config, "force_non_lazy_backward_lowering"):
        return config.patch(force_non_lazy_backward_lowering=True)
    return contextlib.nullcontext()  # pragma: no cover - older torch: lowered lazily


def _is_compile_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from compiling (dynamo, AOTAutograd, inductor), not from
    running the network."""
    from torch._dynamo.exc import TorchDynamoException  # noqa: PLC0415 - torch._dynamo: ~1.3 s to import

    return isinstance(exc, TorchDynamoException) or type(exc).__module__.startswith(
        ("torch._dynamo", "torch._inductor", "torch._functorch")
    )
