"""No blocking device-to-host reads on iterations that do not log: at most one
``aten._local_scalar_dense`` (what ``.item()``, ``float()``, ``bool()`` of a tensor run) per
CycleGAN and GAN iteration, counted over the task's ``train_step`` and the loop's own
per-iteration work, in one process and in two (gloo)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data._utils.fetch import _MapDatasetFetcher

from ranks import become_rank, free_port
from spap.cli import main as cli
from spap.train.cyclegan import CycleGANTask
from spap.train.gan import GANTask

STEPS = 6  # iterations 0 and 5 log (the first and the last); 1-4 do not
COMMON = ["run.num_workers=0", "run.log_every=100", "run.checkpoint_every=100",
          "run.sample_every=100", "run.eval_every=0", "train.batch_size=1"]  # fmt: skip
ARGS = {
    "cyclegan": ["model.ngf=4", "model.ndf=4", "model.n_blocks=1", "model.attention=spap",
                 "model.g_attention_at=[trunk_end]", "model.d_attention_at=[1]",
                 "model.g_attention_options={rates: [0, 1, 2]}",
                 "model.d_attention_options={rates: [0, 1]}", "train.pool_size=50",
                 "train.n_epochs=1", "train.n_epochs_decay=1"],
    "gan": ["model.g_ch=4", "model.d_ch=4", "model.z_dim=8", "model.g_attention={8: spap}",
            "model.d_attention={8: sagan}", "train.n_dis=2"],
}  # fmt: skip
_SYNCS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default}


class SyncCounter(TorchDispatchMode):
    """Counts host reads of tensor values, per iteration: each call of a task's
    ``train_step`` opens a new bucket (bucket 0: everything before the first iteration)."""

    def __init__(self) -> None:
        super().__init__()
        self.buckets = [0]
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _SYNCS and not self.paused:
            self.buckets[-1] += 1
        return func(*args, **(kwargs or {}))


def _count(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> list[int]:
    """Host reads of each iteration (train_step + the loop's work until the next one). Data
    loading is not counted: its CPU-side random draws read CPU tensors (and run in worker
    processes when ``run.num_workers`` > 0)."""
    counter = SyncCounter()
    for cls in (CycleGANTask, GANTask):
        step = cls.train_step

        def counted(self, batch: Any, i: int, _step=step) -> Any:
            counter.buckets.append(0)
            return _step(self, batch, i)

        monkeypatch.setattr(cls, "train_step", counted)
    fetch = _MapDatasetFetcher.fetch

    def fetched(self, index: Any) -> Any:  # in worker processes when run.num_workers > 0
        counter.paused = True
        try:
            return fetch(self, index)
        finally:
            counter.paused = False

    monkeypatch.setattr(_MapDatasetFetcher, "fetch", fetched)
    with counter:
        assert cli(argv) == 0
    return counter.buckets[1:]


def _data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for folder in ("trainA", "trainB"):
        (root / folder).mkdir(parents=True)
        # more than a run's worth for every rank (2 processes; the GAN takes n_dis=2
        # batches per iteration): no epoch ends inside the counted iterations
        for i in range(5 * STEPS):
            arr = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / folder / f"{i}.png")
    return root


def _argv(kind: str, data: Path, out: Path) -> list[str]:
    folder = data if kind == "cyclegan" else data / "trainB"
    return ["train", kind, "--data", str(folder), "--out", str(out), "--size", "32",
            "--steps", str(STEPS), *COMMON, *ARGS[kind]]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _data(tmp_path_factory.mktemp("sync_data"))


@pytest.mark.slow  # ~8 s each: every operation goes through the Python dispatch mode
@pytest.mark.parametrize("kind", ["cyclegan", "gan"])
def test_one_process(kind: str, data: Path, tmp_path: Path, monkeypatch) -> None:
    counts = _count(monkeypatch, _argv(kind, data, tmp_path / "run"))
    assert len(counts) == STEPS
    assert max(counts[1:-1]) <= 1, counts


def _worker(rank: int, world: int, port: int, argv: list[str], out: str) -> None:
    become_rank(rank, world, port)
    counts = _count(pytest.MonkeyPatch(), argv)
    Path(out, f"counts{rank}.json").write_text(json.dumps(counts))


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind",
    [
        "cyclegan",
        "gan",
    ],
)
def test_two_processes(kind: str, data: Path, tmp_path: Path) -> None:
    argv = _argv(kind, data, tmp_path / "run")
    mp.spawn(_worker, args=(2, free_port(), argv, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        counts = json.loads((tmp_path / f"counts{rank}.json").read_text())
        assert len(counts) == STEPS
        assert max(counts[1:-1]) <= 1, (rank, counts)
