"""Evaluation: FID / KID / IS, FCN-score (segmentation scores), paired PSNR / SSIM.

Submodules (imported lazily, so ``import spap.eval`` stays cheap):

- :mod:`spap.eval.fidelity`: FID / KID / IS through torch-fidelity, statistics cache;
- :mod:`spap.eval.features`: feature extractors besides Inception (a trained seg net);
- :mod:`spap.eval.segmentation`: confusion-matrix scores, label spaces, nearest palette;
- :mod:`spap.eval.segnet`: segmentation networks, training, loading;
- :mod:`spap.eval.fcn`: FCN-score of a translation model on an aligned test set;
- :mod:`spap.eval.paired`: PSNR and SSIM;
- :mod:`spap.eval.pairs`: reading aligned test pairs and ground-truth ids.
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
    "LabelSpace": "segmentation",
    "get_label_space": "segmentation",
    "nearest_palette": "segmentation",
    "score_labels": "segmentation",
    "scores_from_confusion": "segmentation",
    "format_scores_table": "segmentation",
    "build_segnet": "segnet",
    "load_segnet": "segnet",
    "save_segnet": "segnet",
    "train_segnet": "segnet",
    "predict_ids": "segnet",
    "evaluate_segnet": "segnet",
    "fcn_score": "fcn",
    "psnr": "paired",
    "ssim": "paired",
    "paired_metrics": "paired",
    "AlignedPairs": "pairs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"spap.eval.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'spap.eval' has no attribute {name!r}")
