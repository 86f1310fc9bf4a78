"""The top-level package: lazy ``spap.SPAP`` / ``spap.SelfAttention``, ``dir(spap)``, and that
importing the unit needs nothing beyond PyTorch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import spap

#: Heavy or unrelated dependencies that importing the unit must not pull in.
FORBIDDEN = (
    "tensorboard",
    "torch_fidelity",
    "torchvision",
    "PIL",
    "yaml",
    "tqdm",
    "safetensors",
    "onnx",
    "spap.models",
    "spap.train",
    "spap.data",
)

_PROBE = """
import json, sys
import torch
with_torch = set(sys.modules)
from spap import SPAP, SelfAttention
import spap
unit = spap.SPAP(8, rates=(0, 1))
print(json.dumps({"with_torch": sorted(with_torch), "after": sorted(sys.modules),
                  "same": SPAP is spap.SPAP and SelfAttention is spap.SelfAttention}))
"""


def _hits(modules: list[str] | set[str]) -> set[str]:
    return {m for m in modules for f in FORBIDDEN if m == f or m.startswith(f + ".")}


def test_units_in_dir_and_no_typing_names() -> None:
    names = dir(spap)
    assert {"SPAP", "SelfAttention", "__version__"} <= set(names)
    assert "Any" not in names and "annotations" not in names
    assert names == sorted(names)


def test_lazy_attributes() -> None:
    from spap import SPAP, SelfAttention
    from spap.layers.sagan import SelfAttention as SAGAN
    from spap.layers.spap import SPAP as Unit

    assert spap.SPAP is SPAP is Unit and spap.SelfAttention is SelfAttention is SAGAN
    try:
        spap.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_unit_needs_only_torch() -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=True
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["same"]
    with_torch, after = set(report["with_torch"]), set(report["after"])
    # Nothing forbidden beyond what ``import torch`` itself loads (torch.hub imports tqdm
    # when it is installed).
    assert _hits(after) - _hits(with_torch) == set()
    new = after - with_torch
    allowed = set(sys.stdlib_module_names) | {"torch", "spap"}
    assert {m for m in new if m.split(".")[0] not in allowed} == set()
    ours = {m for m in new if m.split(".")[0] == "spap"}
    # spap.files (the atomic writer) is standard library only
    base = ("spap", "spap.errors", "spap.files", "spap.layers")
    assert {m for m in ours if m not in base} == {
        m for m in ours if m.startswith("spap.layers.")
    }
