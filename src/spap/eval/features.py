"""Feature extractors for FID / KID / IS besides the standard Inception.

:class:`SegNetFeatureExtractor` (registered as ``"spap-segnet"``) turns a segmentation
network trained with ``spap seg train`` into a torch-fidelity feature extractor. Small
studies on their own data (e.g. 64x64 scene photos, far from ImageNet) can then report
"FID with a feature network trained on the scenes" instead of Inception features. Its
"weights" are the segmentation checkpoint. Features:

- ``"multiscale"`` (default for FID/KID): the encoder maps of every scale, each averaged
  over space, concatenated (``w + 2w + 4w + 4w`` = 352 values at width 32);
- ``"bottleneck"``: only the deepest encoder map, averaged over space;
- ``"logits"`` (default for IS): log of the image's mean per-pixel class probabilities, so
  IS measures how confidently and how diversely images show the classes.

Any other :class:`torch_fidelity.FeatureExtractorBase` subclass can be plugged in with
:func:`spap.eval.fidelity.register_feature_extractor`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.helpers import vassert

from spap.models.segnet import load_segnet

__all__ = ["SEGNET_FEATURES", "SegNetFeatureExtractor"]

#: Registered name of :class:`SegNetFeatureExtractor`.
SEGNET_FEATURES = "spap-segnet"


class SegNetFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor backed by a ``spap seg train`` checkpoint.

    Input: ``(N, 3, H, W)`` uint8 images; they are scaled to [-1, 1] and resized (bilinear,
    antialiased) to the size the network was trained at.
    """

    def __init__(
        self,
        name: str,
        features_list: list[str],
        feature_extractor_weights_path: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(name, features_list)
        vassert(
            feature_extractor_weights_path is not None,
            f"feature extractor {name!r} needs a segmentation checkpoint as its weights file",
        )
        self.net, config = load_segnet(feature_extractor_weights_path)
        self.size = config.get("size")
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("multiscale", "bottleneck", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "multiscale", "kid": "multiscale", "prc": "multiscale"}[
            metric
        ]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        vassert(torch.is_tensor(x) and x.dtype == torch.uint8, "Expecting uint8 images")
        vassert(x.dim() == 4 and x.shape[1] == 3, f"Input is not Bx3xHxW: {tuple(x.shape)}")
        x = x.float() / 127.5 - 1.0
        if self.size and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
            )
        out: dict[str, torch.Tensor] = {}
        wanted = set(self.features_list)
        if wanted & {"multiscale", "bottleneck"}:
            maps = self.net.features(x)
            pooled = [m.mean(dim=(2, 3)) for m in maps]
            out["multiscale"] = torch.cat(pooled, 1)
            out["bottleneck"] = pooled[-1]
        if "logits" in wanted:
            p = self.net(x).softmax(1).mean(dim=(2, 3))
            out["logits"] = p.clamp_min(1e-12).log()
        return tuple(out[f].float() for f in self.features_list)
