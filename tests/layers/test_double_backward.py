"""Second derivatives through the units: gradient penalties (R1, WGAN-GP) are exact.

The units are built from stock PyTorch ops only (no custom ``torch.autograd.Function``), so
double backward is PyTorch's own; ``gradgradcheck`` checks it numerically, with respect to
the input and, through ``torch.func.functional_call``, to the parameters too (what a
penalty's gradient with respect to the discriminator's weights needs).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch
from torch.autograd import gradgradcheck
from torch.func import functional_call

import spap.layers
from spap import SPAP, SelfAttention


def test_no_custom_autograd_functions_in_layers() -> None:
    found = []
    for info in pkgutil.iter_modules(spap.layers.__path__, "spap.layers."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, torch.autograd.Function):
                found.append(f"{info.name}.{name}")
        assert "autograd.Function" not in inspect.getsource(module), info.name
    assert found == []


def _check(unit: torch.nn.Module, x: torch.Tensor, exhaustive: bool) -> None:
    names = [n for n, _ in unit.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in unit.parameters())

    def f(inp: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return functional_call(unit, dict(zip(names, ps)), (inp,))

    # Input and every parameter together, along random directions ...
    assert gradgradcheck(f, (x, *params), eps=1e-6, atol=1e-5, fast_mode=True)
    # ... and the full second derivative in the input (an R1 / WGAN-GP penalty's inner
    # gradient), entry by entry (a few seconds: once per unit kind).
    if exhaustive:
        assert gradgradcheck(unit, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    ("attention", "normalizer", "exhaustive"),
    [
        ("spatial", "softmax", True),
        ("channel", "softmax", False),
        ("spatial", "sigmoid", False),
        ("channel", "sigmoid", False),
        ("both", "sigmoid", False),
    ],
)
def test_spap_gradgradcheck(attention: str, normalizer: str, exhaustive: bool) -> None:
    torch.manual_seed(0)
    unit = SPAP(4, rates=(0, 1, 2), attention=attention, normalizer=normalizer, dtype=torch.float64)
    with torch.no_grad():
        unit.gamma.fill_(0.5)  # the cascade contributes to the output
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    _check(unit, x, exhaustive)


def test_self_attention_gradgradcheck() -> None:
    torch.manual_seed(0)
    unit = SelfAttention(8, reduction=4, dtype=torch.float64)
    with torch.no_grad():
        unit.gamma.fill_(0.5)
    x = torch.randn(1, 8, 5, 6, dtype=torch.float64, requires_grad=True)
    _check(unit, x, exhaustive=True)
