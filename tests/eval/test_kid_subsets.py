"""KID on sets no larger than the requested subset size: subsets of half the smaller set,
whose spread means something, instead of the whole set every time (a std of exactly 0)."""

from __future__ import annotations

import logging

import pytest
import torch_fidelity

from spap.eval.fidelity import compute_metrics

KW = {"device": "cpu", "batch_size": 8, "feature_layer": "64", "cache": False}


def test_kid_on_a_small_set_uses_half_subsets_that_vary(
    inception_weights, image_dirs, caplog
) -> None:
    a, b = image_dirs  # 8 images each
    with caplog.at_level(logging.INFO, logger="spap.eval.fidelity"):
        ours = compute_metrics(
            a, b, fid=False, kid=True, weights_path=inception_weights, kid_subset_size=1000, **KW
        )
    assert ours["kid_subset_size"] == 4 and ours["kid_std"] > 0
    assert "KID: subsets of 4 images, not 1000: half the smaller set (8 images)" in caplog.text
    # the same numbers as torch-fidelity asked for subsets of 4
    ref = torch_fidelity.calculate_metrics(
        input1=str(b),
        input2=str(a),
        kid=True,
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(inception_weights),
        feature_layer_kid="64",
        cuda=False,
        cache=False,
        batch_size=8,
        kid_subset_size=4,
        save_cpu_ram=True,
        verbose=False,
    )
    assert ours["kid_mean"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-6)
    assert ours["kid_std"] == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-6)


def test_kid_subsets_smaller_than_the_sets_are_kept(inception_weights, image_dirs) -> None:
    a, b = image_dirs
    ours = compute_metrics(
        a, b, fid=False, kid=True, weights_path=inception_weights, kid_subset_size=3, **KW
    )
    assert ours["kid_subset_size"] == 3
