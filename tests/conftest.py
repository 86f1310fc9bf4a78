"""Shared test settings: small, deterministic, CPU only.

Tests run in parallel processes (pytest-xdist, see pyproject.toml), one intra-op thread
each: tiny tensors are fastest single-threaded, and more threads than cores make every op
slow on a busy machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
