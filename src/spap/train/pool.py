"""History of generated images fed to the discriminator (Shrivastava et al. 2017).

Same rule as the CycleGAN reference implementation: while the pool holds fewer than
``size`` images, each new image is stored and returned as is; once full, each new image
is returned as is with probability 1/2, otherwise a random stored image is returned and
the new one takes its place. ``size=0`` disables the pool.

The pool draws its random numbers from its own ``torch.Generator`` and
``state_dict()`` holds both the stored images and the generator state, so a resumed run
continues with exactly the same choices.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ImagePool"]


class ImagePool:
    """A buffer of up to ``size`` previously generated images."""

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size = size
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) to show the discriminator for this batch (detached)."""
        images = images.detach()
        if self.size == 0:
            return images
        out = []
        for image in images:
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
                continue
            if torch.rand((), generator=self.generator).item() > 0.5:
                idx = int(torch.randint(self.size, (), generator=self.generator))
                old = self.images[idx]
                self.images[idx] = image.clone()
                out.append(old.to(image.device, image.dtype))
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict[str, Any]:
        """Stored images (on CPU) and the generator state."""
        return {
            "size": self.size,
            "images": [im.detach().cpu() for im in self.images],
            "generator": self.generator.get_state(),
        }

    def load_state_dict(
        self, state: dict[str, Any], device: torch.device | str | None = None
    ) -> None:
        """Restore images (moved to ``device`` if given) and the generator state."""
        if int(state["size"]) != self.size:
            raise ValueError(f"pool size mismatch: saved {state['size']}, this pool {self.size}")
        self.images = [
            im.to(device) if device is not None else im.clone() for im in state["images"]
        ]
        self.generator.set_state(state["generator"])
