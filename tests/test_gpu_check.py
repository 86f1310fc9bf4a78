"""``benchmarks/gpu_check.py --dry-run``: the GPU check's whole plumbing on the CPU at tiny
sizes, run as on the GPU machine (``PYTHONPATH=src``, torch_fidelity unimportable), importing
nothing beyond stock PyTorch, torchvision, numpy, Pillow, PyYAML, tqdm, TensorBoard,
safetensors, ONNX Runtime, their requirements and the standard library."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What the GPU machine has (distribution names).
ALLOWED = (
    "torch",
    "torchvision",
    "numpy",
    "pillow",
    "pyyaml",
    "tqdm",
    "tensorboard",
    "safetensors",
    "onnxruntime",
)
#: Modules of this checkout (on PYTHONPATH there: src/, benchmarks/, tests/).
OURS = {"spap", "_common", "perf_cyclegan", "reference", "__main__"}

RUNNER = """
import json, runpy, sys
before = set(sys.modules)
sys.modules["torch_fidelity"] = None  # not installed there: importing it fails
sys.argv = ["gpu_check.py", "--dry-run", "--json", sys.argv[1]]
code = 0
try:
    runpy.run_path("benchmarks/gpu_check.py", run_name="__main__")
except SystemExit as exc:
    code = exc.code
new = sorted(  # modules loaded from files (not built-in or synthetic ones like cython_runtime)
    {m.split(".")[0] for m in set(sys.modules) - before if getattr(sys.modules.get(m), "__file__", None)}
)
print("IMPORTED " + json.dumps(new))
sys.exit(code)
"""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: tuple[str, ...]) -> set[str]:
    """The distributions ``names`` need, transitively (extras left out)."""
    seen: set[str] = set()
    todo = [_norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for req in reqs:
            if "extra ==" in req:
                continue
            m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req)
            if m:
                todo.append(_norm(m.group(0)))
    return seen


@pytest.mark.slow
def test_dry_run_plumbing_and_imports(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT / "src")
    out_json = tmp_path / "result.json"
    res = subprocess.run(
        [sys.executable, "-c", RUNNER, str(out_json)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    for heading in (
        "### CycleGAN 32x32 (dry run), training iteration",
        "### SPAP units vs plain",
        "### GAN 32x32, batch 4",
        "### Distributed: a 1-process gloo group",
    ):
        assert heading in out
    assert re.search(r"Goal: spap's best setting at batch 1 .* \(>= 2x\): (PASS|MISS)", out)
    for variant in ("reference iteration", "spap fp32 + compile", "spap bf16", "spap tuned"):
        assert f"| {variant} " in out
    summary = json.loads(out_json.read_text())
    assert summary["failed"] == [] and summary["loss_misses"] == []
    timed = [r for r in summary["rows"] if r["s"] is not None]
    assert len(timed) >= 17  # every row of every table ran and was timed
    assert all(r["nonfinite"] == 0 for r in summary["rows"])

    imported = json.loads(out.split("IMPORTED ", 1)[1].splitlines()[0])
    allowed = _closure(ALLOWED)
    owners = md.packages_distributions()
    foreign = []
    for mod in imported:
        if mod in sys.stdlib_module_names or mod in OURS or mod.startswith("_"):
            continue
        dists = {_norm(d) for d in owners.get(mod, [])}
        if not dists & allowed:
            foreign.append(f"{mod} ({', '.join(sorted(dists)) or 'no distribution'})")
    assert foreign == [], f"gpu_check imports what the GPU machine lacks: {foreign}"
