"""Does SPAP help? A small CPU-scale study on the built-in scenes.

CycleGAN (labels <-> photos, unpaired): baseline vs SAGAN vs SPAP coarse-to-fine vs SPAP
fine-to-coarse, the same number of iterations and seeds each, scored on the test split by
photo->labels (nearest palette colour) and labels->photo FCN-score (a small segmentation net
trained on the real training pairs): per-pixel accuracy, per-class accuracy, class IoU.

GAN (scene photos): baseline vs SAGAN vs SPAP, scored by FID computed with a feature
network trained on the scenes (the same segmentation net's encoder, ``spap-segnet``
features), *not* the standard Inception FID.

Every run is a separate job (``--jobs`` processes, ``--threads`` CPU threads each) that
writes ``OUT/results/<name>.json``; finished runs are skipped when the command is repeated,
interrupted ones resume from their checkpoint. The summary goes to ``OUT/study.md`` and
``OUT/study.json``.

    python experiments/study.py --out runs/study                       # the main study
    python experiments/study.py --out runs/study --part ablation       # SPAP's open choices
    python experiments/study.py --out runs/pilot --seeds 0 --cg-steps 50 --gan-steps 20 \\
        --cg-variants baseline spap_c2f --gan-variants baseline     # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

log = logging.getLogger("study")

# ----------------------------------------------------------------------------- variants
# Placement at 32x32 images [ours]: G after the residual trunk (8x8 maps, 4*ngf channels),
# D after feature layer 1 (8x8 maps, 2*ndf channels), the same resolution as the shipped
# scenes_spap.yaml at 64x64 in D. SPAP rates (0, 1, 2, 4): a 1x1 branch and 3x3 branches of
# dilation 1, 2, 4 (a dilation of 8 would see only padding on 8x8 maps).

_RATES = [0, 1, 2, 4]


def _cg(kind: str, g_at=("trunk_end",), d_at=(1,), **spap: Any) -> dict[str, Any]:
    if kind == "none":
        return {"attention": "none"}
    opts = {"rates": _RATES, **spap} if kind == "spap" else {}
    return {
        "attention": kind,
        "g_attention_at": list(g_at),
        "d_attention_at": list(d_at),
        "g_attention_options": dict(opts),
        "d_attention_options": dict(opts),
    }


CG_VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": _cg("none"),
    "sagan": _cg("sagan"),
    "spap_c2f": _cg("spap", order="coarse_to_fine"),
    "spap_f2c": _cg("spap", order="fine_to_coarse"),
}

# The open choices of SPEC.md section 2, each varied alone from spap_c2f.
CG_ABLATION: dict[str, dict[str, Any]] = {
    "spap_c2f_G_only": _cg("spap", d_at=(), order="coarse_to_fine"),
    "spap_c2f_D_only": _cg("spap", g_at=(), order="coarse_to_fine"),
    "spap_c2f_G_up0": _cg("spap", g_at=("up:0",), order="coarse_to_fine"),
    "spap_c2f_rates_124": _cg("spap", order="coarse_to_fine", rates=[1, 2, 4]),
    "spap_c2f_channel": _cg("spap", order="coarse_to_fine", attention="channel"),
    "spap_c2f_sigmoid": _cg("spap", order="coarse_to_fine", normalizer="sigmoid"),
    "spap_c2f_gamma05": _cg("spap", order="coarse_to_fine", gamma_init=0.5),
}

# GAN: the shipped scenes64_* configs, resized (their units sit after the 32x32 blocks at
# 64 px, after the 16x16 blocks at 32 px).
GAN_VARIANTS: dict[str, str] = {
    "baseline": "gan/scenes64_baseline",
    "sagan": "gan/scenes64_sagan",
    "spap_c2f": "gan/scenes64_spap_c2f",
    "spap_f2c": "gan/scenes64_spap_f2c",
}

CG_METRICS = [
    ("photo2labels", "pixel_acc"),
    ("photo2labels", "class_acc"),
    ("photo2labels", "class_iou"),
    ("labels2photo", "pixel_acc"),
    ("labels2photo", "class_acc"),
    ("labels2photo", "class_iou"),
]


# ----------------------------------------------------------------------------- jobs


def _setup_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    os.environ.setdefault("TQDM_DISABLE", "1")


def _train(task_cls: Any, cfg: Any, run_dir: Path) -> float:
    """Train (or resume) a run; returns the wall-clock seconds spent now."""
    from spap.train.checkpoint import list_checkpoints, load_checkpoint
    from spap.train.loop import run

    ckpts = list_checkpoints(run_dir)
    if ckpts and load_checkpoint(run_dir)["step"] >= cfg.run.steps:
        return 0.0
    t0 = time.perf_counter()
    run(task_cls, cfg, run_dir, resume=bool(ckpts))
    return time.perf_counter() - t0


def cyclegan_config(spec: dict[str, Any]) -> Any:
    """The CycleGAN config of a run: configs/cyclegan/scenes.yaml resized, the variant's
    model keys, a 2-phase learning rate (constant, then the reference's linear decay)."""
    from spap.config import from_dict, merge, read_yaml
    from spap.systems.cyclegan import CycleGANConfig, apply_size

    steps, n_train, size = spec["steps"], spec["n_train"], spec["size"]
    data = read_yaml("cyclegan/scenes")
    apply_size(data, size)
    epochs = max(1, math.ceil(steps / n_train))
    n_epochs = max(1, (epochs + 1) // 2)
    model = {"ngf": spec["width"], "ndf": spec["width"], **spec["model"]}
    return from_dict(
        CycleGANConfig,
        merge(
            data,
            {
                "data": {"root": spec["data"], "layout": "unaligned"},
                "model": model,
                "run": {
                    "seed": spec["seed"],
                    "device": "cpu",
                    "steps": steps,
                    "num_workers": 0,
                    "log_every": 25,
                    "sample_every": steps,
                    "checkpoint_every": max(1, steps // 4),
                    "keep_last": 1,
                },
                "train": {"n_epochs": n_epochs, "n_epochs_decay": epochs - n_epochs},
            },
        ),
    )


def cyclegan_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one CycleGAN variant/seed and score it (runs in a worker process)."""
    _setup_worker(spec["threads"])
    from spap.config import to_dict
    from spap.eval.fcn import fcn_score
    from spap.inference.translate import Translator
    from spap.models.segnet import load_segnet
    from spap.train.cyclegan import CycleGANTask

    steps, size = spec["steps"], spec["size"]
    cfg = cyclegan_config(spec)
    model = to_dict(cfg.model)
    run_dir = Path(spec["run_dir"])
    seconds = _train(CycleGANTask, cfg, run_dir)
    t0 = time.perf_counter()
    translator = Translator.from_checkpoint(run_dir, device="cpu")
    segnet = load_segnet(spec["segnet"], "cpu")
    scores = fcn_score(
        translator,
        spec["data"],
        segnet,
        direction="both",
        size=size,
        palette="scenes",
        device="cpu",
        include_real=False,
    )
    params = {n: sum(p.numel() for p in g.parameters()) for n, g in translator.generators.items()}
    from spap.train.checkpoint import load_checkpoint

    models = load_checkpoint(run_dir)["task"]["models"]
    gammas = {  # the learned blend scalars of the attention units (0 at the start)
        net: [float(t) for k, t in sorted(sd.items()) if k.endswith("gamma")]
        for net, sd in models.items()
    }
    return {
        "name": spec["name"],
        "kind": "cyclegan",
        "variant": spec["variant"] + (f" ({spec['tag']})" if spec.get("tag") else ""),
        "seed": spec["seed"],
        "steps": steps,
        "train_seconds": seconds,
        "eval_seconds": time.perf_counter() - t0,
        "generator_params": params,
        "gamma": gammas,
        "model": model,
        "scores": {
            d: {m: scores[d][m] for m in ("pixel_acc", "class_acc", "class_iou")}
            for d in ("photo2labels", "labels2photo")
        },
        "per_class": {d: scores[d]["per_class"] for d in ("photo2labels", "labels2photo")},
    }


def gan_config(spec: dict[str, Any]) -> Any:
    """The GAN config of a run: the variant's configs/gan/scenes64_*.yaml resized."""
    from spap.config import from_dict, merge, read_yaml
    from spap.systems.gan import GANConfig, apply_size

    steps, size = spec["steps"], spec["size"]
    data = read_yaml(GAN_VARIANTS[spec["variant"]])
    apply_size(data, size)
    return from_dict(
        GANConfig,
        merge(
            data,
            {
                "data": {"root": str(Path(spec["data"]) / "trainB")},
                "model": {"g_ch": spec["width"], "d_ch": spec["width"]},
                "run": {
                    "seed": spec["seed"],
                    "device": "cpu",
                    "steps": steps,
                    "num_workers": 0,
                    "log_every": 25,
                    "sample_every": steps,
                    "checkpoint_every": max(1, steps // 4),
                    "keep_last": 1,
                },
                "train": {
                    "iterations": steps,
                    "batch_size": spec["batch_size"],
                    "ema_start": steps // 2,
                },
            },
        ),
    )


def gan_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one GAN variant/seed and score it by segnet-feature FID (worker process)."""
    _setup_worker(spec["threads"])
    from spap.eval.fidelity import compute_fid
    from spap.inference.sample import Sampler
    from spap.train.gan import GANTask

    steps, size = spec["steps"], spec["size"]
    cfg = gan_config(spec)
    run_dir = Path(spec["run_dir"])
    seconds = _train(GANTask, cfg, run_dir)
    t0 = time.perf_counter()
    sampler = Sampler.from_checkpoint(run_dir, device="cpu", ema=True)
    fid = compute_fid(
        str(Path(spec["data"]) / "trainB"),
        sampler,
        feature_extractor="spap-segnet",
        weights_path=spec["segnet"],
        num_samples=spec["fid_samples"],
        size=size,
        batch_size=50,
        device="cpu",
        cache_dir=spec["cache"],
        seed=1000 + spec["seed"],
    )
    return {
        "name": spec["name"],
        "kind": "gan",
        "variant": spec["variant"] + (f" ({spec['tag']})" if spec.get("tag") else ""),
        "seed": spec["seed"],
        "steps": steps,
        "train_seconds": seconds,
        "eval_seconds": time.perf_counter() - t0,
        "generator_params": sum(p.numel() for p in sampler.generator.parameters()),
        "scores": {"fid": fid},
    }


def cost_job(spec: dict[str, Any]) -> dict[str, Any]:
    """CPU seconds (process time) per training iteration of a variant, on a fixed batch."""
    _setup_worker(spec["threads"])
    import torch
    from torch.utils.data import default_collate

    from spap.train import distributed as D
    from spap.train.context import RunContext

    if spec["kind"] == "cyclegan":
        from spap.train.cyclegan import CycleGANTask as task_cls

        cfg = cyclegan_config(spec)
    else:
        from spap.train.gan import GANTask as task_cls

        cfg = gan_config(spec)
    torch.manual_seed(0)
    task = task_cls(cfg, RunContext(cfg.run, torch.device("cpu"), D.env_info()))
    ds = task.build_dataset()
    batch = default_collate([ds[(0, i)] for i in range(task.batch_size)])
    task.train_step(batch, 0)
    times = []
    for i in range(spec["repeat"]):
        t0 = time.process_time()
        task.train_step(batch, i + 1)
        times.append(time.process_time() - t0)
    params = {
        name: sum(p.numel() for p in net.parameters())
        for name, net in getattr(task, "nets", {}).items()
    } or {"G": sum(p.numel() for p in task.G.parameters())}
    return {
        "kind": spec["kind"],
        "variant": spec["variant"],
        "cpu_seconds_per_iteration": statistics.median(times),
        "params": params,
    }


# ----------------------------------------------------------------------------- summary


def _mean_sd(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan)


def _cell(values: list[float], digits: int = 3) -> str:
    m, s = _mean_sd(values)
    if math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if not math.isnan(s) else f"{m:.{digits}f}"


def _order(label: str, order: list[str]) -> tuple[int, str]:
    """Sort key of a variant label (``name`` or ``name (tag)``) by the variant tables."""
    return order.index(label.split(" (")[0]), label


def _per_class_table(cg: list[dict[str, Any]], variants: list[str]) -> list[str]:
    """Per-class IoU, mean over seeds, for both directions."""
    names = [c["name"] for c in cg[0]["per_class"]["photo2labels"]]
    lines = [
        "| class IoU (mean over seeds) | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for d, label in (("photo2labels", "photo→labels"), ("labels2photo", "labels→photo")):
        for v in variants:
            rs = [r for r in cg if r["variant"] == v]
            vals = [
                _mean_sd([r["per_class"][d][i]["iou"] for r in rs])[0] for i in range(len(names))
            ]
            lines.append(f"| {label}, {v} | " + " | ".join(f"{x:.3f}" for x in vals) + " |")
    return lines + [""]


def _gamma_table(cg: list[dict[str, Any]], variants: list[str]) -> list[str]:
    """The learned blend scalars gamma at the end of training (they start at gamma_init)."""
    rows = []
    for v in variants:
        rs = [r for r in cg if r["variant"] == v and r.get("gamma")]
        g = [x for r in rs for n in ("G_A", "G_B") for x in r["gamma"].get(n, [])]
        d = [x for r in rs for n in ("D_A", "D_B") for x in r["gamma"].get(n, [])]
        if not g and not d:
            continue
        fmt = lambda xs: (  # noqa: E731
            f"{min(xs):+.3f} .. {max(xs):+.3f} (mean of abs. values {statistics.fmean(map(abs, xs)):.3f})"
            if xs
            else "—"
        )
        rows.append(f"| {v} | {fmt(g)} | {fmt(d)} |")
    if not rows:
        return []
    head = [
        "| learned γ after training, all seeds | generators | discriminators |",
        "|---|---|---|",
    ]
    return head + rows + [""]


def backfill_gammas(out: Path, results: list[dict[str, Any]]) -> None:
    """Add the learned gammas to CycleGAN results written before they were recorded."""
    from spap.train.checkpoint import load_checkpoint

    for r in results:
        if r["kind"] != "cyclegan" or "gamma" in r:
            continue
        run_dir = out / "runs" / r["name"]
        if not run_dir.is_dir():
            continue
        models = load_checkpoint(run_dir)["task"]["models"]
        r["gamma"] = {
            net: [float(t) for k, t in sorted(sd.items()) if k.endswith("gamma")]
            for net, sd in models.items()
        }
        (out / "results" / f"{r['name']}.json").write_text(json.dumps(r, indent=1))


def summarise(results: list[dict[str, Any]], extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Markdown tables (mean ± sample std over seeds) and the same numbers as a dict."""
    lines: list[str] = []
    summary: dict[str, Any] = {"cyclegan": {}, "gan": {}}
    cg = [r for r in results if r["kind"] == "cyclegan"]
    if cg:
        order = list(CG_VARIANTS) + list(CG_ABLATION)
        variants = sorted({r["variant"] for r in cg}, key=lambda v: _order(v, order))
        lines += [
            "| CycleGAN variant | seeds | photo→labels per-pixel acc | per-class acc | class IoU "
            "| labels→photo FCN per-pixel acc | per-class acc | class IoU | train min/run |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for v in variants:
            rs = [r for r in cg if r["variant"] == v]
            cells = [_cell([r["scores"][d][m] for r in rs]) for d, m in CG_METRICS]
            t = statistics.fmean(r["train_seconds"] for r in rs) / 60
            lines.append(f"| {v} | {len(rs)} | " + " | ".join(cells) + f" | {t:.1f} |")
            summary["cyclegan"][v] = {
                f"{d}.{m}": dict(zip(("mean", "std"), _mean_sd([r["scores"][d][m] for r in rs])))
                for d, m in CG_METRICS
            }
            summary["cyclegan"][v]["seeds"] = sorted(r["seed"] for r in rs)
        if "real_photo" in extra:
            s = extra["real_photo"]
            lines.append(
                f"| *(real photos through the segmentation net: the FCN-score ceiling)* | | | | "
                f"| {s['pixel_acc']:.3f} | {s['class_acc']:.3f} | {s['class_iou']:.3f} | |"
            )
        lines.append("")
        lines += _per_class_table(cg, variants)
        lines += _gamma_table(cg, variants)
    gan = [r for r in results if r["kind"] == "gan"]
    if gan:
        variants = sorted({r["variant"] for r in gan}, key=lambda v: _order(v, list(GAN_VARIANTS)))
        lines += [
            "| GAN variant | seeds | FID (segnet features) ↓ | per seed | train min/run |",
            "|---|---|---|---|---|",
        ]
        for v in variants:
            rs = sorted((r for r in gan if r["variant"] == v), key=lambda r: r["seed"])
            fids = [r["scores"]["fid"] for r in rs]
            t = statistics.fmean(r["train_seconds"] for r in rs) / 60
            per = ", ".join(f"{f:.2f}" for f in fids)
            lines.append(f"| {v} | {len(rs)} | {_cell(fids, 2)} | {per} | {t:.1f} |")
            m, s = _mean_sd(fids)
            summary["gan"][v] = {"fid": {"mean": m, "std": s}, "seeds": [r["seed"] for r in rs]}
        if "fid_real" in extra:
            lines.append(
                f"| *(real test photos vs training photos, {extra['fid_real_n']} images)* | "
                f"| {extra['fid_real']:.2f} | | |"
            )
        lines.append("")
    return "\n".join(lines), summary


# ----------------------------------------------------------------------------- main


def prepare(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Scenes and the segmentation net, shared by every run (made once)."""
    import torch

    from spap.data.scenes import write_scenes
    from spap.eval.fcn import evaluate_segnet
    from spap.models.segnet import load_segnet
    from spap.train.segnet import train_segnet

    torch.set_num_threads(args.threads)
    data = out / "data"
    meta_file = out / "prepared.json"
    if meta_file.is_file():
        return json.loads(meta_file.read_text())
    t0 = time.perf_counter()
    n = args.n_train + args.n_test
    write_scenes(data, n=n, size=args.size, seed=args.data_seed, test_fraction=args.n_test / n)
    t_data = time.perf_counter() - t0
    t0 = time.perf_counter()
    seg = train_segnet(
        data,
        out / "segnet",
        palette="scenes",
        size=args.size,
        steps=args.seg_steps,
        batch_size=16,
        device="cpu",
        seed=0,
        eval_phase="test",
        score=evaluate_segnet,
        log_every=max(1, args.seg_steps // 5),
    )
    _, seg_cfg = load_segnet(seg)
    meta = {
        "data": str(data),
        "segnet": str(seg),
        "data_seconds": t_data,
        "segnet_seconds": time.perf_counter() - t0,
        "real_photo": seg_cfg.get("test_scores"),
    }
    meta_file.write_text(json.dumps(meta, indent=1))
    return meta


def fid_of_real(out: Path, meta: dict[str, Any], size: int) -> float:
    """FID of the real test photos against the training photos (the same feature net)."""
    from spap.eval.fidelity import compute_fid

    return compute_fid(
        str(Path(meta["data"]) / "trainB"),
        str(Path(meta["data"]) / "testB"),
        feature_extractor="spap-segnet",
        weights_path=meta["segnet"],
        size=size,
        batch_size=50,
        device="cpu",
        cache_dir=str(out / "fid_cache"),
    )


def run_cost(args: argparse.Namespace, common: dict[str, Any]) -> int:
    """Median CPU time of ``--cost-repeat`` iterations per variant, one process at a time."""
    specs = []
    for v, model in {**CG_VARIANTS, **CG_ABLATION}.items():
        spec = dict(common, kind="cyclegan", variant=v, model=model, seed=0, steps=args.cg_steps)
        specs.append(dict(spec, n_train=args.n_train, width=args.cg_width))
    for v in GAN_VARIANTS:
        spec = dict(common, kind="gan", variant=v, seed=0, steps=args.gan_steps)
        specs.append(dict(spec, width=args.gan_width, batch_size=args.gan_batch))
    lines = [
        "| system | variant | CPU s / iteration (median) | relative to baseline | parameters |",
        "|---|---|---|---|---|",
    ]
    base: dict[str, float] = {}
    with ProcessPoolExecutor(max_workers=1) as pool:
        for spec in specs:
            spec["repeat"] = args.cost_repeat
            r = pool.submit(cost_job, spec).result()
            t = r["cpu_seconds_per_iteration"]
            base.setdefault(r["kind"], t)
            params = ", ".join(f"{k} {v / 1e3:.0f} k" for k, v in r["params"].items())
            lines.append(
                f"| {r['kind']} | {r['variant']} | {t:.3f} | {t / base[r['kind']]:.2f} | {params} |"
            )
    text = (
        f"Command: `python experiments/study.py {' '.join(sys.argv[1:])}`\n\n"
        f"{args.threads} thread(s); load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores.\n\n" + "\n".join(lines) + "\n"
    )
    Path(args.out, "cost.md").write_text(text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="runs/study", help="study folder")
    p.add_argument(
        "--part",
        choices=("all", "cyclegan", "gan", "ablation", "cost"),
        default="all",
        help="all = CycleGAN + GAN comparisons; ablation = SPAP's open choices (CycleGAN); "
        "cost = CPU time per iteration of every variant (no training)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=500, help="training scenes")
    p.add_argument("--n-test", type=int, default=100, help="test scenes")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seg-steps", type=int, default=600, help="segmentation net steps (batch 16)")
    p.add_argument("--cg-steps", type=int, default=1000, help="CycleGAN iterations (batch 1)")
    p.add_argument("--cg-width", type=int, default=16, help="CycleGAN ngf = ndf")
    p.add_argument("--cg-variants", nargs="+", default=None, help="subset of the variants")
    p.add_argument("--gan-steps", type=int, default=500, help="GAN generator updates")
    p.add_argument("--gan-width", type=int, default=16, help="GAN g_ch = d_ch")
    p.add_argument("--gan-batch", type=int, default=8)
    p.add_argument("--gan-variants", nargs="+", default=["baseline", "sagan", "spap_c2f"])
    p.add_argument("--fid-samples", type=int, default=1000, help="generated images per FID")
    p.add_argument(
        "--tag",
        default="",
        help="label for runs with other settings (e.g. more iterations), kept apart from the "
        "untagged runs: run names get _TAG, table rows 'variant (TAG)'",
    )
    p.add_argument("--cost-repeat", type=int, default=5, help="iterations timed by --part cost")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TQDM_DISABLE", "1")
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    meta = prepare(args, out)
    log.info("data and segmentation net ready (%s)", meta.get("real_photo"))

    common = {
        "data": meta["data"],
        "segnet": meta["segnet"],
        "size": args.size,
        "threads": args.threads,
        "cache": str(out / "fid_cache"),
        "tag": args.tag,
    }
    if args.part == "cost":
        return run_cost(args, common)
    jobs: list[tuple[Any, dict[str, Any]]] = []
    if args.part in ("all", "cyclegan", "ablation"):
        table = CG_ABLATION if args.part == "ablation" else CG_VARIANTS
        names = args.cg_variants or list(table)
        for v in names:
            model = {**CG_VARIANTS, **CG_ABLATION}[v]
            for s in args.seeds:
                name = f"cyclegan_{v}{'_' + args.tag if args.tag else ''}_s{s}"
                spec = dict(common, name=name, variant=v, seed=s, model=model)
                spec.update(steps=args.cg_steps, n_train=args.n_train, width=args.cg_width)
                spec["run_dir"] = str(out / "runs" / name)
                jobs.append((cyclegan_job, spec))
    if args.part in ("all", "gan"):
        for v in args.gan_variants:
            for s in args.seeds:
                name = f"gan_{v}{'_' + args.tag if args.tag else ''}_s{s}"
                spec = dict(common, name=name, variant=v, seed=s, steps=args.gan_steps)
                spec.update(width=args.gan_width, batch_size=args.gan_batch)
                spec.update(fid_samples=args.fid_samples, run_dir=str(out / "runs" / name))
                jobs.append((gan_job, spec))

    todo = [(fn, s) for fn, s in jobs if not (out / "results" / f"{s['name']}.json").is_file()]
    log.info("%d runs, %d to do, %d at a time", len(jobs), len(todo), args.jobs)
    failed = 0
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(fn, spec): spec["name"] for fn, spec in todo}
        for fut in as_completed(futures):
            name = futures[fut]
            try:
                res = fut.result()
            except Exception as exc:  # report and go on with the other runs
                failed += 1
                log.error("%s failed: %s", name, exc)
                continue
            (out / "results" / f"{name}.json").write_text(json.dumps(res, indent=1))
            log.info(
                "%s done in %.1f min: %s",
                name,
                (res["train_seconds"] + res["eval_seconds"]) / 60,
                json.dumps(res["scores"]),
            )

    results = [
        json.loads((out / "results" / f"{s['name']}.json").read_text())
        for _, s in jobs
        if (out / "results" / f"{s['name']}.json").is_file()
    ]
    backfill_gammas(out, results)
    extra: dict[str, Any] = {}
    if meta.get("real_photo") and any(r["kind"] == "cyclegan" for r in results):
        extra["real_photo"] = meta["real_photo"]
    if any(r["kind"] == "gan" for r in results):
        extra["fid_real"] = fid_of_real(out, meta, args.size)
        extra["fid_real_n"] = args.n_test
    table, summary = summarise(results, extra)
    stem = "ablation" if args.part == "ablation" else "study"
    if args.tag:
        stem += f"_{args.tag}"
    command = "python experiments/study.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (
        f"Command: `{command}`\n\nWall-clock time of this invocation: "
        f"{(time.perf_counter() - t_start) / 60:.1f} min ({args.jobs} job(s) x "
        f"{args.threads} thread(s)); load average at the end {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores.\n\n"
    )
    (out / f"{stem}.md").write_text(header + table + "\n")
    (out / f"{stem}.json").write_text(
        json.dumps({"args": vars(args), "meta": meta, "extra": extra, "summary": summary}, indent=1)
    )
    print(header + table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
