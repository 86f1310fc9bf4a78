"""Segmentation nets: shapes, training on aligned pairs, checkpoints, users' weights."""

from __future__ import annotations

import pytest
import torch

from spap.data.labels import get_label_space
from spap.data.pairs import AlignedPairs
from spap.errors import CheckpointError, SpapError, WriteError
from spap.eval.fcn import evaluate_segnet
from spap.models.segnet import SmallSegNet, build_segnet, load_segnet, predict_ids
from spap.train.segnet import save_segnet, train_segnet


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
    with pytest.raises(SpapError, match="unknown segmentation architecture"):
        load_segnet(tmp_path / "mine.pth", arch="unet9000")


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


def _saved(tmp_path, config, **extra) -> object:
    net = SmallSegNet(num_classes=3, width=4)
    obj = {"format": "spap-segnet", "version": 1, "config": config, **extra}
    obj.setdefault("state_dict", net.state_dict())
    path = tmp_path / "seg.pt"
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (["small", 3], "stored config is a list, not a dict"),
        ({"arch": "small", "num_classes": "3"}, "num_classes must be an int >= 1, got '3'"),
        ({"arch": "small", "num_classes": 3.0}, "num_classes must be an int"),
        ({"arch": "small", "num_classes": True}, "num_classes must be an int"),
        ({"arch": "small", "num_classes": 0}, "num_classes must be an int >= 1"),
        ({"arch": 7, "num_classes": 3}, "arch must be one of small"),
        ({"arch": torch.zeros(2), "num_classes": 3}, "arch must be one of small"),
        ({"arch": "small", "num_classes": 3, "width": [4]}, "width must be an int"),
        ({"arch": "small", "num_classes": 3, "size": "64"}, "size must be an int >= 1 or null"),
        ({"arch": "small", "num_classes": 3, "test_scores": [1]}, "test_scores must be a dict"),
        ({"arch": "small", "num_classes": 5}, "does not fit a small net with 5 classes"),
        (
            {"arch": "small", "num_classes": 3, "width": 64},
            "does not fit a small net with width 64",
        ),
    ],
)
def test_malformed_stored_config_is_one_checkpoint_error(tmp_path, config, match) -> None:
    with pytest.raises(CheckpointError, match=match) as err:
        load_segnet(_saved(tmp_path, config))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"state_dict": {"enc1.0.weight": [1, 2]}}, "no state dict of tensors"),
        ({"state_dict": {}}, "no state dict of tensors"),
        ({"state_dict": {"x": torch.zeros(1)}}, "does not hold the weights of a small net"),
    ],
)
def test_malformed_state_is_one_checkpoint_error(tmp_path, extra, match) -> None:
    with pytest.raises(CheckpointError, match=match):
        load_segnet(_saved(tmp_path, {"arch": "small", "num_classes": 3}, **extra))
    path = tmp_path / "noconfig.pt"
    torch.save({"format": "spap-segnet", "version": 1}, path)
    with pytest.raises(CheckpointError, match="without config or state_dict"):
        load_segnet(path)


def test_save_is_atomic_and_follows_the_umask(tmp_path, monkeypatch) -> None:
    import os

    net = SmallSegNet(num_classes=3, width=4)
    path = save_segnet(tmp_path / "out" / "segnet.pt", net, {"arch": "small", "num_classes": 3})
    old = os.umask(0o022)
    os.umask(old)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~old)
    assert load_segnet(path)[1]["width"] == 4
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(WriteError, match="no space left"):
        save_segnet(path, SmallSegNet(num_classes=3, width=8), {"arch": "small"})
    assert path.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["segnet.pt"]  # no half file


def test_training_scores_only_through_the_given_function(aligned_dir, tmp_path) -> None:
    kw = {"size": 16, "steps": 2, "batch_size": 4, "width": 4, "device": "cpu"}
    plain = train_segnet(aligned_dir, tmp_path / "a", **kw)
    assert "test_scores" not in load_segnet(plain)[1]  # no scoring function, no scores
    seen = []

    def score(model, pairs, **kwargs):
        seen.append((len(pairs), kwargs))
        return {"pixel_acc": 0.5, "class_acc": 0.25, "class_iou": 0.125, "per_class": []}

    path = train_segnet(aligned_dir, tmp_path / "b", score=score, max_images=4, **kw)
    cfg = load_segnet(path)[1]
    assert cfg["test_scores"] == {"pixel_acc": 0.5, "class_acc": 0.25, "class_iou": 0.125}
    assert cfg["test_images"] == 4
    assert seen == [
        (6, {"net_size": 16, "batch_size": 4, "device": torch.device("cpu"), "max_images": 4})
    ]
