"""In-training FID / KID / FCN-score for real: tiny runs on tiny scenes with a tiny segnet
(its features stand in for Inception, whose weights are absent here), the logged scalars
checked against independent computations on the same images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spap.apps.report import read_scalars
from spap.data import to_tensor_image
from spap.data.scenes import write_scenes
from spap.eval.features import SEGNET_FEATURES, SegNetFeatureExtractor
from spap.eval.fidelity import compute_metrics
from spap.inference.loading import load_generators
from spap.models.segnet import load_segnet
from spap.models.sngan import latents
from spap.train.evaluation import _EVAL_SEED
from spap.train.segnet import train_segnet
from train.runs import train_cyclegan, train_gan

N_VAL = 6


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    write_scenes(root, n=12, size=32, seed=0, val_fraction=0.5)
    return root


@pytest.fixture(scope="module")
def segnet(scenes: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("segnet")
    return train_segnet(
        scenes, out, palette="scenes", size=32, steps=5, batch_size=4, width=8, device="cpu",
        eval_phase=None,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def no_inception(monkeypatch, tmp_path) -> None:
    """No Inception weights anywhere: the segnet's features are used (tag ``[segnet]``)."""
    monkeypatch.delenv("SPAP_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def _pngs(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]


def _uint8(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)


def _features(segnet: Path, images: torch.Tensor) -> np.ndarray:
    fe = SegNetFeatureExtractor(SEGNET_FEATURES, ["multiscale"], str(segnet))
    with torch.no_grad():
        return fe(images)[0].double().numpy()


def _fid_numpy(f1: np.ndarray, f2: np.ndarray) -> float:
    """The Frechet distance of Heusel et al. (2017); tr sqrt(S1 S2) as the trace of the
    symmetric square root of S1^1/2 S2 S1^1/2 (eigendecompositions of symmetric matrices)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(w.clip(0))) @ v.T
    tr_covmean = np.sqrt(np.linalg.eigvalsh(root @ s2 @ root).clip(0)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _kid_numpy(fake: np.ndarray, real: np.ndarray, size: int, subsets: int = 100) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018), averaged over
    the random subsets torch-fidelity draws (fake, then real, per subset; seed 2020)."""
    rng = np.random.RandomState(2020)
    d = fake.shape[1]
    out = []
    for _ in range(subsets):
        x = fake[rng.choice(len(fake), size, replace=False)]
        y = real[rng.choice(len(real), size, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        m = size
        off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        out.append(off - 2 * kxy.sum() / (m * m))
    return float(np.mean(out))


def test_cyclegan_fid_kid_fcn_match_independent_computations(
    scenes, segnet, tmp_path, caplog
) -> None:
    run = tmp_path / "run"
    over = [
        "data.load_size=32",
        "data.crop_size=32",  # the scenes' own size: the validation images are the PNGs
        "run.eval_every=2",
        f"run.eval_images={N_VAL}",
        "run.eval_metrics=[fid,kid,fcn]",
        f"run.eval_segnet={segnet}",
    ]
    caplog.set_level(logging.INFO)
    assert train_cyclegan(scenes, run, 4, *over) == 0
    cached = [r for r in caplog.records if "cached the segnet features" in r.getMessage()]
    assert len(cached) == 2  # once per domain, at the first evaluation
    ev = read_scalars(run / "tb", prefix="eval/")
    names = {"fid_AtoB[segnet]", "fid_BtoA[segnet]", "kid_AtoB[segnet]", "kid_BtoA[segnet]"}
    assert names | {"fcn_AtoB"} == set(ev)
    assert all([s for s, _ in ev[k]] == [2, 4] for k in ev)
    last = {k: v[-1][1] for k, v in ev.items()}
    assert len(list((run / "eval").glob("real_*_segnet_*.npz"))) == 2  # computed once, cached

    # the same images, independently: the validation PNGs, translated by the final weights
    gens = load_generators(run).generators
    val = {d: _pngs(scenes / f"val{d}") for d in "AB"}
    with torch.no_grad():
        fake = {
            f"{s}to{t}": gens[f"{s}to{t}"](
                torch.stack([to_tensor_image(Image.fromarray(a)) for a in val[s]])
            )
            for s, t in (("A", "B"), ("B", "A"))
        }
    for direction, target in (("AtoB", "B"), ("BtoA", "A")):
        real_u8, fake_u8 = _uint8(val[target]), _to_uint8(fake[direction])
        # torch-fidelity through spap.eval (what `spap eval fid` / `kid` run)
        ref = compute_metrics(
            real_u8, fake_u8, fid=True, kid=True, feature_extractor=SEGNET_FEATURES,
            weights_path=segnet, device="cpu", cache=False,
        )  # fmt: skip
        assert last[f"fid_{direction}[segnet]"] == pytest.approx(ref["fid"], rel=1e-5)
        assert last[f"kid_{direction}[segnet]"] == pytest.approx(ref["kid_mean"], rel=1e-5)
        # numpy formulas on the segnet's features
        fr, ff = _features(segnet, real_u8), _features(segnet, fake_u8)
        fid = _fid_numpy(ff, fr)
        assert fid > 0 and last[f"fid_{direction}[segnet]"] == pytest.approx(fid, rel=1e-5)
        kid = _kid_numpy(ff, fr, size=N_VAL // 2)
        # torch-fidelity sums the kernels in float32 (values near 1, MMD^2 near 1e-4)
        assert last[f"kid_{direction}[segnet]"] == pytest.approx(kid, abs=5e-7)

    # FCN-score: the segnet's pixel accuracy on the translations against the val class ids
    model, _ = load_segnet(segnet)
    with torch.no_grad():
        pred = model(fake["AtoB"]).argmax(1).numpy()
    gt = np.stack([np.asarray(Image.open(p)) for p in sorted((scenes / "val_ids").glob("*.png"))])
    assert last["fcn_AtoB"] == pytest.approx(float((pred == gt).mean()), abs=1e-6)

    # a resumed run reuses the cached real-side features instead of extracting them again
    caplog.clear()
    assert train_cyclegan(scenes, run, 6, *over, "--resume") == 0
    assert not [r for r in caplog.records if "cached the segnet features" in r.getMessage()]
    assert len(list((run / "eval").glob("real_*_segnet_*.npz"))) == 2
    fid = read_scalars(run / "tb", prefix="eval/")["fid_AtoB[segnet]"]
    assert [s for s, _ in fid] == [2, 4, 6]


def test_gan_fid_kid_of_ema_samples_match_torch_fidelity(scenes, segnet, tmp_path) -> None:
    run = tmp_path / "gan"
    data = scenes / "trainB"
    over = ["run.eval_every=2", "run.eval_images=4", "run.eval_metrics=[fid,kid]"]
    assert train_gan(data, run, 2, *over, f"run.eval_segnet={segnet}") == 0
    ev = read_scalars(run / "tb", prefix="eval/")
    assert set(ev) == {"fid_gan[segnet]", "kid_gan[segnet]"}
    # the validation images are the folder's last 4 (sorted by name); EMA samples of the
    # evaluation noise
    real = _uint8(_pngs(data)[-4:])
    loaded = load_generators(run)
    with torch.no_grad():
        fake = loaded.generators["G"](latents(_EVAL_SEED, range(4), loaded.model_config.z_dim))
    ref = compute_metrics(
        real, _to_uint8(fake), fid=True, kid=True, feature_extractor=SEGNET_FEATURES,
        weights_path=segnet, device="cpu", cache=False,
    )  # fmt: skip
    assert ev["fid_gan[segnet]"][-1][1] == pytest.approx(ref["fid"], rel=1e-5)
    assert ev["kid_gan[segnet]"][-1][1] == pytest.approx(ref["kid_mean"], rel=1e-5)
