"""``hubconf.py``: ``torch.hub.load`` on the local checkout."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent / "inference"))
from test_translate import write_checkpoint  # noqa: E402

from spap import SPAP  # noqa: E402
from spap.inference.pretrained import save_pretrained  # noqa: E402
from spap.inference.translate import Translator  # noqa: E402

REPO = str(Path(__file__).resolve().parents[1])


def test_entry_points_and_dependencies() -> None:
    spec = importlib.util.spec_from_file_location("hubconf", Path(REPO) / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    assert all(importlib.util.find_spec(name) for name in hub.dependencies)
    assert "SPAP unit" in hub.spap_unit.__doc__ and "Translator" in hub.generator.__doc__


def test_spap_unit(tmp_path: Path) -> None:
    unit = torch.hub.load(REPO, "spap_unit", 32, norm="instance", rates=(0, 1, 2), source="local")
    assert isinstance(unit, SPAP) and unit.channels == 32 and unit.rates == (0, 1, 2)
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in unit.modules())
    x = torch.randn(1, 32, 8, 8)
    assert torch.equal(unit(x), x)  # gamma 0: the identity
    with torch.no_grad():
        unit.gamma.fill_(0.25)
    unit.save_pretrained(tmp_path / "unit")
    same = torch.hub.load(REPO, "spap_unit", pretrained=str(tmp_path / "unit"), source="local")
    assert torch.equal(same(x), unit.eval()(x))


def test_generator_from_a_checkpoint_and_a_folder(tmp_path: Path) -> None:
    ck = write_checkpoint(
        tmp_path / "run" / "checkpoints" / "step_0000001.pt",
        {
            "attention": "spap",
            "g_attention_at": ["trunk_end"],
            "g_attention_options": {"rates": [0, 1]},
        },
    )
    folder = save_pretrained(ck, tmp_path / "hf").path
    x = torch.rand(1, 3, 32, 36) * 2 - 1
    want = Translator.from_checkpoint(ck, device="cpu").translate(x, "BtoA")
    for source in (ck, tmp_path / "run", folder):
        model = torch.hub.load(REPO, "generator", str(source), source="local")
        assert isinstance(model, Translator)
        assert torch.equal(model.translate(x, "BtoA"), want)
    g = torch.hub.load(
        REPO, "generator", str(folder), module=True, direction="BtoA", source="local"
    )
    assert isinstance(g, torch.nn.Module) and not g.training
    with torch.no_grad():
        assert torch.equal(g(x), want)
