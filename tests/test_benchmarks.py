"""Every script in ``benchmarks/`` starts (``--help``), and the inference benchmarks run end
to end at a tiny size, so a change of the library's API cannot leave a benchmark broken
until someone runs it for real. (The measurements themselves are not tests: see
docs/performance.md.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))


def _run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT / "benchmarks", capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_starts(script: str) -> None:
    out = _run(script, "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout


TINY = {
    "perf_translate.py": ["--images", "2", "--size", "32", "--batch-size", "2", "--repeats", "1",
                          "model.ngf=8", "model.n_blocks=1"],
    "perf_onnxruntime.py": ["--images", "2", "--size", "32", "--batch-size", "2", "--repeats",
                            "1", "model.ngf=8", "model.n_blocks=1"],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TINY))
def test_inference_benchmark_runs_tiny(script: str) -> None:
    if script == "perf_onnxruntime.py":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    out = _run(script, *TINY[script], timeout=300)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    assert "| variant" in out.stdout or "|" in out.stdout
