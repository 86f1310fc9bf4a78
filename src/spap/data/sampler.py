"""Deterministic, resumable, shardable sampling and per-item random generators.

:class:`EpochSampler` yields ``(epoch, index)`` pairs. The datasets of :mod:`spap.data`
accept such a pair and draw every random choice for the item (crop, flip, unaligned B image)
from :func:`item_generator` ``(seed, epoch, index)``. Hence a batch depends only on
(seed, epoch, position), never on the number of DataLoader workers, on the process, or on
what ran before; a run resumed mid-epoch with :meth:`EpochSampler.set_start` sees exactly the
items an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from spap.seeds import derive_seed

__all__ = ["EpochSampler", "item_generator"]


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from (seed, epoch, index) alone."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, epoch, index))
    return g


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` for this rank's share of one epoch.

    The order is ``torch.randperm(length)`` seeded from (seed, epoch) (or ``range(length)``
    without shuffling). With several replicas it shards like
    :class:`torch.utils.data.DistributedSampler`: the order is padded by repeating its start
    to a multiple of ``num_replicas`` (or truncated with ``drop_last``) and rank ``r`` takes
    positions ``r, r + num_replicas, ...``.

    Args:
        length: dataset length.
        seed: shuffling seed (same on every rank).
        shuffle: random order per epoch; otherwise ``0 .. length - 1``.
        num_replicas: number of processes sharing the epoch.
        rank: this process, ``0 <= rank < num_replicas``.
        drop_last: drop the tail that does not divide evenly instead of padding.
    """

    def __init__(
        self,
        length: int,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas - 1}], got {rank}")
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        if drop_last:
            self.num_samples = length // num_replicas
        else:
            self.num_samples = math.ceil(length / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.epoch = 0
        self._start = 0
        self._start_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def set_start(self, position: int) -> None:
        """Skip the first ``position`` items of this rank's list, for the current epoch only.

        Used to resume mid-epoch: ``position`` is the number of items this rank already
        consumed in the epoch (``batches_done * batch_size``). Any other epoch starts at 0.
        """
        if not 0 <= position <= self.num_samples:
            raise ValueError(f"start position must be in [0, {self.num_samples}], got {position}")
        self._start = int(position)
        self._start_epoch = self.epoch

    @property
    def start(self) -> int:
        """Items skipped at the beginning of the current epoch."""
        return self._start if self._start_epoch == self.epoch else 0

    def order(self, epoch: int | None = None) -> list[int]:
        """The full (unsharded, unpadded) index order of an epoch."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return list(range(self.length))
        g = torch.Generator()
        g.manual_seed(derive_seed(self.seed, epoch))
        return torch.randperm(self.length, generator=g).tolist()

    def indices(self, epoch: int | None = None) -> list[int]:
        """This rank's indices for an epoch (padded / truncated), before any start skip."""
        order = self.order(epoch)
        if self.drop_last:
            order = order[: self.total_size]
        elif order and len(order) < self.total_size:
            pad = self.total_size - len(order)
            order += (order * math.ceil(pad / len(order)))[:pad]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for index in self.indices(epoch)[self.start :]:
            yield epoch, index

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"EpochSampler(length={self.length}, seed={self.seed}, shuffle={self.shuffle}, "
            f"num_replicas={self.num_replicas}, rank={self.rank}, drop_last={self.drop_last}, "
            f"epoch={self.epoch}, start={self.start})"
        )
