"""FID, KID and IS through torch-fidelity, with no download ever.

The numbers are torch-fidelity's own (:func:`torch_fidelity.calculate_metrics`); this module
turns our inputs into torch-fidelity inputs, finds the feature-extractor weights, and keys
the statistics cache so that it can be trusted.

Inputs (``real`` / ``fake``) may be

- a folder of images (read with :func:`spap.data.io.read_image`, optionally resized to a
  square ``size`` by resize + centre crop, as torch-fidelity's ``samples_resize_and_crop``);
- a generator checkpoint file or run folder (``num_samples`` images are drawn on the fly
  through :func:`spap.inference.load`), or a Python object with ``.sample(n, seed,
  batch_size)``;
- FID statistics: a ``.npz`` with ``mu`` and ``sigma`` (written by :func:`save_statistics`,
  or pytorch-fid's), a torch-fidelity ``...-stat-fid-....pt`` cache file, or a dict;
- a ``(N, 3, H, W)`` tensor (uint8, or float in [-1, 1]) or a Dataset returning uint8 tensors.

Weights. The default feature extractor is torch-fidelity's ``inception-v3-compat`` (the
TF-ported Inception ``inception-2015-12-05``). Its weights file comes from ``weights_path``,
else the environment variable ``SPAP_INCEPTION_WEIGHTS``, else torch.hub's checkpoint folder
(where torch-fidelity itself keeps it). Any other extractor needs an explicit weights file.

Vetting. torch-fidelity reads the weights of ``inception-v3-compat`` and ``vgg16`` with
``torch.load(weights_only=False)``, which runs any pickled code in the file. Such a file is
first read here with ``weights_only=True`` into a state dict of tensors (anything else is
refused in one line), and torch-fidelity gets a fresh copy of those tensors, written with
``torch.save`` into a private temporary folder that is removed afterwards. Extractors whose
weights torch-fidelity would load as TorchScript (``clip-*``) or as torch.hub code
(``dinov2-*``) are refused. ``spap-segnet`` reads its checkpoint weights-only itself.

Cache. Features and FID statistics of folder inputs are cached under ``cache_dir``
(default ``$SPAP_CACHE_DIR`` or ``~/.cache/spap/fidelity``) by :mod:`spap.eval.cache`, not by
torch-fidelity (whose cache files are pickles loaded unsafely): entries hold plain tensors
and are verified when read. Names are made from the folder's files (paths, sizes,
modification times), the resize setting, the feature extractor and the content digest of its
weights (else the weights file's path, size and time), so a changed folder or other weights
never reuse stale numbers. Generated samples are not cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_clip import FeatureExtractorCLIP
from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2
from torch_fidelity.feature_extractor_inceptionv3 import (
    URL_INCEPTION_V3,
    FeatureExtractorInceptionV3,
)
from torch_fidelity.feature_extractor_vgg16 import FeatureExtractorVGG16
from torch_fidelity.generative_model_base import GenerativeModelBase
from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.registry import register_feature_extractor as _register
from torch_fidelity.utils import create_feature_extractor, extract_featuresdict_from_input_id

import spap.inference
from spap.data.io import list_images, read_image
from spap.devices import pick_device
from spap.errors import CheckpointError, DataError, SpapError
from spap.eval.cache import FidelityCache
from spap.eval.features import SEGNET_FEATURES, SegNetFeatureExtractor
from spap.models.segnet import weights_only_failure
from spap.train.checkpoint import state_digest

__all__ = [
    "CACHE_ENV",
    "INCEPTION",
    "INCEPTION_FILE",
    "INCEPTION_URL",
    "WEIGHTS_ENV",
    "ImageFiles",
    "SamplerModel",
    "build_feature_extractor",
    "compute_fid",
    "compute_is",
    "compute_kid",
    "compute_metrics",
    "compute_statistics",
    "default_cache_dir",
    "default_inception_path",
    "list_feature_extractors",
    "load_statistics",
    "register_feature_extractor",
    "resolve_inception_weights",
    "save_statistics",
    "to_uint8",
    "vet_state_dict",
]

log = logging.getLogger(__name__)

#: torch-fidelity's name of the standard TF-ported Inception v3.
INCEPTION = "inception-v3-compat"
#: Where torch-fidelity publishes that network's weights (it would download them from here).
INCEPTION_URL = URL_INCEPTION_V3
#: File name of those weights.
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[-1]
#: Environment variable naming the Inception weights file.
WEIGHTS_ENV = "SPAP_INCEPTION_WEIGHTS"
#: Environment variable naming the statistics cache folder.
CACHE_ENV = "SPAP_CACHE_DIR"

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
_STATS_FORMAT = "spap-fid-stats"
# Extractors that load without a weights file (registered with needs_weights=False).
_NO_WEIGHTS: set[str] = set()
# torch-fidelity's extractors that read their weights file with torch.load(weights_only=False):
# the file is vetted first and a fresh copy of its tensors handed on.
_UNPICKLING_EXTRACTORS: tuple[type, ...] = (FeatureExtractorInceptionV3, FeatureExtractorVGG16)
# ... and those whose weights would be loaded in ways that cannot be vetted: refused.
_UNVETTABLE_EXTRACTORS: dict[type, str] = {
    FeatureExtractorCLIP: "as a TorchScript archive (torch.jit.load)",
    FeatureExtractorDinoV2: "by running torch.hub code",
}


# ----------------------------------------------------------------------------- registry


def register_feature_extractor(
    name: str, cls: type[FeatureExtractorBase], *, needs_weights: bool = True
) -> None:
    """Make ``cls`` (a torch-fidelity ``FeatureExtractorBase`` subclass) usable by ``name``.

    ``cls(name, features_list, feature_extractor_weights_path=..., **kwargs)`` must build the
    network without downloading anything; with ``needs_weights`` a weights file is required.
    Registering the same class twice is a no-op.
    """
    if FEATURE_EXTRACTORS_REGISTRY.get(name) is cls:
        return
    if name in FEATURE_EXTRACTORS_REGISTRY:
        raise SpapError(f"a different feature extractor is already registered as {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, FeatureExtractorBase)):
        raise SpapError(
            "a feature extractor must be a torch_fidelity.FeatureExtractorBase subclass"
        )
    _register(name, cls)
    if not needs_weights:
        _NO_WEIGHTS.add(name)


def _register_builtin() -> None:
    register_feature_extractor(SEGNET_FEATURES, SegNetFeatureExtractor)


def list_feature_extractors() -> list[str]:
    """Names usable as ``feature_extractor``."""
    _register_builtin()
    return sorted(FEATURE_EXTRACTORS_REGISTRY)


# ----------------------------------------------------------------------------- weights


def default_inception_path() -> Path:
    """torch.hub's checkpoint folder entry for the Inception weights (torch-fidelity's cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def _missing_weights_hint() -> str:
    return (
        f"download {INCEPTION_URL} on a machine with internet access and put it at "
        f"{default_inception_path()}, or point to it with --weights FILE (Python: "
        f"weights_path=...) or the environment variable {WEIGHTS_ENV}"
    )


