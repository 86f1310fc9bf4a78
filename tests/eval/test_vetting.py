"""Files torch-fidelity would unpickle are vetted: malicious weights, cache entries and
statistics files are refused in one line (exit 2) and their payload never runs."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as fi

from spap.cli import main
from spap.errors import DataError
from spap.eval import fidelity
from spap.eval.cache import FidelityCache

LAYER = "64"  # the 64-channel Inception layer: torch-fidelity stops the network early


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def write_malicious(path: Path, marker: Path) -> Path:
    """A torch.save file whose pickle runs code when loaded with weights_only=False."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"Conv2d_1a_3x3.conv.weight": _Payload(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


@pytest.fixture
def evil(tmp_path: Path, marker: Path) -> Path:
    path = write_malicious(tmp_path / "evil" / fidelity.INCEPTION_FILE, marker)
    # the payload is real: an unsafe load does run it
    probe = tmp_path / "probe"
    torch.load(write_malicious(tmp_path / "probe.pt", probe), weights_only=False)
    assert probe.exists()
    return path


def _refused(capsys: pytest.CaptureFixture[str], code: int, marker: Path, *words: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    assert not marker.exists(), "the pickled payload ran"
    for w in words:
        assert w in err[0], err[0]
    return err[0]


def _fid_args(a: Path, b: Path, *extra: str) -> list[str]:
    return ["eval", "fid", "--real", str(a), "--fake", str(b), "--device", "cpu", *extra]


def test_malicious_weights_flag_is_refused(evil, marker, image_dirs, tmp_path, capsys) -> None:
    a, b = image_dirs
    code = main(_fid_args(a, b, "--weights", str(evil), "--cache-dir", str(tmp_path / "c")))
    _refused(capsys, code, marker, str(evil), "could run code", "refused the weights file")


def test_malicious_weights_env_is_refused(
    evil, marker, image_dirs, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv(fidelity.WEIGHTS_ENV, str(evil))
    a, b = image_dirs
    code = main(["eval", "is", "--fake", str(b), "--device", "cpu", "--no-cache"])
    _refused(capsys, code, marker, str(evil))
    code = main(_fid_args(a, b, "--kid", "--cache-dir", str(tmp_path / "c")))
    _refused(capsys, code, marker, str(evil))


def test_malicious_weights_at_the_default_location_are_refused(
    evil, marker, image_dirs, monkeypatch, capsys
) -> None:
    monkeypatch.delenv(fidelity.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(evil.parent.parent))
    (evil.parent.parent / "checkpoints").mkdir()
    evil.rename(evil.parent.parent / "checkpoints" / fidelity.INCEPTION_FILE)
    a, b = image_dirs
    _refused(capsys, main(_fid_args(a, b, "--no-cache")), marker, fidelity.INCEPTION_FILE)


@pytest.mark.parametrize("extractor", ["vgg16", "spap-segnet"])
def test_malicious_weights_of_other_extractors_are_refused(
    extractor, evil, marker, image_dirs, capsys
) -> None:
    a, b = image_dirs
    code = main(_fid_args(a, b, "--feature-extractor", extractor, "--weights", str(evil)))
    _refused(capsys, code, marker, "could run code")


def test_extractors_whose_weights_cannot_be_vetted_are_refused(
    evil, marker, image_dirs, capsys
) -> None:
    a, b = image_dirs
    for name in ("clip-vit-b-32", "dinov2-vit-s-14"):
        code = main(_fid_args(a, b, "--feature-extractor", name, "--weights", str(evil)))
        _refused(capsys, code, marker, name, "cannot be vetted")


def test_weights_not_a_state_dict_are_refused(tmp_path, marker, image_dirs, capsys) -> None:
    a, b = image_dirs
    bad = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], bad)
    code = main(_fid_args(a, b, "--weights", str(bad), "--no-cache"))
    _refused(capsys, code, marker, "not a state dict of tensors")


