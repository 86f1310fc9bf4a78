"""Python inference API: load a checkpoint (or run folder) and use its generator.

>>> from spap.inference import load
>>> model = load("runs/facades_spap")          # a Translator (CycleGAN) or a Sampler (GAN)

The architecture is rebuilt from the configuration stored in the checkpoint: no flags
have to be repeated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["Sampler", "Translator", "load"]


def load(checkpoint: str | Path, device: str = "auto", **kwargs: Any) -> Any:
    """A :class:`Translator` for a CycleGAN checkpoint, a :class:`Sampler` for a GAN one."""
    from spap.errors import CheckpointError
    from spap.train.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    kind = state.get("kind")
    if kind == "cyclegan":
        from spap.inference.translate import Translator

        return Translator.from_state(state, device=device, **kwargs)
    if kind == "gan":
        from spap.inference.sample import Sampler

        return Sampler.from_state(state, device=device, **kwargs)
    raise CheckpointError(f"{state.get('path')}: unknown checkpoint kind {kind!r}")


def __getattr__(name: str) -> Any:
    if name == "Translator":
        from spap.inference.translate import Translator

        return Translator
    if name == "Sampler":
        from spap.inference.sample import Sampler

        return Sampler
    raise AttributeError(name)
