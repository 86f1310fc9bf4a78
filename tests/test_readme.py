"""Every ```python block of the README runs as written (each in a fresh namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[str]:
    """The contents of every ```python fenced block in ``text``, in order."""
    return _FENCE.findall(text)


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_fence_parsing() -> None:
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n\nz = 3\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n\nz = 3\n"]


def test_readme_has_the_unit_example() -> None:
    assert any("from spap import SPAP" in block for block in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: f"block{i}")
def test_readme_block_runs(index: int) -> None:
    torch.manual_seed(0)
    code = compile(BLOCKS[index], f"{README.name}:python block {index}", "exec")
    exec(code, {"__name__": "__readme__"})
