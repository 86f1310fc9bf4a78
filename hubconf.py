"""torch.hub entry points of spap.

>>> import torch
>>> unit = torch.hub.load("path/to/spap", "spap_unit", 256, norm="instance", source="local")
>>> unit = torch.hub.load("path/to/spap", "spap_unit", pretrained="my-unit", source="local")
>>> model = torch.hub.load("path/to/spap", "generator", "runs/facades_spap", source="local")
>>> g = torch.hub.load("path/to/spap", "generator", "hf://user/name", module=True, source="local")

``generator`` takes whatever ``--checkpoint`` takes: a checkpoint file, a run folder, a
``.safetensors`` export, a Hugging Face folder (``spap export --format huggingface``) or a
Hub repository (``user/name`` / ``hf://user/name``, with ``huggingface_hub`` installed).
"""

import os
import sys

dependencies = ["torch", "torchvision", "numpy", "PIL", "yaml", "safetensors", "tqdm"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if "spap" not in sys.modules and os.path.isdir(os.path.join(_SRC, "spap")):
    sys.path.insert(0, _SRC)  # a checkout used without installing it


def spap_unit(channels=64, *, norm=None, activation="relu", pretrained=None, **kwargs):
    """A SPAP unit: ``SPAP(channels, **kwargs)`` with the layers of
    ``LayerFactory(norm=norm or "none", activation=activation)``, or the unit saved in
    ``pretrained`` (a folder written by ``SPAP.save_pretrained`` or a Hub id)."""
    from spap.layers import SPAP, LayerFactory  # noqa: PLC0415 - after torch.hub's dependency check

    if pretrained is not None:
        return SPAP.from_pretrained(pretrained, **kwargs)
    layers = LayerFactory(norm=norm or "none", activation=activation).layer_kwargs()
    layers.update(kwargs)
    return SPAP(channels, **layers)


def generator(checkpoint_or_folder, *, device="cpu", module=False, direction="AtoB", ema=True):
    """A ``Translator`` (CycleGAN) or ``Sampler`` (GAN) of a trained model; ``module=True``
    gives the generator ``nn.Module`` itself (the ``direction`` one of a CycleGAN) in eval
    mode."""
    from spap.inference import load  # noqa: PLC0415 - after torch.hub's dependency check
    from spap.inference.hub import resolve  # noqa: PLC0415
    from spap.inference.sample import Sampler  # noqa: PLC0415

    model = load(resolve(checkpoint_or_folder), device=device, ema=ema)
    if not module:
        return model
    return model.generator if isinstance(model, Sampler) else model.generator(direction)
