"""Two CPU processes (gloo) give the result of one process over the same global batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from spap.train.checkpoint import load_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from test_runner import _cfg, _Toy  # the toy task of the loop tests

    from spap.train.loop import run

    run(_Toy, _cfg(steps=6, train={"batch_size": 2, "noise": 0.0}), out)


def test_two_processes_match_one(tmp_path: Path) -> None:
    from test_runner import _cfg, _Toy

    from spap.train.loop import run

    run(_Toy, _cfg(steps=6, train={"batch_size": 4, "noise": 0.0}), tmp_path / "one")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "two")), nprocs=2, join=True)
    one = load_checkpoint(tmp_path / "one")["task"]["models"]["net"]
    two = load_checkpoint(tmp_path / "two")["task"]["models"]["net"]
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "two" / "checkpoints" / "step_0000006.pt.tmp").exists()
