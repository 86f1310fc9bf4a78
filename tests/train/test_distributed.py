"""Two CPU processes (gloo) give the result of one process over the same global batch."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.multiprocessing as mp

from ranks import become_rank, free_port
from spap.train.checkpoint import load_checkpoint


def _worker(rank: int, world: int, port: int, out: str) -> None:
    become_rank(rank, world, port)
    from test_runner import _cfg, _Toy  # the toy task of the loop tests

    from spap.train.loop import run

    run(_Toy, _cfg(steps=6, train={"batch_size": 2, "noise": 0.0}), out)


def test_two_processes_match_one(tmp_path: Path) -> None:
    from test_runner import _cfg, _Toy

    from spap.train.loop import run

    run(_Toy, _cfg(steps=6, train={"batch_size": 4, "noise": 0.0}), tmp_path / "one")
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path / "two")), nprocs=2, join=True)
    one = load_checkpoint(tmp_path / "one")["task"]["models"]["net"]
    two = load_checkpoint(tmp_path / "two")["task"]["models"]["net"]
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "two" / "checkpoints" / "step_0000006.pt.tmp").exists()
