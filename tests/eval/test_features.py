"""The seg-net feature extractor: torch-fidelity agreement (FID, KID, IS), FID(A, A) = 0."""

from __future__ import annotations

import pytest
import torch_fidelity

from spap.eval import fidelity
from spap.eval.features import SEGNET_FEATURES


def test_segnet_features_agree_with_torch_fidelity(segnet_ckpt, image_dirs, tmp_path) -> None:
    a, b = image_dirs
    fidelity.list_feature_extractors()  # registers "spap-segnet" with torch-fidelity
    ref = torch_fidelity.calculate_metrics(
        input1=str(b),
        input2=str(a),
        fid=True,
        kid=True,
        isc=True,
        feature_extractor=SEGNET_FEATURES,
        feature_extractor_weights_path=str(segnet_ckpt),
        cuda=False,
        cache=False,
        kid_subset_size=4,
        isc_splits=2,
        save_cpu_ram=True,
        verbose=False,
    )
    ours = fidelity.compute_metrics(
        a,
        b,
        fid=True,
        kid=True,
        isc=True,
        feature_extractor=SEGNET_FEATURES,
        weights_path=segnet_ckpt,
        kid_subset_size=4,
        isc_splits=2,
        cache_dir=tmp_path,
        device="cpu",
    )
    assert ours["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-6)
    assert ours["kid_mean"] == pytest.approx(
        ref["kernel_inception_distance_mean"], rel=1e-6, abs=1e-12
    )
    assert ours["is_mean"] == pytest.approx(ref["inception_score_mean"], rel=1e-6)
    assert ours["is_std"] == pytest.approx(ref["inception_score_std"], rel=1e-6, abs=1e-12)
    assert ours["fid"] > 1e-3 and ours["is_mean"] >= 1.0
    same = fidelity.compute_fid(
        a, a, feature_extractor=SEGNET_FEATURES, weights_path=segnet_ckpt, cache=False, device="cpu"
    )
    assert abs(same) < 1e-3
    # the run folder works as the weights path too
    again = fidelity.compute_fid(
        a,
        b,
        feature_extractor=SEGNET_FEATURES,
        weights_path=segnet_ckpt.parent,
        cache_dir=tmp_path,
        device="cpu",
    )
    assert again == pytest.approx(ours["fid"], rel=1e-9)
