"""FID / KID / IS: agreement with torch-fidelity, caching, inputs, missing weights."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity
import torch_fidelity.utils
from PIL import Image

from spap.errors import SpapError
from spap.eval import fidelity
from spap.eval.fidelity import compute_metrics, load_statistics, save_statistics

# The 64-channel Inception layer keeps the tests fast: a 2048x2048 FID (eigenvalues of a
# non-symmetric matrix) takes minutes on a busy CPU, and with 8 images (N << D) torch-fidelity's
# eigenvalue square roots of a singular covariance leave an error of ~1e-2 at 2048 features.
LAYER = "64"
KW = {
    "kid_subset_size": 4,
    "isc_splits": 2,
    "device": "cpu",
    "batch_size": 8,
    "feature_layer": LAYER,
}


def _images(folder: Path) -> torch.Tensor:
    files = sorted(folder.glob("*.png"))
    return torch.stack(
        [torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files]
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fidelity-cache")


@pytest.fixture(scope="module")
def reference(inception_weights, image_dirs) -> dict[str, float]:
    """torch-fidelity run directly on the two folders (input1 = fake = b, input2 = real = a).

    IS needs Inception's logits, i.e. the whole network at 299x299, too slow for a unit test
    on a shared CPU: its agreement is tested with the seg-net extractor (test_features.py).
    """
    a, b = image_dirs
    return torch_fidelity.calculate_metrics(
        input1=str(b),
        input2=str(a),
        fid=True,
        kid=True,
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(inception_weights),
        feature_layer_fid=LAYER,
        feature_layer_kid=LAYER,
        cuda=False,
        cache=False,
        batch_size=8,
        kid_subset_size=4,
        isc_splits=2,
        save_cpu_ram=True,
        verbose=False,
    )


@pytest.fixture(scope="module")
def ours(inception_weights, image_dirs, cache_dir) -> dict[str, float]:
    a, b = image_dirs
    return compute_metrics(
        a, b, fid=True, kid=True, weights_path=inception_weights, cache_dir=cache_dir, **KW
    )


def test_agrees_with_torch_fidelity(reference, ours) -> None:
    assert ours["fid"] == pytest.approx(reference["frechet_inception_distance"], rel=1e-6, abs=1e-6)
    assert ours["kid_mean"] == pytest.approx(
        reference["kernel_inception_distance_mean"], rel=1e-6, abs=1e-9
    )
    assert ours["kid_std"] == pytest.approx(
        reference["kernel_inception_distance_std"], rel=1e-6, abs=1e-9
    )
    assert ours["fid"] > 1.0  # the random network does tell the two sets apart


def test_fid_of_identical_sets_is_zero(inception_weights, image_dirs, cache_dir) -> None:
    a, _ = image_dirs
    # the folder (cached features) against the same images given as a tensor (recomputed)
    fid = compute_metrics(a, _images(a), weights_path=inception_weights, cache_dir=cache_dir, **KW)[
        "fid"
    ]
    assert abs(fid) < 1e-3


def test_tensor_input_matches_folder(ours, inception_weights, image_dirs, cache_dir) -> None:
    a, b = image_dirs
    fake = _images(b).float() / 127.5 - 1.0  # [-1, 1] floats are converted back exactly
    fid = compute_metrics(a, fake, weights_path=inception_weights, cache_dir=cache_dir, **KW)["fid"]
    assert fid == pytest.approx(ours["fid"], rel=1e-5)


def test_statistics_cache_is_reused(
    ours, inception_weights, image_dirs, cache_dir, monkeypatch
) -> None:
    a, b = image_dirs
    entries = sorted(p.name for p in cache_dir.iterdir())
    assert any(n.endswith(f".fid-stats-{LAYER}.pt") for n in entries)
    assert any(n.endswith(f".features-{LAYER}.pt") for n in entries)
    assert not any("-stat-fid-" in n or "-features-" in n for n in entries)  # not torch-fidelity's
    for p in cache_dir.iterdir():  # plain tensors only: loadable weights-only, no globals
        assert torch.load(p, weights_only=True)["format"] == "spap-fidelity-cache"
    calls = []
    real_fn = torch_fidelity.utils.get_featuresdict_from_dataset
    monkeypatch.setattr(
        torch_fidelity.utils,
        "get_featuresdict_from_dataset",
        lambda *a, **k: calls.append(1) or real_fn(*a, **k),
    )
    fid = compute_metrics(a, b, weights_path=inception_weights, cache_dir=cache_dir, **KW)["fid"]
    assert calls == []  # both sides came from the cache
    assert fid == pytest.approx(ours["fid"], rel=1e-9)


def test_changed_folder_is_not_served_from_cache(
    inception_weights, image_dirs, cache_dir, tmp_path, monkeypatch
) -> None:
    a, b = image_dirs
    a2 = tmp_path / "a2"
    shutil.copytree(a, a2)
    fidelity.compute_metrics(a2, b, weights_path=inception_weights, cache_dir=cache_dir, **KW)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(a2 / "000.png")  # new content
    calls = []
    real_fn = torch_fidelity.utils.get_featuresdict_from_dataset
    monkeypatch.setattr(
        torch_fidelity.utils,
        "get_featuresdict_from_dataset",
        lambda *a, **k: calls.append(1) or real_fn(*a, **k),
    )
    fidelity.compute_metrics(a2, b, weights_path=inception_weights, cache_dir=cache_dir, **KW)
    assert calls == [1]  # a2 recomputed, b from the cache


def test_saved_statistics_give_the_same_fid(
    ours, inception_weights, image_dirs, cache_dir, tmp_path
) -> None:
    a, b = image_dirs
    path = save_statistics(
        a,
        tmp_path / "real_stats",
        weights_path=inception_weights,
        feature_layer=LAYER,
        cache_dir=cache_dir,
        device="cpu",
    )
    assert path.suffix == ".npz"
    stats = load_statistics(path)
    assert stats["mu"].shape == (64,) and stats["sigma"].shape == (64, 64)
    assert stats["num_images"] == 8 and stats["feature_extractor"] == "inception-v3-compat"
    fid = compute_metrics(path, b, weights_path=inception_weights, cache_dir=cache_dir, **KW)["fid"]
    assert fid == pytest.approx(ours["fid"], rel=1e-5)
    with pytest.raises(SpapError, match="feature layer"):
        compute_metrics(
            path,
            b,
            weights_path=inception_weights,
            cache_dir=cache_dir,
            **dict(KW, feature_layer="192"),
        )
    with pytest.raises(SpapError, match="KID and IS need images"):
        compute_metrics(
            path, b, fid=False, kid=True, weights_path=inception_weights, cache_dir=cache_dir, **KW
        )


class _ListSampler:
    """The ``Sampler`` contract: ``sample(n, seed, batch_size)`` -> images in [-1, 1]."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images.float() / 127.5 - 1.0
        self.seeds: list[int] = []

    def sample(self, n: int, seed: int = 0, batch_size: int = 16) -> torch.Tensor:
        self.seeds.append(seed)
        start = (len(self.seeds) - 1) * n
        return self.images[start : start + n]


