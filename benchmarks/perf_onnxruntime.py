"""Goal 4: CPU inference through ONNX Runtime vs PyTorch, ``spap translate`` end to end.

A folder of N 256x256 PNGs is translated with ``Translator.translate_folder`` (the code
behind ``spap translate``: decoding ahead of the generator, PNG writing in background
threads) once with ``runtime="torch"`` and once with ``runtime="onnxruntime"``, timed
interleaved; throughput includes decoding and writing. The generator is the plain CycleGAN
ResNet generator of ``cyclegan/facades`` (9 blocks, ngf 64), randomly initialised
(throughput does not depend on the weights). Goal: ONNX Runtime >= 1.1x PyTorch's images/s.

Also shown: the generator alone on images already in memory (same batches), in each
runtime, the time of the one-off export (cached afterwards), and the largest difference
between the two runtimes' PNGs in grey levels.

As ``spap translate`` does, the script lets idle OpenMP threads sleep
(``spap.cli.quiet_openmp_wait``) and uses ``spap.devices.set_threads()`` threads.

    python benchmarks/perf_onnxruntime.py            # 16 images, batch 4, 3 repeats
    python benchmarks/perf_onnxruntime.py --quick    # 8 images, 2 repeats, no forward-only rows
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from spap.cli import quiet_openmp_wait  # noqa: E402  (before torch is imported)

quiet_openmp_wait()

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _common as C  # noqa: E402
from perf_translate import write_images  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="8 images, 2 repeats, end to end only")
    p.add_argument("--images", type=int)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int)
    p.add_argument("--threads", type=int, help="default: spap.devices.set_threads()")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="model config overrides")
    args = p.parse_args(argv)
    n = args.images or (8 if args.quick else 16)
    repeats = args.repeats or (2 if args.quick else 3)

    from PIL import Image

    from spap.config import from_dict, merge, parse_overrides, read_yaml
    from spap.data.io import list_images, read_image
    from spap.data.transforms import to_tensor_image
    from spap.devices import set_threads
    from spap.inference.runtime import OnnxGenerator
    from spap.inference.translate import Translator
    from spap.models.cyclegan import build_generator
    from spap.systems.cyclegan import CycleGANConfig

    set_threads(args.threads)
    cfg = from_dict(
        CycleGANConfig, merge(read_yaml("cyclegan/facades"), parse_overrides(args.overrides))
    )
    torch.manual_seed(0)
    g = build_generator(cfg.model)
    tmp = Path(tempfile.mkdtemp(prefix="spap_perf_onnxruntime_"))
    os.environ["SPAP_CACHE_DIR"] = str(tmp / "cache")  # a fresh export, timed below
    try:
        eager = Translator({"AtoB": g}, device="cpu")
        ort = Translator({"AtoB": g}, device="cpu", runtime="onnxruntime")
        if ort.runtime != "onnxruntime":
            print("onnxruntime is not installed: pip install 'spap[export]'")
            return 1
        t0 = time.perf_counter()
        ort.translate(torch.zeros(1, 3, 16, 16))  # exports once (then cached)
        export_s = time.perf_counter() - t0
        engine = ort._engines["AtoB"]
        assert isinstance(engine, OnnxGenerator)

        src = tmp / "in"
        write_images(src, n, args.size)
        images = torch.stack([to_tensor_image(read_image(f)) for f in list_images(src)])
        bs = args.batch_size

        def folder(translator: Translator, name: str):
            def run() -> None:
                out = tmp / name
                shutil.rmtree(out, ignore_errors=True)
                result = translator.translate_folder(src, out, batch_size=bs)
                assert result.written == n, result

            return run

        def forward(fn):
            def run() -> None:
                with torch.no_grad():
                    for i in range(0, n, bs):
                        fn(images[i : i + bs])

            return run

        print(C.machine_line())
        print(
            f"{n} images of {args.size}x{args.size}, batch {bs}, {repeats} repeats; "
            f"ONNX Runtime {engine.session.get_session_options().intra_op_num_threads} "
            f"intra-op threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}"
        )
        variants = {
            "translate_folder, PyTorch": folder(eager, "torch"),
            "translate_folder, ONNX Runtime": folder(ort, "ort"),
        }
        if not args.quick:
            variants["generator alone, PyTorch"] = forward(g)
            variants["generator alone, ONNX Runtime"] = forward(engine)
        times = C.interleaved(variants, repeats, warmup=1)
        worst = 0
        for f in (tmp / "torch").glob("*.png"):
            a = np.asarray(Image.open(f).convert("RGB"), dtype=np.int16)
            b = np.asarray(Image.open(tmp / "ort" / f.name).convert("RGB"), dtype=np.int16)
            worst = max(worst, int(np.abs(a - b).max()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    for kind in ("translate_folder", "generator alone"):
        if f"{kind}, PyTorch" not in times:
            continue
        base = n / C.median(times[f"{kind}, PyTorch"])
        for rt in ("PyTorch", "ONNX Runtime"):
            ips = n / C.median(times[f"{kind}, {rt}"])
            goal = ""
            if kind == "translate_folder" and rt == "ONNX Runtime":
                goal = C.verdict(ips / base >= 1.1)
            rows.append(
                [f"{kind}, {rt}", C.median(times[f"{kind}, {rt}"]), ips, f"{ips / base:.2f}x", goal]
            )
    print(
        f"\nGoal 4: ONNX Runtime vs PyTorch, {args.size}px, batch {bs}, decoding and writing included:"
    )
    print(C.table(["variant", "s per pass", "images/s", "vs PyTorch", ">= 1.1x"], rows))
    print(
        f"one-off export (cached afterwards): {export_s:.1f} s; largest PNG difference: {worst} grey level(s)"
    )
    print(C.machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
