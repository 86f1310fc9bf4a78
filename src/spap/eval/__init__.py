"""Evaluation: FID / KID / IS, FCN-score (segmentation scores), paired PSNR / SSIM.

Submodules (imported lazily, so ``import spap.eval`` stays cheap):

- :mod:`spap.eval.fidelity`: FID / KID / IS through torch-fidelity, statistics cache;
- :mod:`spap.eval.features`: feature extractors besides Inception (a trained seg net);
- :mod:`spap.eval.segmentation`: confusion-matrix scores, score tables;
- :mod:`spap.eval.fcn`: FCN-score of a translation model on an aligned test set, and of a
  segmentation net on real photos (``evaluate_segnet``);
- :mod:`spap.eval.paired`: PSNR and SSIM.

What the scores are computed on lives in the layers above: label spaces and aligned pairs
in :mod:`spap.data.labels` / :mod:`spap.data.pairs`, the segmentation networks in
:mod:`spap.models.segnet`, their training in :mod:`spap.train.segnet`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "compute_metrics": "fidelity",
    "compute_fid": "fidelity",
    "compute_kid": "fidelity",
    "compute_is": "fidelity",
    "compute_statistics": "fidelity",
    "save_statistics": "fidelity",
    "load_statistics": "fidelity",
    "register_feature_extractor": "fidelity",
    "list_feature_extractors": "fidelity",
    "resolve_inception_weights": "fidelity",
    "SegNetFeatureExtractor": "features",
    "ConfusionMatrix": "segmentation",
    "score_labels": "segmentation",
    "scores_from_confusion": "segmentation",
    "format_scores_table": "segmentation",
    "evaluate_segnet": "fcn",
    "fcn_score": "fcn",
    "psnr": "paired",
    "ssim": "paired",
    "paired_metrics": "paired",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"spap.eval.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'spap.eval' has no attribute {name!r}")
