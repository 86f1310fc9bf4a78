"""Segmentation nets: shapes, training on aligned pairs, checkpoints, users' weights."""

from __future__ import annotations

import pytest
import torch

from spap.errors import CheckpointError, SpapError
from spap.eval.pairs import AlignedPairs
from spap.eval.segmentation import get_label_space
from spap.eval.segnet import SmallSegNet, build_segnet, evaluate_segnet, load_segnet, predict_ids


def test_small_segnet_shapes() -> None:
    net = SmallSegNet(num_classes=5, width=4)
    x = torch.randn(2, 3, 24, 16)
    assert net(x).shape == (2, 5, 24, 16)
    assert [f.shape[1] for f in net.features(x)] == [4, 8, 16, 16]
    # any input size: resized to a multiple of 8 for the net, logits back to the asked size
    assert predict_ids(net.eval(), torch.randn(1, 3, 20, 20), out_size=(7, 9)).shape == (1, 7, 9)


def test_torchvision_archs_build_without_download(tmp_path) -> None:
    x = torch.randn(1, 3, 32, 32)
    for arch in ("fcn_resnet50", "deeplabv3_resnet50"):
        net = build_segnet(arch, num_classes=3).eval()
        with torch.no_grad():
            assert net(x).shape == (1, 3, 32, 32)
    # users' own weights: a bare torchvision state dict (no "model." prefix of our wrapper)
    torch.save({"model": net.model.state_dict()}, tmp_path / "mine.pth")
    loaded, cfg = load_segnet(tmp_path / "mine.pth", arch="deeplabv3_resnet50")
    assert cfg["num_classes"] == 3
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    with pytest.raises(SpapError, match="unknown segmentation architecture"):
        build_segnet("unet9000")


def test_training_learns_the_toy_scenes(segnet_ckpt, aligned_dir) -> None:
    obj = torch.load(segnet_ckpt, weights_only=True)  # plain data only
    assert obj["format"] == "spap-segnet" and obj["config"]["num_classes"] == 19
    model, cfg = load_segnet(segnet_ckpt)
    assert cfg["size"] == 16 and cfg["palette"] == "cityscapes" and cfg["train_images"] == 24
    assert cfg["test_scores"]["pixel_acc"] > 0.9
    pairs = AlignedPairs(aligned_dir, get_label_space("cityscapes"))
    assert pairs.ids_dir is not None  # ground truth from test_ids/
    s = evaluate_segnet(model, pairs, net_size=16, device="cpu")
    assert s["pixel_acc"] == pytest.approx(cfg["test_scores"]["pixel_acc"])


def test_users_plain_state_dict(tmp_path, segnet_ckpt) -> None:
    model, _ = load_segnet(segnet_ckpt)
    plain = tmp_path / "mine.pth"
    torch.save(model.state_dict(), plain)
    with pytest.raises(CheckpointError, match="plain state dict"):
        load_segnet(plain)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_segnet(plain, arch="small", num_classes=7)
    m2, cfg = load_segnet(plain, arch="small", size=16, palette="cityscapes")
    assert cfg["num_classes"] == 19 and cfg["width"] == 8  # read off the shapes
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(m2(x), model(x))


def test_bad_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_segnet(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_segnet(bad)
