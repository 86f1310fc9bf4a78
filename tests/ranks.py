"""Helpers of the tests that start several ranks with ``torch.multiprocessing.spawn`` on
this machine (gloo over loopback), as torchrun would."""

from __future__ import annotations

import os
import socket

import torch

from spap.cli import main as cli


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def become_rank(rank: int, world: int, port: int) -> None:
    """Set the environment torchrun gives rank ``rank`` of ``world``; one CPU thread each."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)


def cli_worker(rank: int, world: int, port: int, argv: list[str]) -> None:
    """One rank running ``spap <argv>``; it must exit 0."""
    become_rank(rank, world, port)
    assert cli(argv) == 0
