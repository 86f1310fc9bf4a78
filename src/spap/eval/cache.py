"""The features / FID statistics cache of :mod:`spap.eval.fidelity`: plain tensors, verified.

torch-fidelity's own cache writes pickles and reads them back with
``torch.load(weights_only=False)``, so a planted file in the cache folder would run code.
The project never lets torch-fidelity touch a cache (it is called with ``cache=False``);
this module keeps the features and FID statistics of folder inputs instead.

An entry is one ``torch.save`` file of plain values and tensors::

    {"format": "spap-fidelity-cache", "version": 1, "kind": "features" | "fid-stats",
     "identity": <what was computed: folder files, resize, feature extractor, weights>,
     "layer": <feature layer>, "tensors": {name: tensor}, "checksum": "sha256:..."}

Entries are written atomically and read with ``torch.load(weights_only=True)``; then the
format, the SHA-256 checksum of the content, the identity, and the tensors' shapes and
dtypes are checked (features: ``(N, D)`` floats with N the number of images; statistics:
``mu`` ``(D,)`` and ``sigma`` ``(D, D)`` floats). An entry failing any check is refused
with one :class:`~spap.errors.DataError` line naming the file; it is never used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from spap.errors import CheckpointError, DataError, WriteError
from spap.files import atomic_write
from spap.models.segnet import weights_only_failure
from spap.train.checkpoint import check_archive, state_digest

__all__ = ["CACHE_FORMAT", "KINDS", "FidelityCache"]

log = logging.getLogger(__name__)

CACHE_FORMAT = "spap-fidelity-cache"
VERSION = 1
#: Entry kinds and the tensors each holds.
KINDS: dict[str, tuple[str, ...]] = {"features": ("features",), "fid-stats": ("mu", "sigma")}


class FidelityCache:
    """Entries under ``root``, named ``<name>.<kind>-<layer>.pt``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, name: str, kind: str, layer: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown cache entry kind {kind!r}")
        return self.root / f"{name}.{kind}-{layer}.pt"

    def load(
        self, name: str, identity: str, kind: str, layer: str, rows: int | None = None
    ) -> dict[str, torch.Tensor] | None:
        """The tensors of an entry, or None if there is none; a bad entry raises."""
        p = self.path(name, kind, layer)
        if not p.exists() and not p.is_symlink():
            return None
        refuse = f"refused the cache entry {p}"
        hint = "delete it (or run with --no-cache)"
        try:
            check_archive(p)
        except CheckpointError as exc:
            raise DataError(f"{refuse}: {str(exc).removeprefix(f'{p}: ')}; {hint}") from None
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure: the entry is not ours or damaged
            raise DataError(f"{refuse}: {weights_only_failure(exc)}; {hint}") from None
        if (
            not isinstance(obj, dict)
            or obj.get("format") != CACHE_FORMAT
            or obj.get("version") != VERSION
        ):
            raise DataError(f"{refuse}: not a {CACHE_FORMAT} v{VERSION} file; {hint}")
        checksum = obj.pop("checksum", None)
        try:
            digest = state_digest(obj)
        except CheckpointError as exc:  # nested, shared or oversized content: crafted
            raise DataError(f"{refuse}: {exc}; {hint}") from None
        if checksum != digest:
            raise DataError(f"{refuse}: checksum mismatch (damaged or modified); {hint}")
        if (obj.get("kind"), obj.get("identity"), obj.get("layer")) != (kind, identity, layer):
            raise DataError(f"{refuse}: it holds another input's {obj.get('kind')}; {hint}")
        tensors = obj.get("tensors")
        problem = _check_tensors(kind, tensors, rows)
        if problem:
            raise DataError(f"{refuse}: {problem}; {hint}")
        return dict(tensors)  # type: ignore[arg-type]

    def store(
        self, name: str, identity: str, kind: str, layer: str, tensors: dict[str, Any]
    ) -> Path | None:
        """Write an entry atomically; a failed write is logged and skipped (the cache is an
        optimisation). Returns the path, or None if not written."""
        p = self.path(name, kind, layer)
        plain = {k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in tensors.items()}
        problem = _check_tensors(kind, plain, None)
        if problem:  # pragma: no cover - what torch-fidelity computes always fits
            log.warning("not caching %s: %s", p, problem)
            return None
        obj: dict[str, Any] = {
            "format": CACHE_FORMAT,
            "version": VERSION,
            "kind": kind,
            "identity": identity,
            "layer": layer,
            "tensors": plain,
        }
        obj["checksum"] = state_digest(obj)
        try:
            atomic_write(p, lambda fh: torch.save(obj, fh))
        except WriteError as exc:
            log.warning("could not write the cache entry %s: %s", p, exc.__cause__ or exc)
            return None
        return p


def _check_tensors(kind: str, tensors: Any, rows: int | None) -> str | None:
    """What is wrong with an entry's tensors, or None."""
    names = KINDS[kind]
    if not isinstance(tensors, dict) or sorted(tensors) != sorted(names):
        return f"expected the tensors {', '.join(names)}"
    for k in names:
        t = tensors[k]
        if type(t) is not torch.Tensor or t.layout != torch.strided or not t.is_floating_point():
            return f"{k} is not a dense float tensor"
    if kind == "features":
        f = tensors["features"]
        if f.dim() != 2 or (rows is not None and f.shape[0] != rows):
            want = f"({rows}, D)" if rows is not None else "(N, D)"
            return f"features of shape {tuple(f.shape)}, expected {want}"
    else:
        mu, sigma = tensors["mu"], tensors["sigma"]
        if mu.dim() != 1 or tuple(sigma.shape) != (mu.shape[0], mu.shape[0]):
            return f"mu {tuple(mu.shape)} and sigma {tuple(sigma.shape)} are not (D,) and (D, D)"
    return None
