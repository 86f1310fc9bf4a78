"""Small crafted files must fail within seconds and without much memory: checkpoints whose
pickle describes shared, cyclic, deeply nested or self-expanding content, zip archives
whose records expand or lie about their sizes, YAML configs built from aliases ("billion
laughs"), deeply nested or huge YAML, and bad values whose message would quote them whole.

Before these checks, such files hung every loader (an exponential walk over a shared
structure), drove it to gigabytes (an expanded tensor view materialised by the checksum
walk), or ended in a ``RecursionError`` / ``MemoryError`` traceback."""

from __future__ import annotations

import io
import struct
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from relutil import image_folder, run_bounded

from spap.cli import main as cli_main
from spap.config import MAX_CONFIG_BYTES, parse_overrides, read_yaml
from spap.errors import CheckpointError, ConfigError
from spap.train.checkpoint import FORMAT, MAX_DEPTH, VERSION, load_checkpoint

# ----------------------------------------------------------------------------- checkpoints


def _spap(content: object, kind: str = "cyclegan") -> dict:
    """A spap-looking checkpoint holding ``content`` (its checksum is never reached)."""
    return {
        "format": FORMAT, "version": VERSION, "kind": kind, "config": {}, "step": 1,
        "task": {"models": {}, "extra": content}, "checksum": "sha256:0",
    }  # fmt: skip


def _shared(levels: int = 25) -> list:
    """A DAG: 2**levels paths (33 million) through ``levels`` lists: 400 bytes of pickle."""
    node: list = []
    for _ in range(levels):
        node = [node, node]
    return node


def _cyclic() -> list:
    node: list = []
    node.append(node)
    return node


def _deep(depth: int = 3000) -> list:
    node: list = []
    for _ in range(depth):
        node = [node]
    return node