def resolve_inception_weights(path: str | os.PathLike | None = None, metrics: str = "") -> Path:
    """The Inception weights file: ``path``, else ``$SPAP_INCEPTION_WEIGHTS``, else
    :func:`default_inception_path`. Raises :class:`SpapError` saying how to get it (and,
    given ``metrics`` such as ``"IS"``, what needs it)."""
    for_what = f" for {metrics}" if metrics else ""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise SpapError(f"Inception weights file not found: {p}; {_missing_weights_hint()}")
        return p
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise SpapError(f"{WEIGHTS_ENV}={env} but no such file; {_missing_weights_hint()}")
        return p
    p = default_inception_path()
    if p.is_file():
        return p
    raise SpapError(
        f"the Inception weights{for_what} are missing: {INCEPTION_FILE} (torch-fidelity's TF-ported "
        f"Inception v3, inception-2015-12-05); nothing is downloaded at run time: "
        f"{_missing_weights_hint()}"
    )


def _resolve_weights(
    feature_extractor: str, weights_path: str | os.PathLike | None, metrics: str = ""
) -> str | None:
    if feature_extractor == INCEPTION:
        return str(resolve_inception_weights(weights_path, metrics))
    if weights_path is None:
        if feature_extractor in _NO_WEIGHTS:
            return None
        raise SpapError(
            f"feature extractor {feature_extractor!r} needs a weights file (--weights FILE); "
            "nothing is downloaded at run time"
        )
    p = Path(weights_path).expanduser()
    if p.is_dir() and (p / "segnet.pt").is_file():
        p = p / "segnet.pt"
    if not p.is_file():
        raise SpapError(f"weights file of feature extractor {feature_extractor!r} not found: {p}")
    return str(p)


def _file_tag(path: str | None) -> str:
    if path is None:
        return "none"
    st = os.stat(path)
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"


