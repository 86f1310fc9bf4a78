"""Derived seeds: every random stream of spap is seeded from integer keys by one pure function.

Torch-free (NumPy only), so that the networks, the data and the training loop can all use
it without importing each other.
"""

from __future__ import annotations

import numpy as np

__all__ = ["derive_seed"]

_MASK64 = (1 << 64) - 1


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (a pure function; negative keys allowed)."""
    state = np.random.SeedSequence([int(k) & _MASK64 for k in keys]).generate_state(1, np.uint64)
    return int(state[0]) >> 1
