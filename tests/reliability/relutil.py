"""Helpers of the reliability tests: tiny images, every kind of bad file, the toy task's
config, checkpoint comparison, ``spap`` subprocesses."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # toytask

#: Subprocesses: one CPU thread, no GPU, no colour codes.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "NO_COLOR": "1"}

#: Tiny settings of the real tasks (a few seconds per subprocess, most of it imports).
GAN_TINY = [
    "--size", "32",
    "model.z_dim=8", "model.g_ch=2", "model.d_ch=2",
    "train.batch_size=2", "train.num_fixed=2", "train.ema_start=1",
    "run.num_workers=0", "run.device=cpu", "run.log_every=1000",
]  # fmt: skip
CYCLEGAN_TINY = [
    "--size", "16",
    "model.ngf=2", "model.ndf=2", "model.n_blocks=1", "model.n_layers_d=1",
    "train.pool_size=2", "train.num_visuals=1",
    "run.num_workers=0", "run.device=cpu", "run.log_every=1000",
]  # fmt: skip


# ----------------------------------------------------------------------------- images


def save_rgb(path: Path, size: int = 12, seed: int = 0, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format=fmt)
    return path


def image_folder(root: Path, n: int = 6, size: int = 12, seed: int = 0) -> Path:
    for i in range(n):
        save_rgb(root / f"img_{i:02d}.png", size, seed + i)
    return root


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def huge_png(path: Path, side: int = 20000) -> Path:
    """A complete, valid side x side 1-bit PNG (all black): ~50 KB on disk, 400 megapixels."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )
    return path


def bad_data_folder(root: Path, huge: Path, big: Path) -> dict[str, list[str]]:
    """Every kind of file the issue lists. Good and bad files alternate in name order, so no
    two unreadable files are neighbours (each skip replaces one item with the next file).

    Returns the file names by group: "usable" (decode, possibly after conversion),
    "unreadable" (fail to decode: skipped when met), "excluded" (zero bytes, broken link:
    never candidates), "ignored" (not image-named).
    """
    root.mkdir(parents=True)
    groups: dict[str, list[str]] = {"usable": [], "unreadable": [], "excluded": [], "ignored": []}

    def usable(name: str, img: Image.Image, **save: Any) -> None:
        img.save(root / name, **save)
        groups["usable"].append(name)

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    good_png = root / "a00_good.png"
    rgb.save(good_png)
    groups["usable"].append(good_png.name)
    good_jpg = root / "a02_good.jpg"
    rgb.save(good_jpg, quality=90)
    groups["usable"].append(good_jpg.name)

    # unreadable: truncated JPEG / PNG, text named .png, 20000x20000 and 9000x9000 PNGs
    # (decompression-bomb guards: Pillow's, and spap's 64-megapixel limit)
    (root / "a01_truncated.jpg").write_bytes(good_jpg.read_bytes()[:200])
    (root / "a03_truncated.png").write_bytes(good_png.read_bytes()[:60])
    (root / "a05_text.png").write_text("this is not an image\n")
    (root / "a07_huge.png").write_bytes(huge.read_bytes())
    groups["unreadable"] += ["a01_truncated.jpg", "a03_truncated.png", "a05_text.png"]
    (root / "a13_big.png").write_bytes(big.read_bytes())
    groups["unreadable"] += ["a07_huge.png", "a13_big.png"]

    # usable after conversion: 16-bit PNG, CMYK JPEG, palette, RGBA, LA, animated GIF
    gray16 = (rng.integers(0, 65536, (12, 12))).astype(np.uint16)
    usable("a04_gray16.png", Image.fromarray(gray16))
    usable("a06_cmyk.jpg", rgb.convert("CMYK"), quality=90)
    usable("a08_palette.png", rgb.convert("P"))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    usable("a10_rgba.png", rgba)
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    usable("a12_anim.gif", frames[0].convert("P"), save_all=True, append_images=[frames[1]])
    usable("a14_la.png", rgb.convert("LA"))

    # excluded at listing: zero bytes, a broken link; ignored: no image suffix
    (root / "a09_empty.jpg").write_bytes(b"")
    (root / "a11_broken.png").symlink_to(root / "does_not_exist.png")
    groups["excluded"] += ["a09_empty.jpg", "a11_broken.png"]
    (root / "notes.txt").write_text("ignored\n")
    (root / "data.csv").write_text("1,2\n")
    groups["ignored"] += ["notes.txt", "data.csv"]
    return groups


# ----------------------------------------------------------------------------- toy task


def toy_cfg(data_root: Path | str, **sections: dict[str, Any]) -> Any:
    """The toy task's config: ``run={...}``, ``train={...}``, ``data={...}`` override."""
    from toytask import ToyConfig

    from spap.config import from_dict, merge

    base = {
        "run": {"num_workers": 0, "device": "cpu", "log_every": 1000, "sample_every": 1000},
        "data": {"root": str(data_root)},
    }
    return from_dict(ToyConfig, merge(base, sections))


def weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every network tensor of a checkpoint, as ``net.key``."""
    return {f"{n}.{k}": v for n, sd in state["task"]["models"].items() for k, v in sd.items()}


def assert_same_weights(a: dict[str, Any], b: dict[str, Any]) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"weights differ: {diff[:5]}"


# ----------------------------------------------------------------------------- processes


def spap_argv(args: Sequence[str], toy: bool = False) -> list[str]:
    """``python -m spap.cli ARGS`` (or the toy launcher, the same command with the toy task)."""
    head = [sys.executable, str(HERE / "toyrun.py")] if toy else [sys.executable, "-m", "spap.cli"]
    return [*head, *map(str, args)]


def run_spap(
    args: Sequence[str], toy: bool = False, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        spap_argv(args, toy),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


class Proc:
    """A background ``spap`` process in its own session, stderr captured to a file."""

    def __init__(self, args: Sequence[str], log: Path, toy: bool = False) -> None:
        self.log = log
        self._fh = open(log, "w")  # noqa: SIM115 - closed in wait()
        self.p = subprocess.Popen(
            spap_argv(args, toy),
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=self._fh,
            start_new_session=True,  # killpg reaches the data-loader workers too
        )

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str, cond: Callable[[], bool], timeout: float = 90) -> None:
        """Poll ``cond`` until true; fail (and kill) if the process ends or time runs out."""
        end = time.monotonic() + timeout
        while not cond():
            if self.p.poll() is not None:
                raise AssertionError(
                    f"process ended ({self.p.returncode}) before {what}:\n" + self.stderr()[-3000:]
                )
            if time.monotonic() > end:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}:\n" + self.stderr()[-3000:])
            time.sleep(0.01)

    def signal(self, signum: int, group: bool = False) -> None:
        if group:
            os.killpg(self.p.pid, signum)
        else:
            self.p.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        try:
            code = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._fh.close()
        return code

    def kill(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(10)


# ----------------------------------------------------------------------------- full disks


def can_mount_tmpfs(where: Path) -> bool:
    """Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN, no sandbox)."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                        capture_output=True).returncode == 0  # fmt: skip
    if ok:
        subprocess.run(["umount", str(where)], check=True)
    return ok


class SmallFilesystem:
    """A real, small file system: a tmpfs of ``size`` bytes mounted on ``where`` (needs
    root). ``resize`` changes its size in place (``mount -o remount``)."""

    def __init__(self, where: Path, size: int) -> None:
        self.path = where
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       check=True)  # fmt: skip

    def resize(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)

    def __enter__(self) -> SmallFilesystem:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_spap_limited(
    args: Sequence[str], toy: bool = False, file_size: int | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """``spap ARGS`` in a subprocess under a file-size limit (``ulimit -f``, RLIMIT_FSIZE):
    a write past ``file_size`` bytes fails with EFBIG (no root needed)."""
    import resource

    def limit() -> None:
        if file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    return subprocess.run(spap_argv(args, toy), env=ENV, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit)  # fmt: skip


# ----------------------------------------------------------------------------- bounded runs

#: Runs each argv of a JSON list through ``spap.cli.main`` under an address-space limit of
#: the imported process + argv[1] MiB; prints one JSON line per command: exit code,
#: seconds, stderr lines, peak RSS growth in MiB.
BOUNDED = r"""
import contextlib, io, json, resource, sys, time
from spap.cli import main
import spap.inference, spap.train.loop  # noqa: F401 - everything a command imports
vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
extra = int(sys.argv[1]) << 20
resource.setrlimit(resource.RLIMIT_AS, (vm + extra, vm + extra))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for argv in json.load(open(sys.argv[2])):
    err = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except BaseException as exc:  # reported, not hidden
            code = f"{type(exc).__name__}: {str(exc)[:300]}"
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({"argv": argv, "code": code, "seconds": time.perf_counter() - t,
                      "stderr": err.getvalue().splitlines(), "peak_mib": peak}), flush=True)
"""


def run_bounded(
    commands: list[list[str]], tmp: Path, extra_mib: int = 1024, timeout: float = 120
) -> list[dict[str, Any]]:
    """Run ``spap`` commands in one subprocess whose memory may grow by at most
    ``extra_mib`` MiB (RLIMIT_AS over what the imports took); their results, in order."""
    import json

    spec = tmp / "commands.json"
    spec.write_text(json.dumps([[str(a) for a in c] for c in commands]))
    env = {**ENV, "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-c", BOUNDED, str(extra_mib), str(spec)],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == len(commands), res.stdout[-2000:] + res.stderr[-3000:]
    return [json.loads(ln) for ln in lines]