def vet_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, read with ``torch.load(weights_only=True)``.

    The file must hold a state dict (``{name: tensor}``); a pickled payload (which would run
    code when unpickled), other objects, or a damaged file raise one :class:`CheckpointError`
    line. Nothing in the file runs.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means a file we will not hand on
        raise CheckpointError(
            f"refused the weights file {path}: {weights_only_failure(exc)}"
        ) from None
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) and v.layout == torch.strided
            for k, v in obj.items()
        )
    ):
        raise CheckpointError(
            f"refused the weights file {path}: not a state dict of tensors (name -> tensor)"
        )
    return {k: v.detach() for k, v in obj.items()}


@contextlib.contextmanager
def _handed_weights(
    feature_extractor: str, weights: str | None
) -> Iterator[tuple[str | None, str]]:
    """``(the weights path to give torch-fidelity, the weights' cache tag)``.

    For the extractors that unpickle their weights, the file is vetted
    (:func:`vet_state_dict`) and its tensors written to a fresh file in a private temporary
    folder (removed on exit): torch-fidelity only ever unpickles that copy.
    """
    cls = FEATURE_EXTRACTORS_REGISTRY[feature_extractor]
    for unsafe, how in _UNVETTABLE_EXTRACTORS.items():
        if isinstance(cls, type) and issubclass(cls, unsafe):
            raise SpapError(
                f"feature extractor {feature_extractor!r} is not supported: torch-fidelity "
                f"would load its weights {how}, which cannot be vetted; use {INCEPTION}, "
                "vgg16 or spap-segnet"
            )
    if weights is None or not (isinstance(cls, type) and issubclass(cls, _UNPICKLING_EXTRACTORS)):
        yield weights, _file_tag(weights)
        return
    state = vet_state_dict(weights)
    tag = state_digest(state)
    with tempfile.TemporaryDirectory(prefix="spap-weights-") as tmp:  # mode 0700
        copy = Path(tmp) / "weights.pt"
        torch.save(state, copy)
        del state
        yield str(copy), tag


