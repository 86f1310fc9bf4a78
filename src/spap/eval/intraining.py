"""FID / KID / FCN-score during training: the ``feature_metrics`` callable that
:class:`spap.train.evaluation.ValidationEvaluator` calls (``spap train`` builds it).

Feature extractor, named in every value (``fid_AtoB[inception]``, ``kid_gan[segnet]``):

- ``inception``: torch-fidelity's ``inception-v3-compat`` when its weights are present
  (``SPAP_INCEPTION_WEIGHTS`` or torch.hub's checkpoint folder; nothing is downloaded);
- ``segnet``: otherwise, the features of the segmentation net ``run.eval_segnet`` (a
  ``spap seg train`` checkpoint; :mod:`spap.eval.features`, multiscale encoder features).
  These numbers measure distance in that net's feature space: comparable between runs that
  use the same segnet, not with published Inception FIDs;
- neither: FID and KID are left out, with one warning saying why (random features would
  measure nothing meaningful).

The real side's FID statistics are computed once per run and cached in
``RUN/eval/real_<domain>_<features>.npz`` (KID needs the real features themselves and
recomputes them, a small cost at ``run.eval_images`` images). FCN-score (``fcn_AtoB``:
per-pixel accuracy of the segnet on translations A -> B, against A's label colours mapped to
class ids with the segnet's label space) needs ``run.eval_segnet``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spap.data.labels import get_label_space, nearest_palette
from spap.errors import SpapError
from spap.eval.fidelity import (
    INCEPTION,
    SEGNET_FEATURES,
    compute_metrics,
    kid_size,
    resolve_inception_weights,
    save_statistics,
)
from spap.eval.segmentation import ConfusionMatrix
from spap.models.segnet import load_segnet, predict_ids

__all__ = ["feature_metrics", "pick_features"]

log = logging.getLogger(__name__)


def pick_features(segnet: str | None) -> tuple[str, str | None, str] | None:
    """(torch-fidelity extractor, weights file, tag) for in-training FID/KID, or None."""
    try:
        return INCEPTION, str(resolve_inception_weights()), "inception"
    except SpapError:
        pass
    if segnet:
        p = Path(segnet)
        return SEGNET_FEATURES, str(p / "segnet.pt" if p.is_dir() else p), "segnet"
    return None


def feature_metrics(cfg: Any, run_dir: str | Path) -> Callable[..., dict[str, float]] | None:
    """The callable for ``cfg.run.eval_metrics`` (None when it needs none of fid, kid, fcn)."""
    rc = cfg.run
    want = set(rc.eval_metrics)
    if not want & {"fid", "kid", "fcn"} or rc.eval_every <= 0:
        return None
    features = pick_features(rc.eval_segnet) if want & {"fid", "kid"} else None
    if want & {"fid", "kid"} and features is None:
        log.warning(
            "in-training FID/KID left out: no Inception weights (SPAP_INCEPTION_WEIGHTS or %s) "
            "and no run.eval_segnet to take features from",
            "torch.hub's checkpoint folder",
        )
    segnet = None
    if "fcn" in want:
        if not rc.eval_segnet:
            log.warning("in-training FCN-score left out: it needs run.eval_segnet")
        else:
            model, scfg = load_segnet(rc.eval_segnet)
            segnet = (model, scfg)
    cache = Path(run_dir) / "eval"
    device = "cuda" if torch.cuda.is_available() and rc.device != "cpu" else "cpu"

    def compute(name: str, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        out: dict[str, float] = {}
        if name == "fcn":
            if segnet is not None:
                model, scfg = segnet
                space = get_label_space(scfg.get("palette") or "scenes")
                gt = _label_ids(real, space)
                pred = predict_ids(
                    model.to(fake.device), fake, scfg.get("size"), tuple(gt.shape[-2:])
                )
                cm = ConfusionMatrix(space.num_classes, space.ignore_index)
                cm.update(pred.cpu(), gt)
                out["fcn_AtoB"] = float(cm.scores(space.class_names)["pixel_acc"])
            return out
        if features is None:
            return out
        fe, weights, tag = features
        kw: dict[str, Any] = dict(
            feature_extractor=fe, weights_path=weights, device=device, cache=False
        )
        if "fid" in want:
            domain = {"AtoB": "B", "BtoA": "A"}.get(name, "real")
            stats = cache / f"real_{domain}_{tag}.npz"
            if not stats.is_file():
                save_statistics(real, stats, **kw)
            out[f"fid_{name}[{tag}]"] = compute_metrics(stats, fake, fid=True, **kw)["fid"]
        if "kid" in want:
            size = kid_size(1000, len(fake), len(real))
            res = compute_metrics(real, fake, fid=False, kid=True, kid_subset_size=size, **kw)
            out[f"kid_{name}[{tag}]"] = res["kid_mean"]
        return out

    return compute


def _label_ids(labels: torch.Tensor, space: Any) -> torch.Tensor:
    """Class ids (N, H, W) of label images in [-1, 1] (nearest label colour)."""
    rgb = ((labels.float()[:, :3].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    rgb = rgb.permute(0, 2, 3, 1).numpy()
    ids = [
        torch.as_tensor(nearest_palette(im, space.lookup_colors, space.lookup_ids)) for im in rgb
    ]
    return torch.stack(ids).long()
