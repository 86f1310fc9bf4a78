"""``run.compile``: networks compile on their first call; when compiling fails for real (here:
no C++ compiler for inductor's CPU kernels) the run warns once and trains eagerly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Trains one update of a tiny network prepared with run.compile=true, and the same update
# eagerly; prints whether the weights agree and what happened.
SCRIPT = textwrap.dedent(
    """
    import copy, logging, sys
    import torch
    from torch import nn
    from spap.config import RunConfig
    from spap.train.context import RunContext
    from spap.train.distributed import DistInfo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    torch.set_num_threads(1)

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 3, padding=1))

    def update(compile):
        ctx = RunContext(RunConfig(compile=compile), torch.device("cpu"), DistInfo())
        a, b = ctx.prepare(net()), ctx.prepare(net())  # b: after a failure, no second attempt
        opt = torch.optim.Adam([*a.parameters(), *b.parameters()], lr=0.1)
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        applied = ctx.optimize((a(x) - x).square().mean() + b(x).square().mean(), opt, "loss")
        copy.deepcopy(a)(x)  # a copy (e.g. a weight average) runs eagerly
        return applied, ctx, [p.detach().clone() for p in [*a.parameters(), *b.parameters()]]

    applied, ctx, compiled = update(True)
    _, _, eager = update(False)
    same = all(torch.equal(p, q) for p, q in zip(compiled, eager))
    close = all(torch.allclose(p, q, rtol=1e-4, atol=1e-5) for p, q in zip(compiled, eager))
    print(f"applied={applied} failed={ctx._compile_failed} same={same} close={close}")
    """
)


def _train(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        # a fresh inductor cache: a cached kernel would need no compiler
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "OMP_NUM_THREADS": "1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )


def _compile_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "torch.compile failed" in line]


def test_no_cxx_compiler_trains_eagerly_with_one_warning(tmp_path: Path) -> None:
    res = _train(tmp_path, CXX="/nonexistent/c++", CC="/nonexistent/cc")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "applied=True failed=True same=True" in res.stdout, res.stdout + res.stderr[-3000:]
    warnings = _compile_warnings(res.stderr)
    assert len(warnings) == 1, res.stderr[-3000:]
    assert warnings[0].startswith("WARNING spap.train.context") and "compiler" in warnings[0]
    assert "every network runs eagerly from now on" in warnings[0]


@pytest.mark.slow
def test_a_working_compiler_compiles(tmp_path: Path) -> None:
    res = _train(tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "applied=True failed=False" in res.stdout and "close=True" in res.stdout, (
        res.stdout + res.stderr[-3000:]
    )
    assert not _compile_warnings(res.stderr)