def test_wellformed_weights_reach_torch_fidelity_as_a_private_copy(
    inception_weights, image_dirs, tmp_path, monkeypatch, capsys
) -> None:
    seen: list[tuple[str, int, set[str]]] = []
    real_init = fi.FeatureExtractorInceptionV3.__init__

    def spy(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        p = Path(feature_extractor_weights_path)
        keys = set(torch.load(p, weights_only=True))  # the handed file: plain tensors
        seen.append((str(p), stat.S_IMODE(p.parent.stat().st_mode), keys))
        real_init(self, name, features_list, feature_extractor_weights_path, **kwargs)

    monkeypatch.setattr(fi.FeatureExtractorInceptionV3, "__init__", spy)
    a, b = image_dirs
    args = ["--weights", str(inception_weights), "--feature-layer", LAYER, "--no-cache"]
    assert main(_fid_args(a, b, *args)) == 0
    assert capsys.readouterr().out.startswith("FID: ")
    [(handed, mode, keys)] = seen
    assert handed != str(inception_weights) and mode == 0o700
    assert keys == set(torch.load(inception_weights, weights_only=True))
    assert not Path(handed).parent.exists()  # removed afterwards


def test_malicious_cache_entries_are_refused(
    inception_weights, image_dirs, tmp_path, marker, capsys
) -> None:
    a, b = image_dirs
    cache = tmp_path / "cache"
    common = ["--weights", str(inception_weights), "--feature-layer", LAYER, "--cache-dir"]
    assert main(_fid_args(a, b, *common, str(cache))) == 0
    good = capsys.readouterr().out
    entries = sorted(cache.iterdir())
    assert {p.name.split(".", 1)[1] for p in entries} == {
        f"features-{LAYER}.pt",
        f"fid-stats-{LAYER}.pt",
    }
    # torch-fidelity's own cache names for the same inputs: never read
    for p in entries:
        stem = p.name.split(".", 1)[0]
        for tail in (f"-stat-fid-{LAYER}.pt", f"-features-{LAYER}.pt"):
            write_malicious(cache / f"{stem}-{fidelity.INCEPTION}{tail}", marker)
    assert main(_fid_args(a, b, *common, str(cache))) == 0
    assert capsys.readouterr().out == good and not marker.exists()
    # our entries replaced with payloads: FID reads the statistics, KID the features
    for p in entries:
        write_malicious(p, marker)
    err = _refused(capsys, main(_fid_args(a, b, *common, str(cache))), marker, "could run code")
    assert "refused the cache entry" in err and "--no-cache" in err
    code = main(
        [
            "eval",
            "kid",
            "--real",
            str(a),
            "--fake",
            str(b),
            "--kid-subset-size",
            "4",
            "--device",
            "cpu",
            *common,
            str(cache),
        ]
    )
    assert "features-" in _refused(capsys, code, marker, "refused the cache entry")


def test_damaged_or_foreign_cache_entries_are_refused(tmp_path) -> None:
    cache = FidelityCache(tmp_path)
    feats = {"features": torch.randn(4, 3)}
    p = cache.store("n", "who", "features", "64", feats)
    assert torch.equal(
        cache.load("n", "who", "features", "64", rows=4)["features"], feats["features"]
    )
    assert cache.load("other", "who", "features", "64") is None  # a miss
    with pytest.raises(DataError, match="expected \\(5, D\\)"):
        cache.load("n", "who", "features", "64", rows=5)
    with pytest.raises(DataError, match="another input"):
        cache.load("n", "someone else", "features", "64")
    obj = torch.load(p, weights_only=True)
    obj["tensors"]["features"][0, 0] += 1.0  # modified after it was written
    torch.save(obj, p)
    with pytest.raises(DataError, match="checksum mismatch"):
        cache.load("n", "who", "features", "64")
    p.write_bytes(b"garbage")
    with pytest.raises(DataError, match="refused the cache entry"):
        cache.load("n", "who", "features", "64")
    q = cache.store("n", "who", "fid-stats", "64", {"mu": torch.zeros(3), "sigma": torch.eye(3)})
    assert q is not None and cache.load("n", "who", "fid-stats", "64")["sigma"].shape == (3, 3)


def test_malicious_statistics_files_are_refused(
    inception_weights, tmp_path, marker, image_dirs, capsys
) -> None:
    _, b = image_dirs
    weights = ["--weights", str(inception_weights)]
    stats_pt = write_malicious(tmp_path / f"x-{fidelity.INCEPTION}-stat-fid-2048.pt", marker)
    stats_npz = tmp_path / "stats.npz"
    np.savez(stats_npz, mu=np.array([_Payload(marker)], dtype=object), sigma=np.eye(1))
    for real in (stats_pt, stats_npz):
        code = main(["eval", "fid", "--real", str(real), "--fake", str(b), *weights])
        _refused(capsys, code, marker, str(real))


def test_crafted_cache_entries_fail_fast_naming_the_entry(tmp_path) -> None:
    """Content that would make the checksum walk unbounded (deep nesting, a view larger
    than its storage) and an archive whose records claim more bytes than the file holds are
    refused in one line naming the entry, within a second and without allocating."""
    import time
    import zipfile

    cache = FidelityCache(tmp_path)
    p = cache.path("n", "features", "64")
    nested: list = []
    for _ in range(200):
        nested = [nested]
    base = {"format": "spap-fidelity-cache", "version": 1, "kind": "features",
            "identity": "who", "layer": "64", "checksum": "sha256:0"}  # fmt: skip
    oversized = torch.zeros(4).as_strided((1 << 20, 1 << 20), (0, 0))  # one storage, 2^40 view
    for tensors in ({"features": nested}, {"features": oversized}):
        torch.save({**base, "tensors": tensors}, p)
        start = time.perf_counter()
        with pytest.raises(DataError) as exc:
            cache.load("n", "who", "features", "64")
        assert time.perf_counter() - start < 1.0
        assert str(exc.value).startswith(f"refused the cache entry {p}: "), exc.value
        assert "\n" not in str(exc.value)
    torch.save({**base, "tensors": {"features": torch.zeros(4, 3)}}, p)
    with zipfile.ZipFile(p) as zf:  # the same entry, its data record declared 4 GiB long
        infos = zf.infolist()
    raw = bytearray(p.read_bytes())
    big = next(i for i in infos if i.filename.endswith("/data/0"))
    off = raw.rfind(big.filename.encode())  # the central-directory record of that file
    raw[off - 46 + 24 : off - 46 + 28] = ((1 << 32) - 1).to_bytes(4, "little")
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"refused the cache entry {p}: .*declare"):
        cache.load("n", "who", "features", "64")
