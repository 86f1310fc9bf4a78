"""Goal 5: peak memory (RSS) of each training config, and no growth over 200 iterations.

Part 1 runs every training config for a few iterations in a fresh process (so that each
peak is its own) and reports the peak resident set size (``ru_maxrss``) with synthetic
batches: the CycleGAN configs at their sizes (batch 1) and the GAN configs at 128x128,
batch 16.

Part 2 trains the 64x64 CycleGAN config (6 blocks, ngf = ndf = 32) for 200 iterations
through the real loop (``spap.train.loop.run``: data-loading workers on built-in scenes,
epochs of 108 images, TensorBoard, sample grids and checkpoints every 100 iterations) and
reports the RSS of the training process at iterations 20, 100 and 200. The image pools fill
up during the first 50 iterations (2 x 50 images); after that the RSS must stay flat:
goal RSS(200) - RSS(100) < 10 MiB. The loop's time per iteration is shown beside the bare
``train_step`` time of the same process (data loading is overlapped if they match).

    python benchmarks/perf_memory.py            # both parts
    python benchmarks/perf_memory.py --quick    # GAN configs at width 16, fewer configs
    python benchmarks/perf_memory.py --growth-only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import _common as C

CYCLEGAN_64 = {"model": {"ngf": 32, "ndf": 32, "n_blocks": 6}}

# label -> (task kind, config, size, overrides, iterations)
PEAK_CONFIGS: dict[str, tuple[str, str, int, dict[str, Any], int]] = {
    "cyclegan 64px/6blk/32": ("cyclegan", "cyclegan/cityscapes", 64, CYCLEGAN_64, 3),
    "cyclegan cityscapes 128": ("cyclegan", "cyclegan/cityscapes", 128, {}, 3),
    "cyclegan cityscapes_spap 128": ("cyclegan", "cyclegan/cityscapes_spap", 128, {}, 3),
    "cyclegan facades 256": ("cyclegan", "cyclegan/facades", 256, {}, 2),
    "cyclegan facades_spap 256": ("cyclegan", "cyclegan/facades_spap", 256, {}, 2),
    "gan celebahq128_baseline b16": ("gan", "gan/celebahq128_baseline", 128, {}, 2),
    "gan celebahq128_sagan b16": ("gan", "gan/celebahq128_sagan", 128, {}, 2),
    "gan celebahq128_spap_c2f b16": ("gan", "gan/celebahq128_spap_c2f", 128, {}, 2),
}
QUICK_SKIP = ("cyclegan facades 256", "cyclegan facades_spap 256")


def _task(kind: str, config: str, size: int, overrides: dict[str, Any]) -> Any:
    if kind == "cyclegan":
        from perf_cyclegan import make_task

        return make_task(config, overrides, size)
    from perf_gan import make_task

    return make_task(config, C.merge_dicts({"train": {"batch_size": 16}}, overrides))


def child_peak(kind: str, config: str, size: int, overrides: dict[str, Any], steps: int) -> None:
    """Run ``steps`` iterations; print the peak and current RSS as JSON."""
    before = C.rss_mb()
    task = _task(kind, config, size, overrides)
    built = C.rss_mb()
    g = torch.Generator().manual_seed(0)
    for i in range(steps):
        if kind == "cyclegan":
            batch = {
                "A": torch.rand(1, 3, size, size, generator=g) * 2 - 1,
                "B": torch.rand(1, 3, size, size, generator=g) * 2 - 1,
            }
        else:
            batch = {"image": torch.rand(task.batch_size, 3, size, size, generator=g) * 2 - 1}
        task.train_step(batch, i)
    print(json.dumps({"start": before, "built": built, "end": C.rss_mb(), "peak": C.peak_rss_mb()}))


def run_peaks(quick: bool) -> list[list[Any]]:
    rows = []
    for label, (kind, config, size, overrides, steps) in PEAK_CONFIGS.items():
        if quick and label in QUICK_SKIP:
            continue
        if quick and kind == "gan":
            overrides = C.merge_dicts(overrides, {"model": {"g_ch": 16, "d_ch": 16}})
            label += " (width 16)"
        spec = json.dumps([kind, config, size, overrides, steps])
        print(f"  {label} ...", file=sys.stderr, flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--child-peak", spec],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append([label, steps, r["start"], r["built"], r["end"], r["peak"]])
    return rows


def run_growth(steps: int = 200, marks: tuple[int, ...] = (20, 100, 200)) -> dict[str, Any]:
    """Train the 64x64 config through the runner, recording RSS and time at ``marks``."""
    from spap.config import from_dict, merge, read_yaml
    from spap.data.scenes import write_scenes
    from spap.systems.cyclegan import apply_size
    from spap.train.cyclegan import CycleGANTask
    from spap.train.loop import run

    record: dict[int, tuple[float, float]] = {}

    class Probe(CycleGANTask):
        def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
            out = super().train_step(batch, step)
            if step + 1 in marks or step + 1 == 1:
                record[step + 1] = (C.rss_mb(), time.perf_counter())
            return out

    with tempfile.TemporaryDirectory(prefix="spap_perf_memory_") as tmp:
        data = Path(tmp) / "scenes"
        write_scenes(data, n=120, size=64, seed=0)
        cfg_dict = read_yaml("cyclegan/cityscapes")
        apply_size(cfg_dict, 64)
        cfg_dict = merge(
            merge(cfg_dict, CYCLEGAN_64),
            {
                "data": {"root": str(data)},
                "run": {
                    "device": "cpu",
                    "steps": steps,
                    "checkpoint_every": 100,
                    "sample_every": 100,
                    "log_every": 10,
                    "num_workers": 2,
                    "eval_every": 0,  # training memory only (evaluation: docs/training.md)
                },
            },
        )
        cfg = from_dict(CycleGANTask.config_class, cfg_dict)
        run(Probe, cfg, Path(tmp) / "run")
        loop_s = (record[marks[-1]][1] - record[marks[0]][1]) / (marks[-1] - marks[0])

        # bare train_step time in the same process, same config, synthetic batches
        from perf_cyclegan import make_batches, make_task

        task = make_task("cyclegan/cityscapes", CYCLEGAN_64, 64)
        batches = make_batches(64, 4)
        for i in range(3):
            task.train_step(batches[i % 4], i)
        times = []
        for i in range(10):
            t0 = time.perf_counter()
            task.train_step(batches[i % 4], i + 3)
            times.append(time.perf_counter() - t0)
    return {
        "rss": {k: v[0] for k, v in record.items()},
        "loop_s": loop_s,
        "step_s": C.median(times),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="skip the 256 configs, GAN at width 16")
    p.add_argument("--growth-only", action="store_true")
    p.add_argument("--peaks-only", action="store_true")
    p.add_argument("--child-peak", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_peak:
        kind, config, size, overrides, steps = json.loads(args.child_peak)
        child_peak(kind, config, size, overrides, steps)
        return 0

    print(C.machine_line())
    if not args.growth_only:
        rows = run_peaks(args.quick)
        print("\nGoal 5a: memory of each training config (MiB; fresh process each):")
        headers = ["config", "iterations", "RSS start", "RSS built", "RSS end", "peak RSS"]
        print(C.table(headers, rows))
    if not args.peaks_only:
        g = run_growth()
        rss = g["rss"]
        growth = rss[200] - rss[100]
        print("\nGoal 5b: RSS of a 200-iteration run (64x64 config, spap.train.loop.run):")
        headers = [
            "RSS it 1",
            "RSS it 20",
            "RSS it 100",
            "RSS it 200",
            "growth 100->200",
            "< 10 MiB",
            "loop s/iter",
            "bare step s/iter",
        ]
        row = [
            rss[1],
            rss[20],
            rss[100],
            rss[200],
            growth,
            C.verdict(growth < 10),
            g["loop_s"],
            g["step_s"],
        ]
        print(C.table(headers, [row]))
    print(C.machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