def test_generator_input_draws_num_samples(inception_weights, image_dirs, cache_dir) -> None:
    a, _ = image_dirs
    sampler = _ListSampler(_images(a))
    kw = dict(KW, batch_size=4)
    fid = compute_metrics(
        a, sampler, num_samples=8, seed=5, weights_path=inception_weights, cache_dir=cache_dir, **kw
    )
    assert sampler.seeds == [5, 6]  # two batches of 4, one seed each
    assert abs(fid["fid"]) < 1e-3
    with pytest.raises(SpapError, match="number of images"):
        compute_metrics(a, sampler, weights_path=inception_weights, cache_dir=cache_dir, **KW)


def test_missing_weights_error_says_what_where_and_how(monkeypatch, tmp_path, image_dirs) -> None:
    monkeypatch.delenv(fidelity.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(
        torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("download")
    )
    a, b = image_dirs
    with pytest.raises(SpapError) as err:
        compute_metrics(a, b, device="cpu")
    msg = str(err.value)
    assert "\n" not in msg
    assert "weights-inception-2015-12-05-6726825d.pth" in msg
    assert "https://github.com/toshas/torch-fidelity/releases/download/" in msg
    assert str(tmp_path / "hub" / "checkpoints" / fidelity.INCEPTION_FILE) in msg
    assert "SPAP_INCEPTION_WEIGHTS" in msg and "--weights" in msg
    monkeypatch.setenv(fidelity.WEIGHTS_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(SpapError, match="nope.pth but no such file"):
        compute_metrics(a, b, device="cpu")
    with pytest.raises(SpapError, match="not found: .*missing.pth"):
        compute_metrics(a, b, weights_path=tmp_path / "missing.pth", device="cpu")


def test_weights_found_by_env_and_default_location(
    monkeypatch, tmp_path, inception_weights
) -> None:
    monkeypatch.setenv(fidelity.WEIGHTS_ENV, str(inception_weights))
    assert fidelity.resolve_inception_weights() == inception_weights
    monkeypatch.delenv(fidelity.WEIGHTS_ENV)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    target = tmp_path / "hub" / "checkpoints" / fidelity.INCEPTION_FILE
    target.parent.mkdir(parents=True)
    os.symlink(inception_weights, target)
    assert fidelity.resolve_inception_weights() == target


def test_other_extractors_need_weights_and_unknown_names_fail(image_dirs) -> None:
    a, b = image_dirs
    with pytest.raises(SpapError, match="needs a weights file"):
        compute_metrics(a, b, feature_extractor="vgg16", device="cpu")
    with pytest.raises(SpapError, match="unknown feature extractor 'nope'"):
        compute_metrics(a, b, feature_extractor="nope", device="cpu")
    assert "spap-segnet" in fidelity.list_feature_extractors()


def test_wrong_weights_file_is_a_user_error(tmp_path, image_dirs) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    a, b = image_dirs
    with pytest.raises(SpapError, match="does not hold the weights"):
        compute_metrics(a, b, weights_path=bad, cache=False, device="cpu")
