"""``spap data get``: resumable downloads from a server on 127.0.0.1, archive verification,
refusal of hostile archives, nothing unpacked outside the target folder."""

from __future__ import annotations

import hashlib
import io
import re
import resource
import signal
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spap.cli import main as cli
from spap.data import build_dataset
from spap.data.download import download, get_dataset, resolve, verify_archive
from spap.errors import DataError


def _png(seed: int, w: int = 16, h: int = 8) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _tarball(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


def _facades() -> bytes:
    """A miniature pix2pix facades tarball: facades/{train,val,test}/*.jpg (A|B images)."""
    members = {}
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for i in range(n):
            members[f"facades/{split}/{i + 1}.jpg"] = _png(i + 10 * len(split), 32, 16)
    # incompressible padding, so that a cut leaves a clearly partial file
    members["facades/README"] = np.random.default_rng(9).bytes(60_000)
    return _tarball(members)


class _Server:
    """A tiny HTTP server with Range / If-Range support and scripted connection cuts."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.cuts: list[int] = []  # byte counts after which the next responses stop
        self.honour_range = True
        self.requests: list[dict[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests.append(
                    {
                        "path": self.path,
                        "range": self.headers.get("Range"),
                        "if_range": self.headers.get("If-Range"),
                    }
                )
                if self.path not in server.files:
                    self.send_error(404, "Not Found")
                    return
                data, etag = server.files[self.path]
                start = 0
                rng = self.headers.get("Range")
                if rng and server.honour_range:
                    m = re.match(r"bytes=(\d+)-$", rng)
                    assert m, rng
                    start = int(m.group(1))
                    if_range = self.headers.get("If-Range")
                    if if_range is not None and if_range != etag:
                        start = 0  # changed since: the whole file
                    elif start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                cut = server.cuts.pop(0) if server.cuts else None
                self.wfile.write(body if cut is None else body[:cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    s.files["/facades.tar.gz"] = (_facades(), '"v1"')
    yield s
    s.close()


def _get(server: _Server, out: Path, *extra: str) -> int:
    url = f"{server.url}/facades.tar.gz"
    return cli(["data", "get", "facades", "--out", str(out), "--url", url, "--no-progress", *extra])


def test_cut_download_resumes_on_the_next_run(server: _Server, tmp_path: Path, capsys) -> None:
    data = server.files["/facades.tar.gz"][0]
    server.cuts = [20_000]
    assert _get(server, tmp_path, "--retries", "0") == 2
    err = capsys.readouterr().err
    assert "interrupted" in err and "run the same command again to resume" in err
    assert err.count("\n") == 1  # one line
    part = tmp_path / "facades.tar.gz.part"
    assert part.stat().st_size == 20_000 and not (tmp_path / "facades").exists()
    assert _get(server, tmp_path, "--retries", "0") == 0
    assert server.requests[-1]["range"] == "bytes=20000-"  # resumed, not restarted
    assert server.requests[-1]["if_range"] == '"v1"'
    out = capsys.readouterr().out
    assert "facades: 7 files (aligned: test/ train/ val/)" in out
    root = tmp_path / "facades"
    assert sorted(p.name for p in (root / "train").iterdir()) == ["1.jpg", "2.jpg", "3.jpg"]
    assert not part.exists() and not (tmp_path / "facades.tar.gz").exists()  # cleaned up
    assert hashlib.sha256(data).hexdigest() in out
    assert build_dataset("auto", root, "train", load_size=16, crop_size=16)[0]["A"].shape == (
        3,
        16,
        16,
    )
    # a second run keeps the complete folder
    assert _get(server, tmp_path) == 0
    assert "facades: already in" in capsys.readouterr().out


def test_cut_connections_are_retried_within_one_run(server: _Server, tmp_path: Path) -> None:
    data = server.files["/facades.tar.gz"][0]
    server.cuts = [5_000, 7_000]
    path = download(f"{server.url}/facades.tar.gz", tmp_path / "f.tar.gz", retries=2, backoff=0)
    assert path.read_bytes() == data
    assert [r["range"] for r in server.requests] == [None, "bytes=5000-", "bytes=12000-"]


def test_server_without_ranges_or_with_a_changed_file(server: _Server, tmp_path: Path) -> None:
    url = f"{server.url}/facades.tar.gz"
    server.cuts = [5_000]
    with pytest.raises(DataError, match="interrupted"):
        download(url, tmp_path / "a.tar.gz", retries=0)
    server.honour_range = False  # sends 200 and the whole file again
    assert (
        download(url, tmp_path / "a.tar.gz", retries=0).read_bytes()
        == server.files["/facades.tar.gz"][0]
    )
    server.honour_range = True
    server.cuts = [5_000]
    with pytest.raises(DataError):
        download(url, tmp_path / "b.tar.gz", retries=0)
    new = _tarball({"facades/train/1.jpg": _png(5)})
    server.files["/facades.tar.gz"] = (new, '"v2"')  # replaced on the server meanwhile
    assert download(url, tmp_path / "b.tar.gz", retries=0).read_bytes() == new
    assert server.requests[-1]["if_range"] == '"v1"'  # so the server sent the new file whole


def test_http_errors_are_one_line(server: _Server, tmp_path: Path, capsys) -> None:
    url = f"{server.url}/missing.tar.gz"
    assert cli(["data", "get", "maps", "--out", str(tmp_path), "--url", url]) == 2
    assert capsys.readouterr().err == (
        f"spap data: error: download of {url} failed: HTTP 404 Not Found\n"
    )


def test_full_disk_while_downloading_keeps_the_part(server: _Server, tmp_path: Path) -> None:
    url = f"{server.url}/facades.tar.gz"
    data = server.files["/facades.tar.gz"][0]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, hard))  # a real write limit
    try:
        with pytest.raises(DataError, match=r"cannot write .*\.part: file too large.*resume"):
            download(url, tmp_path / "f.tar.gz", retries=0, chunk_size=4096)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert (tmp_path / "f.tar.gz.part").stat().st_size == 16_384
    assert download(url, tmp_path / "f.tar.gz", retries=0).read_bytes() == data
    assert server.requests[-1]["range"] == "bytes=16384-"


def _symlink_tar(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ok = tarfile.TarInfo("facades/train/1.jpg")
        payload = _png(1)
        ok.size = len(payload)
        tf.addfile(ok, io.BytesIO(payload))
        link = tarfile.TarInfo(name)
        link.type = kind
        link.linkname = target
        tf.addfile(link)
    return buf.getvalue()


HOSTILE = {
    "zip_dotdot.zip": (
        lambda: _zip({"facades/train/1.jpg": _png(1), "../evil.txt": b"x"}),
        "member '../evil.txt' is a '..' component",
    ),
    "zip_absolute.zip": (
        lambda: _zip({"facades/train/1.jpg": _png(1), "/tmp/evil_abs.txt": b"x"}),
        "is an absolute path",
    ),
    "tar_dotdot.tar.gz": (
        lambda: _tarball({"facades/train/1.jpg": _png(1), "facades/../../evil.txt": b"x"}),
        "is a '..' component",
    ),
    "tar_absolute.tar.gz": (
        lambda: _tarball({"/tmp/evil_abs.txt": b"x", "facades/train/1.jpg": _png(1)}),
        "is an absolute path",
    ),
    "tar_symlink_out.tar.gz": (
        lambda: _symlink_tar("facades/train/link", "../../../etc/passwd"),
        "a link to '../../../etc/passwd', outside the archive",
    ),
    "tar_symlink_abs.tar.gz": (
        lambda: _symlink_tar("facades/link", "/etc/passwd"),
        "a link to '/etc/passwd', outside the archive",
    ),
    "tar_hardlink_out.tar.gz": (
        lambda: _symlink_tar("facades/hard", "../outside.txt", tarfile.LNKTYPE),
        "a link to '../outside.txt'",
    ),
    "tar_device.tar.gz": (
        lambda: _symlink_tar("facades/dev", "", tarfile.CHRTYPE),
        "a device file or FIFO",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_archives_are_refused_whole(name: str, tmp_path: Path, capsys) -> None:
    build, why = HOSTILE[name]
    archive = tmp_path / "dl" / name
    archive.parent.mkdir()
    archive.write_bytes(build())
    out = tmp_path / "work" / "out"
    assert cli(["data", "get", "facades", "--from", str(archive), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refusing to unpack it" in err and why in err and "nothing was unpacked" in err
    assert err.count("\n") == 1
    assert not (out / "facades").exists()  # nothing unpacked, no staging left
    assert not out.exists() or not any(out.iterdir())
    assert not (tmp_path / "work" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/evil_abs.txt").exists()
    assert archive.exists()  # an archive given with --from is never deleted


def test_symlinks_inside_the_archive_are_fine(tmp_path: Path) -> None:
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(_symlink_tar("facades/train/2.jpg", "1.jpg"))
    record = get_dataset("facades", tmp_path / "out", archive=archive)
    assert record["files"] == 1
    assert (tmp_path / "out" / "facades" / "train" / "2.jpg").resolve().name == "1.jpg"


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_truncated_archives_are_refused(kind: str, tmp_path: Path, capsys) -> None:
    members = {
        f"horse2zebra/trainA/{i}.png": np.random.default_rng(i).bytes(20_000) for i in range(4)
    }
    data = _zip(members) if kind == "zip" else _tarball(members)
    archive = tmp_path / f"h2z.{kind}"
    archive.write_bytes(data[: len(data) * 2 // 3])
    assert (
        cli(["data", "get", "horse2zebra", "--from", str(archive), "--out", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err
    assert "truncated" in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "horse2zebra").exists()
    with pytest.raises(DataError, match="truncated"):
        verify_archive(archive)


def test_corrupt_zip_member_is_refused(tmp_path: Path) -> None:
    data = bytearray(_zip({"horse2zebra/trainA/0.png": b"a" * 5000}))
    i = data.index(b"horse2zebra/trainA/0.png") + len("horse2zebra/trainA/0.png")
    data[i + 2] ^= 0xFF  # one bit of the compressed data
    (tmp_path / "bad.zip").write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt"):
        verify_archive(tmp_path / "bad.zip")


def test_cyclegan_zip_and_known_sources(tmp_path: Path) -> None:
    members = {
        f"horse2zebra/{side}/{i}.jpg": _png(i)
        for side in ("trainA", "trainB", "testA", "testB")
        for i in range(2)
    }
    members["__MACOSX/horse2zebra/._x"] = b"resource fork"  # some zips carry these
    (tmp_path / "h.zip").write_bytes(_zip(members))
    record = get_dataset("horse2zebra", tmp_path / "d", archive=tmp_path / "h.zip")
    assert record["layout"] == "unaligned" and record["files"] == 9
    root = tmp_path / "d" / "horse2zebra"
    assert sorted(p.name for p in root.iterdir()) == [
        ".spap-dataset.json",
        "testA",
        "testB",
        "trainA",
        "trainB",
    ]
    assert build_dataset("auto", root, "train", load_size=16, crop_size=16)[0]["B"].shape == (
        3,
        16,
        16,
    )
    assert (
        resolve("facades").url
        == "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/facades.tar.gz"
    )
    assert resolve("facades", "cyclegan").url.endswith("/CycleGAN/datasets/facades.zip")
    assert resolve("horse2zebra").url == (
        "https://people.eecs.berkeley.edu/~taesung_park/CycleGAN/datasets/horse2zebra.zip"
    )
    with pytest.raises(DataError, match="not a pix2pix dataset"):
        resolve("horse2zebra", "pix2pix")
    with pytest.raises(DataError, match="already exists and was not written"):
        (tmp_path / "e" / "maps").mkdir(parents=True)
        (tmp_path / "e" / "maps" / "mine.txt").write_text("x")
        get_dataset("maps", tmp_path / "e", archive=tmp_path / "h.zip")


def test_get_cityscapes_explains_the_registration(tmp_path: Path, capsys) -> None:
    assert cli(["data", "get", "facades", "cityscapes", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Cityscapes needs a registration" in err
    assert "spap data prepare cityscapes --from FOLDER --out DIR" in err
    assert not (tmp_path / "o").exists()  # checked before anything was downloaded


def test_full_disk_while_unpacking_leaves_nothing(tmp_path: Path) -> None:
    payload = np.random.default_rng(0).bytes(64_000)
    (tmp_path / "h.zip").write_bytes(_zip({"horse2zebra/trainA/0.png": payload}))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, hard))
    try:
        with pytest.raises(DataError, match="unpacking .* failed: file too large; nothing"):
            get_dataset("horse2zebra", tmp_path / "d", archive=tmp_path / "h.zip")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
