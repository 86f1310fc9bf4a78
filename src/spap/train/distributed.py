"""torch.distributed helpers for runs started with ``torchrun``.

Gradients are averaged explicitly after each backward (one flattened all-reduce per
optimizer) instead of wrapping the networks in ``DistributedDataParallel``: GAN updates
run a network several times per step and freeze the other network's parameters, which
DDP's reducer does not handle without ``find_unused_parameters``. The price is that the
all-reduce does not overlap with the backward pass.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank and world size from the environment ``torchrun`` sets (1 process otherwise)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init(info: DistInfo, backend: str, device: torch.device) -> None:
    """Join the process group (no-op for one process)."""
    if not info.enabled or dist.is_initialized():
        return
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    log.info("joined process group: rank %d of %d (%s)", info.rank, info.world_size, backend)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean_(tensors: Iterable[torch.Tensor]) -> None:
    """Average tensors across ranks in place, with one flattened all-reduce."""
    tensors = [t for t in tensors if t is not None]
    if not tensors or not active():
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank."""
    if not active():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src)


def any_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class LaggedFlag:
    """:func:`any_flag` without waiting for the other ranks: :meth:`poll` starts a
    non-blocking all-reduce of this iteration's flag and returns the result of the previous
    call's, which has arrived by then (False at the first call). Every rank sees the same
    sequence of results. ``poll(flag, now=True)`` decides at once (a blocking all-reduce
    that includes the pending flag): use it on iterations that synchronise anyway. One
    process: ``poll`` returns ``flag``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pending: tuple[dist.Work, torch.Tensor] | None = None

    def _collect(self) -> bool:
        if self._pending is None:
            return False
        work, t = self._pending
        self._pending = None
        work.wait()
        return bool(t.item() > 0)

    def poll(self, flag: bool, *, now: bool = False) -> bool:
        if not active():
            return flag
        previous = self._collect()
        if now:
            return any_flag(flag or previous, self.device)
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        self._pending = (dist.all_reduce(t, op=dist.ReduceOp.MAX, async_op=True), t)
        return previous


def barrier() -> None:
    if active():
        dist.barrier()
