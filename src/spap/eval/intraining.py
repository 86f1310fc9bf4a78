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

Cost. The extractor is built once per run (weights vetted as by
:func:`spap.eval.fidelity.compute_metrics`). The real side's features are extracted once,
at the first evaluation, and kept (in memory, and in ``RUN/eval/real_<domain>_<features>_
<key>.npz`` with their FID statistics, ``key`` a digest of the images and the extractor's
weights, so a resumed run reuses them and other images or weights never do); each
evaluation then extracts the features of the generated images once and computes both FID
and KID from them. The numbers are torch-fidelity's (its feature extraction,
``fid_statistics_to_metric`` and ``kid_featuresdict_to_metric`` with the defaults of
``spap eval fid``: KID over 100 subsets of :func:`~spap.eval.fidelity.kid_size` images,
seed 2020), so ``spap eval fid``/``kid`` on the same images (saved as 8-bit PNGs) give the
same values.

FCN-score (``fcn_AtoB``: per-pixel accuracy of the segnet on translations A -> B, against
A's label colours mapped to class ids with the segnet's label space) needs
``run.eval_segnet``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch_fidelity.metric_fid import (
    KEY_METRIC_FID,
    fid_featuresdict_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_featuresdict_to_metric
from torch_fidelity.utils import get_featuresdict_from_dataset

from spap.data.labels import get_label_space, nearest_palette
from spap.devices import pick_device
from spap.errors import SpapError
from spap.eval.fidelity import (
    INCEPTION,
    SEGNET_FEATURES,
    build_feature_extractor,
    kid_size,
    resolve_inception_weights,
    to_uint8,
)
from spap.eval.segmentation import ConfusionMatrix
from spap.files import atomic_write
from spap.models.segnet import load_segnet, predict_ids

__all__ = ["InTrainingMetrics", "feature_metrics", "pick_features"]

log = logging.getLogger(__name__)

#: KID settings: those of ``spap eval`` (torch-fidelity's defaults).
KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED = 100, 1000, 2020
_BATCH = 32
_CACHE_FORMAT = "spap-intraining-features-1"


def pick_features(segnet: str | None) -> tuple[str, str | None, str] | None:
    """(torch-fidelity extractor, weights file, tag) for in-training FID/KID, or None."""
    try:
        return INCEPTION, str(resolve_inception_weights()), "inception"
    except SpapError as exc:
        if "SPAP_INCEPTION_WEIGHTS=" in str(exc):  # set, but to no file: say so
            log.warning("in-training FID/KID: %s", str(exc).split(";")[0])
    if segnet:
        p = Path(segnet)
        return SEGNET_FEATURES, str(p / "segnet.pt" if p.is_dir() else p), "segnet"
    return None


class _Uint8(Dataset):
    """(N, 3, H, W) images as uint8 items, written as ``save_image`` would write them."""

    def __init__(self, images: Tensor) -> None:
        self.images = to_uint8(images.cpu())

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


class InTrainingMetrics:
    """``(name, real, fake) -> {metric: value}`` for ``run.eval_metrics`` (see the module doc).

    ``name``: "AtoB" / "BtoA" (real = the target domain's validation images, fake = the
    translations), "gan" (real = validation images, fake = EMA samples) or "fcn" (real = the
    A-side label images, fake = their translations).
    """

    def __init__(self, cfg: Any, run_dir: str | Path) -> None:
        rc = cfg.run
        self.want = set(rc.eval_metrics)
        self.features = pick_features(rc.eval_segnet) if self.want & {"fid", "kid"} else None
        if self.want & {"fid", "kid"} and self.features is None:
            log.warning(
                "in-training FID/KID left out: no Inception weights (SPAP_INCEPTION_WEIGHTS or "
                "torch.hub's checkpoint folder) and no run.eval_segnet to take features from"
            )
        self.segnet: tuple[torch.nn.Module, dict[str, Any]] | None = None
        if "fcn" in self.want:
            if not rc.eval_segnet:
                log.warning("in-training FCN-score left out: it needs run.eval_segnet")
            else:
                self.segnet = load_segnet(rc.eval_segnet)
        self.cache = Path(run_dir) / "eval"
        self.device = pick_device(rc.device)
        self._extractor: Any = None
        self._layer = ""
        self._wtag = ""
        self._real: dict[str, tuple[str, dict[str, Tensor], dict[str, np.ndarray]]] = {}

    # -- features
    def _build(self) -> None:
        assert self.features is not None
        if self._extractor is None:
            fe, weights, _ = self.features
            self._extractor, self._layer, self._wtag = build_feature_extractor(
                fe, weights, device=self.device
            )

    def _extract(self, images: Tensor) -> dict[str, Tensor]:
        self._build()
        cuda = self.device.type == "cuda"
        with torch.cuda.device(self.device) if cuda else contextlib.nullcontext():
            return get_featuresdict_from_dataset(
                _Uint8(images), self._extractor, _BATCH, cuda, True, False
            )

    def _real_side(self, domain: str, real: Tensor) -> tuple[dict[str, Tensor], dict]:
        """Features and FID statistics of the real images: once per run (and per cache)."""
        assert self.features is not None
        pixels = to_uint8(real.cpu()).numpy()
        self._build()  # the extractor's weights tag keys the cache
        digest = hashlib.sha256(pixels.tobytes())
        digest.update(f"\n{pixels.shape}\n{self._wtag}\n{self._layer}".encode())
        key = digest.hexdigest()[:16]
        held = self._real.get(domain)
        if held is not None and held[0] == key:
            return held[1], held[2]
        tag = self.features[2]
        path = self.cache / f"real_{domain}_{tag}_{key}.npz"
        feats = stats = None
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if str(z["format"]) == _CACHE_FORMAT and str(z["key"]) == key:
                        feats = {self._layer: torch.from_numpy(z["features"])}
                        stats = {"mu": z["mu"], "sigma": z["sigma"]}
            except (OSError, ValueError, KeyError) as exc:
                log.warning("ignoring the unreadable feature cache %s: %s", path, exc)
        if feats is None or stats is None:
            feats = self._extract(real)
            stats = fid_featuresdict_to_statistics(feats, self._layer)
            arrays = {
                "format": np.str_(_CACHE_FORMAT),
                "key": np.str_(key),
                "features": feats[self._layer].numpy(),
                "mu": stats["mu"],
                "sigma": stats["sigma"],
            }
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            atomic_write(path, lambda fh: fh.write(buf.getvalue()))
            log.info("cached the %s features of %d real images in %s", tag, len(real), path)
        self._real[domain] = (key, feats, stats)
        return feats, stats

    # -- metrics
    def _fcn(self, labels: Tensor, fake: Tensor) -> dict[str, float]:
        if self.segnet is None:
            return {}
        model, scfg = self.segnet
        space = get_label_space(scfg.get("palette") or "scenes")
        gt = _label_ids(labels, space)
        pred = predict_ids(
            model.to(self.device), fake.to(self.device), scfg.get("size"), tuple(gt.shape[-2:])
        )
        cm = ConfusionMatrix(space.num_classes, space.ignore_index)
        cm.update(pred.cpu(), gt)
        return {"fcn_AtoB": float(cm.scores(space.class_names)["pixel_acc"])}

    def __call__(self, name: str, real: Tensor, fake: Tensor) -> dict[str, float]:
        if name == "fcn":
            return self._fcn(real, fake)
        if self.features is None or not self.want & {"fid", "kid"}:
            return {}
        tag = self.features[2]
        domain = {"AtoB": "B", "BtoA": "A"}.get(name, "real")
        real_feats, real_stats = self._real_side(domain, real)
        fake_feats = self._extract(fake)
        out: dict[str, float] = {}
        if "fid" in self.want:
            fake_stats = fid_featuresdict_to_statistics(fake_feats, self._layer)
            fid = fid_statistics_to_metric(fake_stats, real_stats, False)[KEY_METRIC_FID]
            out[f"fid_{name}[{tag}]"] = float(fid)
        if "kid" in self.want:
            n_fake, n_real = len(fake), len(real_feats[self._layer])
            kid = kid_featuresdict_to_metric(
                fake_feats,
                real_feats,
                self._layer,
                kid_subsets=KID_SUBSETS,
                kid_subset_size=kid_size(KID_SUBSET_SIZE, n_fake, n_real),
                rng_seed=KID_SEED,
                verbose=False,
            )
            out[f"kid_{name}[{tag}]"] = float(kid[KEY_METRIC_KID_MEAN])
        return out


def feature_metrics(cfg: Any, run_dir: str | Path) -> InTrainingMetrics | None:
    """The callable for ``cfg.run.eval_metrics`` (None when it needs none of fid, kid, fcn)."""
    rc = cfg.run
    if not set(rc.eval_metrics) & {"fid", "kid", "fcn"} or rc.eval_every <= 0:
        return None
    return InTrainingMetrics(cfg, run_dir)


def _label_ids(labels: Tensor, space: Any) -> Tensor:
    """Class ids (N, H, W) of label images in [-1, 1] (nearest label colour)."""
    rgb = ((labels.float()[:, :3].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    rgb = rgb.permute(0, 2, 3, 1).numpy()
    ids = [
        torch.as_tensor(nearest_palette(im, space.lookup_colors, space.lookup_ids)) for im in rgb
    ]
    return torch.stack(ids).long()
