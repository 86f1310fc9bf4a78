"""Choosing the device: one rule for training, inference, evaluation and the apps."""

from __future__ import annotations

import torch

from spap.errors import ConfigError

__all__ = ["pick_device"]


def pick_device(spec: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's GPU when CUDA is available, else the CPU; anything else as
    given (``cpu``, ``cuda``, ``cuda:1``), refused in one line if it is not usable here."""
    if isinstance(spec, torch.device):
        return spec
    spec = str(spec)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {spec!r} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device