# ----------------------------------------------------------------------------- inputs


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 (as ``torchvision.utils.save_image`` would write them)."""
    if images.dtype == torch.uint8:
        return images
    return ((images.detach().float() + 1.0) * 127.5 + 0.5).clamp_(0, 255).to(torch.uint8)


class ImageFiles(Dataset):
    """uint8 ``(3, H, W)`` tensors of image files; optional square resize + centre crop."""

    def __init__(self, files: list[Path], size: int | None = None) -> None:
        self.files = list(files)
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        im = read_image(self.files[i])
        if self.size:
            im = TF.center_crop(TF.resize(im, self.size), self.size)
        return TF.pil_to_tensor(im)


class _TensorImages(Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise SpapError(f"expected (N, 3, H, W) images, got shape {tuple(images.shape)}")
        self.images = to_uint8(images.cpu())

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


class SamplerModel(GenerativeModelBase):
    """A ``Sampler`` (``.sample(n, seed, batch_size) -> [-1, 1]``) as a torch-fidelity model.

    torch-fidelity asks for batches; batch ``k`` is drawn with seed ``seed + k``, so the
    sample set is reproducible. The noise torch-fidelity passes in is ignored.
    """

    def __init__(self, sampler: Any, seed: int = 0, batch_size: int = 16) -> None:
        super().__init__()
        self.sampler = sampler
        self.seed = seed
        self.batch_size = batch_size
        self._calls = 0

    @property
    def z_size(self) -> int:
        return 1

    @property
    def z_type(self) -> str:
        return "normal"

    @property
    def num_classes(self) -> int:
        return 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images = self.sampler.sample(
            z.shape[0], seed=self.seed + self._calls, batch_size=self.batch_size
        )
        self._calls += 1
        return to_uint8(images).to(z.device)


@dataclass
class _Source:
    kind: str  # "stats" | "dataset" | "model"
    obj: Any = None
    stats: dict[str, Any] | None = None
    key: str | None = None  # cacheable identity (None: never cached)
    count: int | None = None


def _is_checkpoint(p: Path) -> bool:
    if p.is_file():
        return p.suffix.lower() in _CHECKPOINT_SUFFIXES
    for d in (p, p / "checkpoints"):
        if d.is_dir() and any(
            c.suffix.lower() in _CHECKPOINT_SUFFIXES for c in d.iterdir() if c.is_file()
        ):
            return True
    return False


def _folder_key(root: Path, files: list[Path], size: int | None) -> str:
    h = hashlib.sha1()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"folder:{root.resolve()}:{len(files)}:{h.hexdigest()}:size={size}"


def _load_sampler(path: Path, device: str | torch.device | None) -> Any:
    obj = spap.inference.load(path, device=str(device or "auto"))
    if not hasattr(obj, "sample"):
        raise CheckpointError(
            f"{path} is not an image generator (a translation checkpoint?); FID/KID/IS need a "
            "GAN checkpoint or a folder of images"
        )
    return obj


def _resolve(
    src: Any,
    *,
    num_samples: int | None,
    size: int | None,
    seed: int,
    batch_size: int,
    device: str | torch.device | None = None,
) -> _Source:
    if isinstance(src, dict):
        if "mu" in src and "sigma" in src:
            return _Source("stats", stats=dict(src))
        raise SpapError("a statistics dict needs 'mu' and 'sigma'")
    if isinstance(src, torch.Tensor):
        ds = _TensorImages(src)
        return _Source("dataset", ds, count=len(ds))
    if isinstance(src, GenerativeModelBase):
        return _Source("model", src, count=_need_num(num_samples))
    if isinstance(src, Dataset):
        return _Source("dataset", src, count=len(src))  # type: ignore[arg-type]
    if hasattr(src, "sample"):
        return _Source("model", SamplerModel(src, seed, batch_size), count=_need_num(num_samples))
    if not isinstance(src, (str, os.PathLike)):
        raise SpapError(f"unsupported input of type {type(src).__name__}")
    p = Path(src).expanduser()
    if not p.exists():
        raise DataError(f"not found: {p}")
    if p.is_file() and (p.suffix.lower() == ".npz" or "-stat-fid-" in p.name):
        return _Source("stats", stats=load_statistics(p))
    if _is_checkpoint(p):
        model = SamplerModel(_load_sampler(p, device), seed, batch_size)
        return _Source("model", model, count=_need_num(num_samples))
    if p.is_dir():
        files = list_images(p)
        if not files:
            raise DataError(f"no images in {p}")
        return _Source(
            "dataset", ImageFiles(files, size), key=_folder_key(p, files, size), count=len(files)
        )
    raise SpapError(
        f"{p}: expected a folder of images, a generator checkpoint or a .npz of statistics"
    )


def _need_num(num_samples: int | None) -> int:
    if not num_samples or num_samples < 1:
        raise SpapError(
            "a generator input needs the number of images to draw (--num N / num_samples)"
        )
    return int(num_samples)


# ----------------------------------------------------------------------------- statistics


def _numpy_safe_globals() -> list[Any]:
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    return [
        core.multiarray._reconstruct,
        np.ndarray,
        np.dtype,
        type(np.dtype(np.float32)),
        type(np.dtype(np.float64)),
    ]


def load_statistics(path: str | os.PathLike) -> dict[str, Any]:
    """FID statistics from a ``.npz`` (``mu``, ``sigma`` and optional metadata; read with
    ``allow_pickle=False``) or from a torch-fidelity ``...-stat-fid-<layer>.pt`` cache file
    (read with ``weights_only=True``, numpy arrays allowed). ``mu`` and ``sigma`` must be
    float arrays of shapes ``(D,)`` and ``(D, D)``; anything else raises one
    :class:`DataError` line."""
    p = Path(path)
    if p.suffix.lower() == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                out = {k: z[k] for k in z.files}
            for k in ("feature_extractor", "feature_layer", "weights_file", "format"):
                if k in out:
                    out[k] = str(out[k])
            if "num_images" in out:
                out["num_images"] = int(out["num_images"])
        except Exception as exc:  # noqa: BLE001 - any failure here means a damaged file
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise DataError(f"cannot read FID statistics {p}: {first}") from None
    else:
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure here means a refused file
            raise DataError(
                f"cannot read FID statistics {p}: {weights_only_failure(exc)}"
            ) from None
        if not isinstance(obj, Mapping):
            raise DataError(f"{p} holds no FID statistics (needs 'mu' and 'sigma')")
        out = {k: obj[k] for k in ("mu", "sigma") if k in obj}
        if "-stat-fid-" in p.stem:
            out["feature_layer"] = p.stem.rsplit("-stat-fid-", 1)[1]
    if "mu" not in out or "sigma" not in out:
        raise DataError(f"{p} holds no FID statistics (needs 'mu' and 'sigma')")
    mu, sigma = out["mu"], out["sigma"]
    if isinstance(mu, torch.Tensor) and isinstance(sigma, torch.Tensor):
        mu, sigma = mu.numpy(), sigma.numpy()
    if not all(
        isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating) for a in (mu, sigma)
    ):
        raise DataError(f"{p}: mu and sigma must be arrays of floats")
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DataError(f"{p}: mu must be (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    out["mu"], out["sigma"] = mu, sigma
    return out


def _check_stats(
    stats: dict[str, Any], feature_extractor: str, layer: str, weights: str | None
) -> None:
    fe = stats.get("feature_extractor")
    if fe is not None and fe != feature_extractor:
        raise SpapError(
            f"the statistics were computed with feature extractor {fe!r}, not {feature_extractor!r}"
        )
    lay = stats.get("feature_layer")
    if lay is not None and lay != layer:
        raise SpapError(f"the statistics were computed on feature layer {lay!r}, not {layer!r}")
    wf = stats.get("weights_file")
    if wf and weights and wf != os.path.basename(weights):
        log.warning(
            "statistics were computed with weights %s, now using %s", wf, os.path.basename(weights)
        )
    if fe is None:
        log.warning(
            "statistics without feature-extractor metadata: assuming %s / %s",
            feature_extractor,
            layer,
        )


# ----------------------------------------------------------------------------- computing


def default_cache_dir() -> Path:
    """``$SPAP_CACHE_DIR``, else ``$XDG_CACHE_HOME/spap/fidelity`` (``~/.cache/spap/fidelity``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spap" / "fidelity"


@contextlib.contextmanager
def _user_errors(feature_extractor: str, weights: str | None) -> Iterator[None]:
    """torch-fidelity's errors about inputs and weights as one-line SpapErrors."""
    try:
        yield
    except SpapError:
        raise
    except (pickle.UnpicklingError, EOFError) as exc:
        raise SpapError(f"cannot load weights {weights} of {feature_extractor!r}: {exc}") from None
    except RuntimeError as exc:
        msg = str(exc)
        if "state_dict" in msg or "PytorchStreamReader" in msg or "invalid load key" in msg:
            raise SpapError(
                f"{weights} does not hold the weights of {feature_extractor!r}: {msg.splitlines()[0]}"
            ) from None
        if "stack expects each tensor to be equal size" in msg:
            raise SpapError(
                "the images differ in size: resize them with --size N (size=N)"
            ) from None
        raise
    except ValueError as exc:  # torch-fidelity's vassert
        raise SpapError(f"torch-fidelity: {str(exc).splitlines()[0]}") from None


def _device_kwargs(
    device: str | torch.device | None,
) -> tuple[bool, contextlib.AbstractContextManager[Any]]:
    dev = pick_device("auto" if device is None else device)
    if dev.type == "cuda":
        return True, torch.cuda.device(dev)
    return False, contextlib.nullcontext()


def _cache_name(src: _Source, fe_tag: str) -> str | None:
    if src.key is None:
        return None
    return "spap-" + hashlib.sha1(f"{src.key}\n{fe_tag}".encode()).hexdigest()[:24]


def _setup(
    feature_extractor: str,
    weights_path: Any,
    feature_layer: str | None,
    metric: str,
    metrics: str = "",
) -> tuple[str | None, str]:
    _register_builtin()
    if feature_extractor not in FEATURE_EXTRACTORS_REGISTRY:
        raise SpapError(
            f"unknown feature extractor {feature_extractor!r}; registered: "
            f"{', '.join(sorted(FEATURE_EXTRACTORS_REGISTRY))}"
        )
    weights = _resolve_weights(feature_extractor, weights_path, metrics)
    cls = FEATURE_EXTRACTORS_REGISTRY[feature_extractor]
    layer = feature_layer or cls.get_default_feature_layer_for_metric(metric)
    return weights, layer


class _Features:
    """Features and FID statistics of the inputs of one computation: from the cache when
    there, else extracted by torch-fidelity (its own cache off) and cached.

    The feature extractor is built on first use, from the (vetted) weights ``handed`` to it.
    """

    def __init__(
        self,
        feature_extractor: str,
        layers: list[str],
        fe_tag: str,
        kwargs: dict[str, Any],
        cache_root: str | os.PathLike | None,
    ) -> None:
        self.fe = feature_extractor
        self.layers = sorted(set(layers))
        self.fe_tag = fe_tag
        self.kwargs = kwargs
        self.cache = FidelityCache(cache_root) if cache_root is not None else None
        self._extractor: FeatureExtractorBase | None = None

    def extractor(self) -> FeatureExtractorBase:
        if self._extractor is None:
            self._extractor = create_feature_extractor(self.fe, self.layers, **self.kwargs)
        return self._extractor

    def _entry(self, src: _Source) -> tuple[str, str] | None:
        name = _cache_name(src, self.fe_tag)
        if self.cache is None or name is None:
            return None
        return name, f"{src.key}\n{self.fe_tag}"

    def features(self, slot: int, src: _Source) -> dict[str, torch.Tensor]:
        entry = self._entry(src)
        if entry is not None:
            assert self.cache is not None
            got = {
                layer: self.cache.load(*entry, "features", layer, rows=src.count)
                for layer in self.layers
            }
            if all(t is not None for t in got.values()):
                return {layer: t["features"] for layer, t in got.items()}  # type: ignore[index]
        feats = extract_featuresdict_from_input_id(slot, self.extractor(), **self.kwargs)
        if entry is not None:
            assert self.cache is not None
            for layer in self.layers:
                self.cache.store(*entry, "features", layer, {"features": feats[layer]})
        return feats

    def fid_stats(
        self, slot: int, src: _Source, layer: str, feats: dict[str, torch.Tensor] | None
    ) -> dict[str, np.ndarray]:
        if src.kind == "stats":
            assert src.stats is not None
            return {"mu": np.asarray(src.stats["mu"]), "sigma": np.asarray(src.stats["sigma"])}
        entry = self._entry(src)
        if entry is not None:
            assert self.cache is not None
            got = self.cache.load(*entry, "fid-stats", layer)
            if got is not None:
                return {"mu": got["mu"].numpy(), "sigma": got["sigma"].numpy()}
        if feats is None:
            feats = self.features(slot, src)
        stats = fid_featuresdict_to_statistics(feats, layer)
        if entry is not None:
            assert self.cache is not None
            self.cache.store(
                *entry,
                "fid-stats",
                layer,
                {"mu": torch.from_numpy(stats["mu"]), "sigma": torch.from_numpy(stats["sigma"])},
            )
        return stats


def _fid(s1: dict[str, Any], s2: dict[str, Any], from_files: bool, verbose: bool) -> dict[str, Any]:
    if from_files:  # statistics files may hold float32 or float64: compare in float64
        s1, s2 = (
            {"mu": np.asarray(s["mu"], np.float64), "sigma": np.asarray(s["sigma"], np.float64)}
            for s in (s1, s2)
        )
    if s1["mu"].shape != s2["mu"].shape:
        raise SpapError(
            f"feature sizes differ: {s1['mu'].shape[0]} vs {s2['mu'].shape[0]} (statistics of "
            "another feature extractor or layer?)"
        )
    return fid_statistics_to_metric(s1, s2, verbose)


def _base_kwargs(
    feature_extractor: str,
    handed: str | None,
    cuda: bool,
    batch_size: int,
    verbose: bool,
    seed: int,
) -> dict[str, Any]:
    """torch-fidelity's keyword arguments; its own (unpickling) cache is always off."""
    return {
        "feature_extractor": feature_extractor,
        "feature_extractor_weights_path": handed,
        "cuda": cuda,
        "batch_size": batch_size,
        "cache": False,
        "save_cpu_ram": True,  # no DataLoader worker processes
        "verbose": verbose,
        "rng_seed": seed,
        "datasets_download": False,
    }


def _cache_root(cache: bool, cache_dir: str | os.PathLike | None) -> Path | None:
    if not cache:
        return None
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def compute_metrics(
    real: Any,
    fake: Any,
    *,
    fid: bool = True,
    kid: bool = False,
    isc: bool = False,
    feature_extractor: str = INCEPTION,
    weights_path: str | os.PathLike | None = None,
    feature_layer: str | None = None,
    num_samples: int | None = None,
    size: int | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 2020,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    isc_splits: int = 10,
    verbose: bool = False,
) -> dict[str, float]:
    """FID / KID / IS of ``fake`` against ``real`` (see the module doc for the inputs).

    Args:
        real: reference images or statistics (ignored when only ``isc`` is asked).
        fake: generated images (IS is computed on these).
        fid, kid, isc: which metrics.
        feature_extractor: a registered name (:func:`list_feature_extractors`).
        weights_path: its weights file (Inception: see :func:`resolve_inception_weights`).
        feature_layer: feature used for FID/KID (default: the extractor's own default).
        num_samples: images drawn from a generator input.
        size: resize folder images to ``size x size`` (resize + centre crop).
        batch_size: feature-extraction batch size (also the generator's batch size).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; default CUDA when available.
        cache, cache_dir: statistics/features cache of folder inputs.
        seed: torch-fidelity's ``rng_seed`` (KID subsets, IS split shuffle) and the first
            generator seed.
        kid_subsets, kid_subset_size: KID subsets; a size not smaller than the smaller set
            becomes half that set (:func:`kid_size`), which the result's
            ``kid_subset_size`` reports.
        isc_splits: IS splits (capped at the number of images).

    Returns:
        a dict with ``fid``, ``kid_mean``, ``kid_std`` (and ``kid_subset_size``),
        ``is_mean``, ``is_std`` (those asked).
        The numbers are torch-fidelity's (the same functions as
        :func:`torch_fidelity.calculate_metrics`).
    """
    if not (fid or kid or isc):
        raise SpapError("nothing to compute: ask for at least one of FID, KID, IS")
    names = [name for name, on in (("FID", fid), ("KID", kid), ("IS", isc)) if on]
    asked = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    weights, layer = _setup(
        feature_extractor, weights_path, feature_layer, "fid" if (fid or kid) else "isc", asked
    )
    cls = FEATURE_EXTRACTORS_REGISTRY[feature_extractor]
    cuda, dev_ctx = _device_kwargs(device)
    res_kw = {
        "num_samples": num_samples,
        "size": size,
        "seed": seed,
        "batch_size": batch_size,
        "device": device,
    }
    f_src = _resolve(fake, **res_kw)
    r_src = _resolve(real, **res_kw) if (fid or kid) else None
    stats_involved = f_src.kind == "stats" or (r_src is not None and r_src.kind == "stats")
    if stats_involved and (kid or (isc and f_src.kind == "stats")):
        raise SpapError("KID and IS need images; statistics files only serve FID")
    for src in (f_src, r_src):
        if src is not None and src.kind == "stats":
            assert src.stats is not None
            _check_stats(src.stats, feature_extractor, layer, weights)
    layers = {}
    if isc:
        layers["isc"] = cls.get_default_feature_layer_for_metric("isc")
    if fid:
        layers["fid"] = feature_layer or cls.get_default_feature_layer_for_metric("fid")
    if kid:
        layers["kid"] = feature_layer or cls.get_default_feature_layer_for_metric("kid")
    raw: dict[str, Any] = {}
    with _handed_weights(feature_extractor, weights) as (handed, wtag):
        kwargs = _base_kwargs(feature_extractor, handed, cuda, batch_size, verbose, seed)
        kwargs.update(
            {
                "input1": f_src.obj,
                "input1_model_num_samples": f_src.count if f_src.kind == "model" else None,
                "isc_splits": max(1, min(isc_splits, f_src.count or isc_splits)),
            }
        )
        if r_src is not None and r_src.kind != "stats":
            kwargs["input2"] = r_src.obj
            kwargs["input2_model_num_samples"] = r_src.count if r_src.kind == "model" else None
        if kid:
            assert r_src is not None
            kwargs["kid_subsets"] = kid_subsets
            kwargs["kid_subset_size"] = kid_size(kid_subset_size, f_src.count, r_src.count)
            if kwargs["kid_subset_size"] != kid_subset_size:
                log.info(
                    "KID: subsets of %d images, not %d: half the smaller set (%d images), so "
                    "that the subsets differ (subsets of a whole set are all that set, with a "
                    "standard deviation of 0)",
                    kwargs["kid_subset_size"],
                    kid_subset_size,
                    min(f_src.count or 0, r_src.count or 0),
                )
        feats = _Features(
            feature_extractor,
            list(layers.values()),
            f"{feature_extractor}:{wtag}",
            kwargs,
            _cache_root(cache, cache_dir),
        )
        only_fid = fid and not (kid or isc)  # cached statistics are enough: no features
        with _user_errors(feature_extractor, weights), dev_ctx:
            f1 = None if only_fid or f_src.kind == "stats" else feats.features(1, f_src)
            f2 = None
            if not only_fid and r_src is not None and r_src.kind != "stats":
                f2 = feats.features(2, r_src)
            if isc:
                raw.update(isc_featuresdict_to_metric(f1, layers["isc"], **kwargs))
            if fid:
                assert r_src is not None
                s1 = feats.fid_stats(1, f_src, layers["fid"], f1)
                s2 = feats.fid_stats(2, r_src, layers["fid"], f2)
                raw.update(_fid(s1, s2, stats_involved, verbose))
            if kid:
                raw.update(kid_featuresdict_to_metric(f1, f2, layers["kid"], **kwargs))
    names = {
        "frechet_inception_distance": "fid",
        "kernel_inception_distance_mean": "kid_mean",
        "kernel_inception_distance_std": "kid_std",
        "inception_score_mean": "is_mean",
        "inception_score_std": "is_std",
    }
    out = {names[k]: float(v) for k, v in raw.items() if k in names}
    if kid:
        out["kid_subset_size"] = kwargs["kid_subset_size"]
    return out


def kid_size(requested: int, n_fake: int | None, n_real: int | None) -> int:
    """The KID subset size used for ``requested`` and the two sets' sizes: ``requested``
    where it is smaller than both sets; otherwise half the smaller set (at least 2), so that
    the subsets differ and their standard deviation means something (subsets of a whole set
    are all that set: a standard deviation of 0)."""
    n = min(n_fake or 0, n_real or 0)
    if requested < n:
        return max(2, requested)
    return max(2, n // 2)


def compute_fid(real: Any, fake: Any, **kwargs: Any) -> float:
    """FID of ``fake`` against ``real`` (keyword arguments of :func:`compute_metrics`)."""
    return compute_metrics(real, fake, fid=True, **kwargs)["fid"]


def compute_kid(real: Any, fake: Any, **kwargs: Any) -> tuple[float, float]:
    """KID (mean, std over subsets) of ``fake`` against ``real``."""
    out = compute_metrics(real, fake, fid=False, kid=True, **kwargs)
    return out["kid_mean"], out["kid_std"]


def compute_is(fake: Any, **kwargs: Any) -> tuple[float, float]:
    """Inception Score (mean, std over splits) of ``fake``."""
    out = compute_metrics(None, fake, fid=False, isc=True, **kwargs)
    return out["is_mean"], out["is_std"]


def compute_statistics(
    source: Any,
    *,
    feature_extractor: str = INCEPTION,
    weights_path: str | os.PathLike | None = None,
    feature_layer: str | None = None,
    num_samples: int | None = None,
    size: int | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 2020,
    verbose: bool = False,
) -> dict[str, Any]:
    """FID statistics ``{"mu", "sigma", "num_images", "feature_extractor", "feature_layer",
    "weights_file"}`` of a folder, generator, tensor or dataset."""
    weights, layer = _setup(feature_extractor, weights_path, feature_layer, "fid", "FID")
    cuda, dev_ctx = _device_kwargs(device)
    src = _resolve(
        source, num_samples=num_samples, size=size, seed=seed, batch_size=batch_size, device=device
    )
    if src.kind == "stats":
        raise SpapError("the input already is a statistics file")
    with _handed_weights(feature_extractor, weights) as (handed, wtag):
        kwargs = _base_kwargs(feature_extractor, handed, cuda, batch_size, verbose, seed)
        kwargs["input1"] = src.obj
        kwargs["input1_model_num_samples"] = src.count if src.kind == "model" else None
        feats = _Features(
            feature_extractor,
            [layer],
            f"{feature_extractor}:{wtag}",
            kwargs,
            _cache_root(cache, cache_dir),
        )
        with _user_errors(feature_extractor, weights), dev_ctx:
            stats = feats.fid_stats(1, src, layer, None)
    return {
        "mu": stats["mu"],
        "sigma": stats["sigma"],
        "num_images": int(src.count or 0),
        "feature_extractor": feature_extractor,
        "feature_layer": layer,
        "weights_file": os.path.basename(weights) if weights else "",
    }


def save_statistics(source: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Compute (:func:`compute_statistics`) and write FID statistics to a ``.npz`` file."""
    stats = compute_statistics(source, **kwargs)
    p = Path(path)
    if p.suffix.lower() != ".npz":
        p = p.with_suffix(p.suffix + ".npz") if p.suffix else p.with_suffix(".npz")
    p.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: stats[k] for k in ("feature_extractor", "feature_layer", "weights_file")}
    np.savez(
        p,
        mu=stats["mu"],
        sigma=stats["sigma"],
        num_images=np.int64(stats["num_images"]),
        format=np.str_(_STATS_FORMAT),
        **{k: np.str_(v) for k, v in meta.items()},
    )
    log.info(
        "wrote FID statistics of %d images to %s (%s)", stats["num_images"], p, json.dumps(meta)
    )
    return p


def build_feature_extractor(
    feature_extractor: str = INCEPTION,
    weights_path: str | os.PathLike | None = None,
    feature_layer: str | None = None,
    metric: str = "fid",
    device: str | torch.device | None = None,
) -> tuple[FeatureExtractorBase, str, str]:
    """A torch-fidelity feature extractor built once, for callers that extract features many
    times (evaluation during training): ``(extractor, feature layer, weights tag)``.

    The weights are found and vetted as for :func:`compute_metrics`, so the features are the
    ones it would compute; the vetted copy is removed once the extractor holds them. Run it
    with ``torch_fidelity.utils.get_featuresdict_from_dataset``. The tag names the weights
    (their content digest for the vetted extractors, else path, size and time).
    """
    weights, layer = _setup(feature_extractor, weights_path, feature_layer, metric, metric.upper())
    cuda, dev_ctx = _device_kwargs(device)
    with _handed_weights(feature_extractor, weights) as (handed, wtag):
        kwargs = _base_kwargs(feature_extractor, handed, cuda, 32, False, 0)
        with _user_errors(feature_extractor, weights), dev_ctx:
            extractor = create_feature_extractor(feature_extractor, [layer], **kwargs)
    return extractor, layer, f"{feature_extractor}:{wtag}"
