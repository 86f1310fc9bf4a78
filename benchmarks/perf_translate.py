"""Goal 4: ``spap translate`` throughput vs the generator's pure forward throughput.

A folder of N 256x256 PNGs is translated with ``Translator.translate_folder`` (the code
behind ``spap translate``, with its defaults on the CPU: decoding in a background thread
ahead of the generator, PNG writing in background threads) and compared with the same
generator's forward pass alone over the same images already in memory, in batches of the
same size. Both are timed interleaved; the ratio of images/s is the goal (>= 0.95: image
I/O hidden behind compute). Also shown: ``translate_folder`` with decoding in loader worker
processes (``--workers``, 2) and the forward under ``torch.inference_mode``.

Generator: the plain CycleGAN ResNet generator of ``cyclegan/facades`` (9 blocks, ngf 64),
randomly initialised (throughput does not depend on the weights), held by a ``Translator``.

    python benchmarks/perf_translate.py            # 16 images, batch 4, 3 repeats
    python benchmarks/perf_translate.py --quick    # 8 images, 2 repeats
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import _common as C


def write_images(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` smooth random RGB PNGs (low-frequency noise, so they compress like photos)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        small = torch.rand(1, 3, 16, 16, generator=g)
        img = F.interpolate(small, size=(size, size), mode="bicubic", align_corners=False)
        arr = (img[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(folder / f"img_{i:04d}.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="8 images, 2 repeats")
    p.add_argument("--images", type=int)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--workers", type=int, default=2, help="worker processes of the second translate_folder"
    )
    p.add_argument("--repeats", type=int)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="model config overrides")
    args = p.parse_args(argv)
    n = args.images or (8 if args.quick else 16)
    repeats = args.repeats or (2 if args.quick else 3)

    from spap.config import from_dict, merge, parse_overrides, read_yaml
    from spap.data.io import list_images, read_image
    from spap.data.transforms import to_tensor_image
    from spap.inference.translate import Translator
    from spap.models.cyclegan import build_generator
    from spap.systems.cyclegan import CycleGANConfig

    cfg_dict = merge(read_yaml("cyclegan/facades"), parse_overrides(args.overrides))
    cfg = from_dict(CycleGANConfig, cfg_dict)
    torch.manual_seed(0)
    translator = Translator({"AtoB": build_generator(cfg.model)}, device="cpu")
    g = translator.generator("AtoB")

    tmp = Path(tempfile.mkdtemp(prefix="spap_perf_translate_"))
    try:
        src = tmp / "in"
        write_images(src, n, args.size)
        images = torch.stack([to_tensor_image(read_image(f)) for f in list_images(src)])
        bs = args.batch_size

        def forward_only() -> None:
            with torch.no_grad():
                for i in range(0, n, bs):
                    g(images[i : i + bs])

        def forward_inference_mode() -> None:
            with torch.inference_mode():
                for i in range(0, n, bs):
                    g(images[i : i + bs])

        def folder(workers: int | None):
            def run() -> None:
                out = tmp / f"out_{workers}"
                shutil.rmtree(out, ignore_errors=True)
                result = translator.translate_folder(src, out, batch_size=bs, num_workers=workers)
                assert result.written == n, result

            return run

        print(C.machine_line())
        print(f"{n} images of {args.size}x{args.size}, batch {bs}, {repeats} repeats")
        variants = {
            "generator forward only": forward_only,
            "translate_folder (default: decoding thread)": folder(None),
            f"translate_folder ({args.workers} worker processes)": folder(args.workers),
            "generator forward, inference_mode": forward_inference_mode,
        }
        times = C.interleaved(variants, repeats, warmup=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = n / C.median(times["generator forward only"])
    rows = []
    for name, ts in times.items():
        ips = n / C.median(ts)
        ratio = ips / base
        goal = C.verdict(ratio >= 0.95) if "default" in name else ""
        rows.append([name, C.median(ts), ips, f"{ratio:.3f}", goal])
    print(f"\nGoal 4: translate throughput vs pure forward ({args.size}px, batch {bs}):")
    print(C.table(["variant", "s per pass", "images/s", "vs forward", ">= 0.95"], rows))
    print(C.machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
