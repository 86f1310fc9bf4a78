"""Published weights from the command line: a reference CycleGAN generator file
(``latest_net_G_A.pth``, a bare state dict of the reference implementation) translates a
folder and exports to ONNX with ``spap translate`` / ``spap export`` alone, with the
reference network's outputs; a file that contradicts the given architecture, or a
discriminator given as a generator, fails in one line naming the difference (exit 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reference.cyclegan import RefNLayerDiscriminator, RefResnetGenerator, randomise
from spap.cli import main as cli
from spap.data.transforms import to_tensor_image

SIZE = 16


def _images(folder: Path, n: int = 3, channels: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (SIZE, SIZE + 4 * i) + ((channels,) if channels > 1 else ())
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A reference-layout G_A file (3 blocks, ngf 8), saved as nn.DataParallel saves it."""
    root = tmp_path_factory.mktemp("ref")
    torch.manual_seed(1)
    g = randomise(RefResnetGenerator(ngf=8, n_blocks=3))
    torch.save({f"module.{k}": v for k, v in g.state_dict().items()}, root / "latest_net_G_A.pth")
    return root / "latest_net_G_A.pth", g


def _reference_output(g: torch.nn.Module, image: Path) -> torch.Tensor:
    x = to_tensor_image(Image.open(image).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        return g(x)[0]


def test_reference_file_translates_a_folder(reference, tmp_path) -> None:
    path, g = reference
    inputs = _images(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["translate", "--checkpoint", str(path), "--input", str(inputs), "--output", str(out)]
    assert cli([*argv, "--device", "cpu", "--workers", "0"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png", "1.png", "2.png"]
    for image in sorted(inputs.glob("*.png")):
        want = _reference_output(g, image)  # in [-1, 1]; written as 8-bit
        got = torch.from_numpy(np.asarray(Image.open(out / image.name), dtype=np.float32))
        got = got.permute(2, 0, 1) / 127.5 - 1
        assert (got - want).abs().max() <= 1 / 127.5 + 1e-6, image.name


@pytest.mark.slow  # the ONNX exporter's first use in a process takes seconds
def test_reference_file_exports_to_onnx(reference, tmp_path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    path, g = reference
    out = tmp_path / "G_A.onnx"
    argv = ["export", "--checkpoint", str(path), "--format", "onnx", "--output", str(out)]
    assert cli([*argv, "--size", str(SIZE), "--model", "n_blocks=3", "ngf=8"]) == 0
    assert "(onnx, AtoB)" in capsys.readouterr().out
    x = torch.rand(2, 3, SIZE + 4, SIZE + 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, g(x), rtol=0, atol=1e-5)


def test_g_b_file_translates_b_to_a(tmp_path, capsys) -> None:
    g = randomise(RefResnetGenerator(input_nc=1, output_nc=3, ngf=4, n_blocks=1))
    path = tmp_path / "latest_net_G_B.pth"
    torch.save(g.state_dict(), path)
    out = tmp_path / "st" / "G_B.safetensors"
    argv = ["export", "--checkpoint", str(path), "--format", "safetensors", "--output", str(out)]
    assert cli([*argv, "--size", str(SIZE)]) == 0
    assert "(safetensors, BtoA)" in capsys.readouterr().out
    from spap.inference.loading import load_generators

    loaded = load_generators(out)
    x = torch.rand(1, 1, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.generators["BtoA"](x), g(x), rtol=0, atol=1e-5)
    # the model section names domain A's and B's channels: B (1) -> A (3)
    assert (loaded.model_config.input_nc, loaded.model_config.output_nc) == (3, 1)
    argv = ["translate", "--checkpoint", str(path), "--input", str(_images(tmp_path / "in", 1))]
    code = cli([*argv, "--output", str(tmp_path / "out"), "--direction", "AtoB"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "only translates BtoA" in err[0], err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model", "n_blocks=6"], "latest_net_G_A.pth: n_blocks 3 in the file, 6 given"),
        (
            ["--model", "model.n_blocks=9", "dropout=true", "ngf=64"],
            "ngf 8 in the file, 64 given; n_blocks 3 in the file, 9 given; "
            "dropout false in the file, true given",
        ),
        (["--model", "input_nc=1"], "input_nc 3 in the file, 1 given"),
        (["--model", "padding_mode=zeros"], "padding_mode reflect in the file, zeros given"),
        (["--model", "n_block=6"], "did you mean 'model.n_blocks'"),
    ],
)
@pytest.mark.parametrize("command", ["translate", "export"])
def test_mismatched_reference_file_fails_naming_it(
    reference, tmp_path, capsys, command, argv, expected
) -> None:
    path, _ = reference
    args = [command, "--checkpoint", str(path), "--output", str(tmp_path / "out.onnx"), *argv]
    args += ["--input", str(tmp_path)] if command == "translate" else ["--format", "onnx"]
    code = cli(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"spap {command}: error: ") and expected in err[0], err[0]
    assert not (tmp_path / "out.onnx").exists()


def test_discriminator_given_as_generator_fails(tmp_path, capsys) -> None:
    path = tmp_path / "latest_net_D_A.pth"
    torch.save(randomise(RefNLayerDiscriminator(ndf=4)).state_dict(), path)
    for command in ("translate", "export"):
        args = [command, "--checkpoint", str(path), "--output", str(tmp_path / "o.onnx")]
        args += ["--input", str(tmp_path)] if command == "translate" else ["--format", "onnx"]
        code = cli(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert f"{path}: a reference PatchGAN discriminator (NLayerDiscriminator), not a " in err[0]


def test_model_settings_are_refused_for_spap_files(tmp_path, capsys) -> None:
    from spap.train.checkpoint import save_checkpoint

    path = save_checkpoint({"format": "spap-checkpoint", "version": 2}, tmp_path / "c.pt")
    args = ["export", "--checkpoint", str(path), "--format", "onnx", "--output", "x.onnx"]
    assert cli([*args, "--model", "n_blocks=6"]) == 2
    assert "apply to reference CycleGAN generator files" in capsys.readouterr().err