def _zip_records(path: Path, state: dict) -> dict[str, bytes]:
    buf = io.BytesIO()
    torch.save(state, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        return {i.filename: zf.read(i.filename) for i in zf.infolist()}


def _deflated(path: Path) -> Path:
    """40 MB of zeros in a 40 KB file: the records deflated (torch.load reads them)."""
    records = _zip_records(path, _spap(torch.zeros(10_000_000)))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in records.items():
            zf.writestr(name, data)
    return path


def _lying_sizes(path: Path) -> Path:
    """A valid checkpoint whose central directory says a record holds 4 GB."""
    torch.save(_spap(torch.zeros(16)), path)
    data = bytearray(path.read_bytes())
    at = data.rfind(b"PK\x01\x02")  # the last central-directory entry
    struct.pack_into("<II", data, at + 20, 0xFFFF0000, 0xFFFF0000)  # compressed, plain size
    path.write_bytes(bytes(data))
    return path


def _craft(path: Path, how: str) -> Path:
    if how == "deflated":
        return _deflated(path)
    if how == "lying_sizes":
        return _lying_sizes(path)
    if how == "deep":
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(20_000)  # torch.save's pickler recurses; the loader must not
        try:
            torch.save(_spap(_deep()), path)
        finally:
            sys.setrecursionlimit(old)
        return path
    big = torch.zeros(250_000)  # 1 MB
    content = {
        "shared": _shared(),
        "cyclic": _cyclic(),
        "expanded": torch.zeros(1).expand(100_000, 100_000),  # 40 GB if materialised
        "overlapping": big.as_strided((100_000, 100_000), (1, 1)),
        "same_tensor": [big] * 4000,  # 4 GB of hashing
        "object": {"x": torch.nn.Parameter(torch.zeros(1)), "y": slice(1, 2)},
    }[how]
    torch.save(_spap(content), path)
    return path


#: crafted file -> what the one-line refusal says
CRAFTED = {
    "shared": "reached twice (a shared or cyclic structure",
    "cyclic": "reached twice (a shared or cyclic structure",
    "deep": f"nested deeper than {MAX_DEPTH} levels",
    "expanded": "views a storage of 4 bytes (an expanded or overlapping view)",
    "overlapping": "(an expanded or overlapping view)",
    "same_tensor": "a tensor reached twice",
    "deflated": "is compressed (torch.save writes none",
    "lying_sizes": "its records declare",
}


@pytest.mark.parametrize("how", list(CRAFTED))
def test_crafted_checkpoint_fails_fast_in_one_line(tmp_path: Path, how: str) -> None:
    path = _craft(tmp_path / f"{how}.pt", how)
    assert path.stat().st_size < 2_000_000
    t = time.perf_counter()
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert time.perf_counter() - t < 5
    msg = str(exc.value)
    assert msg.startswith(str(path)) and CRAFTED[how] in msg and "\n" not in msg, msg
    assert len(msg) < 300, msg


def test_slice_objects_are_refused_before_hashing(tmp_path: Path) -> None:
    """weights-only unpickling admits a few more objects than plain values (slices): the
    checksum walk refuses them by type instead of hashing their repr."""
    path = tmp_path / "slice.pt"
    torch.save(_spap({"y": slice(1, 2)}), path)
    with pytest.raises(CheckpointError, match=r"refused to load|truncated or corrupt"):
        load_checkpoint(path)


def test_real_checkpoints_still_load(gan_run: Path, cyclegan_run: Path) -> None:
    """The checks refuse nothing spap writes (nor the 0.1 fixtures)."""
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "v0_1"
    for path in (gan_run, cyclegan_run, *sorted(fixtures.glob("*_step4.pt"))):
        assert load_checkpoint(path)["step"] >= 1


@pytest.mark.slow
def test_crafted_checkpoints_through_the_commands_stay_small(
    tmp_path: Path, cyclegan_run: Path
) -> None:
    """Every crafted file through `translate`, `export` and `train --resume`, in one
    process whose address space may grow by at most 1 GiB over its imports: each command
    exits 2 with one line within seconds."""
    images = image_folder(tmp_path / "images", n=1, size=16)
    commands = []
    for how in CRAFTED:
        path = _craft(tmp_path / f"{how}.pt", how)
        run = tmp_path / f"run_{how}" / "checkpoints"
        run.mkdir(parents=True)
        path.rename(run / "step_0000001.pt")
        path = run / "step_0000001.pt"
        commands += [
            ["translate", "--checkpoint", path, "--input", images, "--output", tmp_path / "t"],
            ["export", "--checkpoint", path, "--format", "safetensors",
             "--output", tmp_path / "e.safetensors"],
            ["train", "cyclegan", "--resume", "--out", run.parent,
             "--data", cyclegan_run.parent / "data"],
        ]  # fmt: skip
    results = run_bounded(commands, tmp_path, extra_mib=1024, timeout=300)
    for r in results:
        errors = [ln for ln in r["stderr"] if ln.startswith("spap ")]
        assert r["code"] == 2, r
        assert len(errors) == 1 and "Traceback" not in "\n".join(r["stderr"]), r
        assert r["seconds"] < 5, r
    worst = max(r["peak_mib"] for r in results)
    print(f"slowest {max(r['seconds'] for r in results):.2f} s; peak RSS growth {worst:.0f} MiB")
    assert worst < 1024


# ----------------------------------------------------------------------------- YAML


def _laughs(levels: int = 9, width: int = 9) -> str:
    """A ~1 KB YAML whose aliases expand to width**levels strings."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    lines.append(f"model:\n  g_attention: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def test_yaml_aliases_are_refused(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "laughs.yaml"
    cfg.write_text(_laughs())
    assert cfg.stat().st_size < 1500
    t = time.perf_counter()
    with pytest.raises(ConfigError, match=r"line 2: YAML aliases \('\*a0'\) are not accepted"):
        read_yaml(cfg)
    assert time.perf_counter() - t < 1
    out = tmp_path / "run"
    code = cli_main(["train", "gan", "--config", str(cfg), "--out", str(out), "--data", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(cfg) in err[0] and len(err[0]) < 300, err
    assert not out.exists()


def test_yaml_aliases_in_an_override_stay_a_short_string(tmp_path: Path, capsys) -> None:
    """`key=value` values parse as YAML without aliases; a value using them stays the
    string given, which the key's type then refuses, quoting only its start."""
    laughs = "[" + ", ".join(["&a [lol, lol, lol, lol]"] + ["[*a, *a, *a, *a, *a, *a]"] * 8) + "]"
    assert parse_overrides([f"model.g_attention={laughs}"]) == {"model": {"g_attention": laughs}}
    code = cli_main(["train", "gan", "--out", str(tmp_path / "r"), "--data", "x",
                     f"train.betas_g={laughs * 50}"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "train.betas_g: expected a list" in err[0], err
    assert len(err[0]) < 200, err[0]


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("model:\n  x: " + "[" * 30_000 + "]" * 30_000 + "\n", "nested too deeply to be a config"),
        ("x: [" + ", ".join(["1"] * 30_000) + "]\n", "too large for"),
        ("train:\n  lr: 1\n" + "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1), "too large for"),
        (None, "not a text (UTF-8) file"),
    ],
    ids=["deep", "long_list", "huge", "binary"],
)
def test_unusable_yaml_files_are_one_line(tmp_path: Path, text: str | None, expect: str) -> None:
    cfg = tmp_path / "c.yaml"
    if text is None:
        cfg.write_bytes(b"\xff\xfe\x00binary" * 100)
    else:
        cfg.write_text(text)
    t = time.perf_counter()
    with pytest.raises(ConfigError) as exc:
        read_yaml(cfg)
    assert time.perf_counter() - t < 5
    assert expect in str(exc.value) and str(cfg) in str(exc.value)
    assert len(str(exc.value)) < 300


def test_messages_quote_only_a_short_prefix(tmp_path: Path, capsys) -> None:
    huge = "x" * 100_000
    for override in (f"train.batch_size={huge}", f"run.nan_policy={huge}", f"train.{huge}=1",
                     f"train.betas_g=[{', '.join(['[1, 2]'] * 2000)}]"):  # fmt: skip
        code = cli_main(["train", "gan", "--out", str(tmp_path / "r"), "--data", "x", override])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and len(err[0]) < 250, err[0][:500]
