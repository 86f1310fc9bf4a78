"""Python inference API: load a checkpoint, a run folder or an export and use its generator.

>>> from spap.inference import load
>>> model = load("runs/facades_spap")          # a Translator (CycleGAN) or a Sampler (GAN)

The architecture is rebuilt from the model section stored with the weights: no flags have
to be repeated.
"""

from __future__ import annotations

import os
from typing import Any

from spap.inference.loading import load_generators
from spap.inference.sample import Sampler
from spap.inference.translate import Translator

__all__ = ["Sampler", "Translator", "load"]


def load(checkpoint: str | os.PathLike, device: str = "auto", ema: bool = True) -> Any:
    """A :class:`Translator` for a CycleGAN file, a :class:`Sampler` for a GAN one
    (``ema=False``: a GAN checkpoint's raw generator)."""
    loaded = load_generators(checkpoint, ema=ema)
    if loaded.kind == "gan":
        return Sampler.from_loaded(loaded, device)
    return Translator.from_loaded(loaded, device)
