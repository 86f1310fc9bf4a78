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

Part 2 (``--part cyclegan2``, [ours]): the CycleGAN at 64 px, long enough for the blend
scalars gamma to grow (6000 iterations, width 8, seeds 0-4): baseline, SAGAN, SPAP
coarse-to-fine, SPAP c2f with ``train.gamma_lr_mult`` (10), and a compute-matched baseline
whose iterations make its CPU time equal spap_c2f's (measured in this study's own baseline
and spap_c2f runs, then fixed in ``OUT/cyclegan2_matched.json``). Each run evaluates itself on
the validation split during training and is scored on the test split (and the validation
split); gamma curves come from its TensorBoard scalars. Differences to the baselines with
Welch 95 % intervals, Holm-adjusted p-values and the minimum detectable effect at 80 % power;
``OUT/cyclegan2.md`` / ``.json`` and ``OUT/cyclegan2_gamma.png``. ``--hours H`` stops
training after H hours (runs in progress checkpoint); repeating the command resumes.
``--part cyclegan2-pilot`` measured the costs and gamma trajectories behind its defaults,
on the validation split only.

    python experiments/study.py --out runs/study                       # the main study
    python experiments/study.py --out runs/study --part ablation       # SPAP's open choices
    python experiments/study.py --out runs/pilot --seeds 0 --cg-steps 50 --gan-steps 20 \\
        --cg-variants baseline spap_c2f --gan-variants baseline     # a quick smoke run
    python experiments/study.py --out runs/cyclegan2 --part cyclegan2 --jobs 2 --hours 1.75
        # part 2: repeat until it reports 25 of 25 runs done (about 5.5 CPU hours)
    python experiments/study.py --part cyclegan2-pilot --out runs/cg_pilot --seg-steps 0 \\
        --cg-steps 5000 --pilot-widths 8 12 16 --cost-repeat 20 --jobs 0   # its pilot
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from spap.files import atomic_write
from studylib import holm, mde, run_jobs, welch, write_json

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

# Part 2 (64 px, long enough for gamma to grow) [ours]: the placement of
# configs/cyclegan/scenes_spap.yaml: G after the residual trunk (16x16 maps, 4*ngf channels;
# SPAP's default rates 0, 1, 2, 4, 8), D after feature layer 2 (8x8 maps, 4*ndf channels;
# rates 0, 1, 2, 4: a dilation of 8 would see only padding there).


def _cg64(kind: str, **spap: Any) -> dict[str, Any]:
    if kind == "none":
        return {"attention": "none"}
    return {
        "attention": kind,
        "g_attention_at": ["trunk_end"],
        "d_attention_at": [2],
        "g_attention_options": {"rates": [0, 1, 2, 4, 8], **spap} if kind == "spap" else {},
        "d_attention_options": {"rates": [0, 1, 2, 4], **spap} if kind == "spap" else {},
    }


CG2_VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": _cg64("none"),
    "sagan": _cg64("sagan"),
    "spap_c2f": _cg64("spap", order="coarse_to_fine"),
    "spap_c2f_glr": _cg64("spap", order="coarse_to_fine"),  # + train.gamma_lr_mult
    "baseline_cm": _cg64("none"),  # more iterations: the CPU time of spap_c2f, measured
}
#: The comparisons of part 2 (first - second), one Holm family per metric group.
CG2_COMPARISONS = [
    ("sagan", "baseline"),
    ("spap_c2f", "baseline"),
    ("spap_c2f_glr", "baseline"),
    ("baseline_cm", "baseline"),
    ("spap_c2f", "baseline_cm"),
    ("spap_c2f_glr", "baseline_cm"),
]
#: Part 2's defaults, used where the command line leaves the option out (chosen by
#: ``--part cyclegan2-pilot`` on the validation split; see docs/results.md).
CG2_DEFAULTS: dict[str, Any] = {
    "size": 64,
    "cg_width": 8,
    "cg_steps": 6000,
    "seeds": [0, 1, 2, 3, 4],
    "gamma_lr_mult": 10.0,
}
#: The scene classes that differ from a look-alike only in texture scale.
TEXTURE_CLASSES = ("road", "sidewalk", "vegetation", "terrain")
ALPHA, POWER = 0.05, 0.8

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


class _TimedEvaluator:
    """An evaluator that counts the CPU seconds (process time) the one it wraps spends."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.cpu = inner, 0.0

    def evaluate(self, task: Any, step: int) -> dict[str, float]:
        t0 = time.process_time()
        try:
            return self.inner.evaluate(task, step)
        finally:
            self.cpu += time.process_time() - t0


def _train(
    task_cls: Any,
    cfg: Any,
    run_dir: Path,
    evaluator: Any = None,
    should_stop: Any = None,
) -> float:
    """Train (or resume) a run; returns the wall-clock seconds spent now.

    Every piece of training appends ``{"from", "to", "cpu", "eval_cpu", "wall"}`` to
    ``run_dir/cpu.json``: the iterations it ran (checkpoint to checkpoint) and the process
    CPU seconds it spent training (``cpu``, without ``evaluator``'s share ``eval_cpu``).
    """
    from spap.train.checkpoint import list_checkpoints, load_checkpoint
    from spap.train.loop import run

    ckpts = list_checkpoints(run_dir)
    start = load_checkpoint(run_dir)["step"] if ckpts else 0
    if start >= cfg.run.steps:
        return 0.0
    timed = _TimedEvaluator(evaluator) if evaluator is not None else None
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        run(task_cls, cfg, run_dir, resume=bool(ckpts), evaluator=timed, should_stop=should_stop)
    finally:  # also after SIGTERM (the loop checkpoints first): the piece counts
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        end = load_checkpoint(run_dir)["step"] if list_checkpoints(run_dir) else start
        eval_cpu = timed.cpu if timed is not None else 0.0
        pieces = _cpu_pieces(run_dir)
        pieces.append(
            {"from": start, "to": end, "cpu": cpu - eval_cpu, "eval_cpu": eval_cpu, "wall": wall}
        )
        write_json(run_dir / "cpu.json", pieces)
    return wall


def _cpu_pieces(run_dir: Path) -> list[dict[str, float]]:
    """The pieces of training :func:`_train` recorded for ``run_dir`` (``[]`` if none)."""
    path = Path(run_dir) / "cpu.json"
    return json.loads(path.read_text()) if path.is_file() else []


def tb_scalars(run_dir: str | Path, prefixes: tuple[str, ...]) -> dict[str, list[list[float]]]:
    """``{tag: [[step, value], ...]}`` of a run's TensorBoard scalars whose tag starts with one
    of ``prefixes`` (``RUN/tb``; a step logged again by a resumed run keeps its last value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = Path(run_dir) / "tb"
    if not tb.is_dir():
        return {}
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in sorted(acc.Tags()["scalars"]):
        if tag.startswith(prefixes):
            by_step = {int(e.step): float(e.value) for e in acc.Scalars(tag)}
            out[tag] = [[s, by_step[s]] for s in sorted(by_step)]
    return out


def cyclegan_config(spec: dict[str, Any]) -> Any:
    """The CycleGAN config of a run: configs/cyclegan/scenes.yaml resized, the variant's
    model keys, a 2-phase learning rate (constant, then the reference's linear decay)."""
    from spap.config import from_dict, merge, read_yaml
    from spap.systems.cyclegan import CycleGANConfig, apply_size

    steps, n_train, size = spec["steps"], spec["n_train"], spec["size"]
    data = read_yaml("cyclegan/scenes")
    apply_size(data, size)
    # the schedule of ``schedule_steps`` iterations (default: all), of which ``steps`` run
    epochs = max(1, math.ceil(spec.get("schedule_steps", steps) / n_train))
    n_epochs = max(1, (epochs + 1) // 2)
    model = {"ngf": spec["width"], "ndf": spec["width"], **spec["model"]}
    run = {
        "seed": spec["seed"],
        "device": "cpu",
        "steps": steps,
        "num_workers": 0,
        "log_every": spec.get("log_every", 25),
        "sample_every": steps,
        "checkpoint_every": spec.get("checkpoint_every", max(1, steps // 4)),
        "keep_last": 1,
    }
    if spec.get("eval_every"):  # in-training evaluation on the validation split
        run.update(
            eval_every=spec["eval_every"],
            eval_metrics=["cycle", "fcn"] if spec.get("segnet") else ["cycle"],
            eval_segnet=spec.get("segnet"),
        )
    train = {"n_epochs": n_epochs, "n_epochs_decay": epochs - n_epochs, **spec.get("train", {})}
    return from_dict(
        CycleGANConfig,
        merge(
            data,
            {
                "data": {"root": spec["data"], "layout": "unaligned"},
                "model": model,
                "run": run,
                "train": train,
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
    from spap.train.checkpoint import load_checkpoint
    from spap.train.cyclegan import CycleGANTask

    steps, size = spec["steps"], spec["size"]
    deadline = spec.get("deadline")  # time.time() after which no training starts (--hours)
    if deadline is not None and time.time() >= deadline:
        raise RuntimeError("not started: the time budget (--hours) is spent; run again")
    cfg = cyclegan_config(spec)
    model = to_dict(cfg.model)
    run_dir = Path(spec["run_dir"])
    evaluator = None
    if spec.get("eval_every"):  # on the validation split, with the FCN-score given a segnet
        from spap.eval.intraining import feature_metrics
        from spap.train.evaluation import ValidationEvaluator

        evaluator = ValidationEvaluator(cfg, "cyclegan", feature_metrics(cfg, run_dir))
    stop = (lambda _: time.time() >= deadline) if deadline is not None else None
    seconds = _train(CycleGANTask, cfg, run_dir, evaluator, stop)
    reached = load_checkpoint(run_dir)["step"]
    if reached < steps:
        raise RuntimeError(
            f"stopped at iteration {reached} of {steps} (--hours); run again to resume"
        )
    t0 = time.perf_counter()
    translator = Translator.from_checkpoint(run_dir, device="cpu")
    segnet = load_segnet(spec["segnet"], "cpu") if spec.get("segnet") else None
    directions = ("photo2labels", "labels2photo") if segnet else ("photo2labels",)
    by_phase = {}
    for phase in spec.get("phases", ["test"]):  # the first is the one of "scores"
        scores = fcn_score(
            translator,
            spec["data"],
            segnet,
            direction="both" if segnet else "photo2labels",
            size=size,
            palette="scenes",
            phase=phase,
            device="cpu",
            include_real=False,
        )
        by_phase[phase] = {
            "scores": {
                d: {m: scores[d][m] for m in ("pixel_acc", "class_acc", "class_iou")}
                for d in directions
            },
            "per_class": {d: scores[d]["per_class"] for d in directions},
        }
    params = {n: sum(p.numel() for p in g.parameters()) for n, g in translator.generators.items()}
    models = load_checkpoint(run_dir)["task"]["models"]
    gammas = {  # the learned blend scalars of the attention units (0 at the start)
        net: [float(t) for k, t in sorted(sd.items()) if k.endswith("gamma")]
        for net, sd in models.items()
    }
    pieces = _cpu_pieces(run_dir)
    ran = sum(p["to"] - p["from"] for p in pieces)
    cpu = sum(p["cpu"] for p in pieces)
    first = next(iter(by_phase.values()))
    out = {
        "name": spec["name"],
        "kind": "cyclegan",
        "variant": spec["variant"] + (f" ({spec['tag']})" if spec.get("tag") else ""),
        "seed": spec["seed"],
        "steps": steps,
        "train_seconds": sum(p["wall"] for p in pieces) if pieces else seconds,
        "cpu_seconds": cpu,
        "cpu_seconds_per_iteration": cpu / ran if ran else None,
        "eval_cpu_seconds": sum(p["eval_cpu"] for p in pieces),
        "eval_seconds": time.perf_counter() - t0,
        "generator_params": params,
        "gamma": gammas,
        "model": model,
        "train": spec.get("train", {}),
        "scores": first["scores"],
        "per_class": first["per_class"],
        "by_phase": by_phase,
    }
    if spec.get("curves"):  # gamma and validation curves from the run's TensorBoard scalars
        curves = tb_scalars(run_dir, ("attention/", "eval/"))
        out["gamma_curve"] = {k: v for k, v in curves.items() if k.endswith("/gamma")}
        out["eval_curve"] = {k: v for k, v in curves.items() if k.startswith("eval/")}
    return out


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


# ----------------------------------------------------------------------------- part 2

CG2_DIRECTIONS = (("photo2labels", "photo→labels"), ("labels2photo", "labels→photo"))


def _fmt(x: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _pval(p: float) -> str:
    return "n/a" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _metric(r: dict[str, Any], direction: str, metric: str) -> float:
    """``class_iou`` (the mean over classes) or one class's IoU of a run's test scores."""
    if metric == "class_iou":
        return r["scores"][direction]["class_iou"]
    return next(c["iou"] for c in r["per_class"][direction] if c["name"] == metric)


def curve_at(curve: list[list[float]], step: float) -> float | None:
    """The value of ``[[step, value], ...]`` last logged at or before ``step``."""
    vals = [v for s, v in curve if s <= step]
    return vals[-1] if vals else None


def compare2(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Welch differences (first - second) of :data:`CG2_COMPARISONS` with 95 % intervals.

    Two Holm families: ``mIoU`` (class IoU of both directions: 12 tests when every variant
    has runs) and ``texture`` (the IoU of each of :data:`TEXTURE_CLASSES` in both
    directions: 48 tests). ``mde``: the minimum detectable effect at 80 % power at the
    Bonferroni level of its family (the level of Holm's first step), from the measured
    seed spread.
    """
    by = {v: [r for r in results if r["variant"] == v] for v in CG2_VARIANTS}
    dirs = [d for d, _ in CG2_DIRECTIONS if all(d in r["scores"] for r in results)]
    families = {
        "mIoU": [(d, "class_iou") for d in dirs],
        "texture": [(d, c) for d in dirs for c in TEXTURE_CLASSES],
    }
    tests: list[dict[str, Any]] = []
    for family, metrics in families.items():
        rows = []
        for a, b in CG2_COMPARISONS:
            if len(by[a]) < 2 or len(by[b]) < 2:
                continue
            for d, m in metrics:
                t = welch([_metric(r, d, m) for r in by[a]], [_metric(r, d, m) for r in by[b]])
                rows.append({**t, "family": family, "a": a, "b": b, "direction": d, "metric": m})
        for t, p in zip(rows, holm([t["p"] for t in rows])):
            t.update(p_holm=p, family_size=len(rows))
            t["mde"] = mde(t["se"], t["df"], ALPHA / len(rows), POWER)
        tests += rows
    return tests


def _unit_curves(r: dict[str, Any], nets: tuple[str, ...]) -> list[list[list[float]]]:
    return [c for tag, c in r.get("gamma_curve", {}).items() if tag.split("/")[1] in nets]


def gamma_curve_table(results: list[dict[str, Any]], variants: list[str]) -> list[str]:
    """Mean |γ| (and the largest |γ|) over seeds and units, at eighths of the iterations."""
    lines = [
        "| γ during training: mean \\|γ\\| (max \\|γ\\|) | units | "
        + " | ".join(f"{k}/8" for k in range(1, 9))
        + " |",
        "|---|---|" + "---|" * 8,
    ]
    found = False
    for v in variants:
        rs = [r for r in results if r["variant"] == v]
        for label, nets in (("generators", ("G_A", "G_B")), ("discriminators", ("D_A", "D_B"))):
            cells = []
            for k in range(1, 9):
                vals = [
                    abs(x)
                    for r in rs
                    for c in _unit_curves(r, nets)
                    if (x := curve_at(c, r["steps"] * k / 8)) is not None
                ]
                cells.append(f"{statistics.fmean(vals):.3f} ({max(vals):.3f})" if vals else "—")
            if any(c != "—" for c in cells):
                found = True
                lines.append(f"| {v} | {label} | " + " | ".join(cells) + " |")
    return lines + [""] if found else []


def eval_curve_table(results: list[dict[str, Any]], variants: list[str]) -> list[str]:
    """In-training validation scores (``eval/fcn_AtoB``: labels→photo per-pixel FCN accuracy
    on the validation split) at 1/4, 1/2, 3/4 and all of each run's iterations."""
    key = "eval/fcn_AtoB"
    rows = []
    for v in variants:
        rs = [r for r in results if r["variant"] == v and key in r.get("eval_curve", {})]
        if rs:
            cells = [
                _cell([curve_at(r["eval_curve"][key], r["steps"] * k / 4) for r in rs])
                for k in range(1, 5)
            ]
            rows.append(f"| {v} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    head = [
        "| validation labels→photo FCN per-pixel acc (in training) | 1/4 | 1/2 | 3/4 | all "
        "of the iterations |",
        "|---|---|---|---|---|",
    ]
    return head + rows + [""]


def gamma_plot(results: list[dict[str, Any]], path: Path) -> Path | None:
    """A PNG of every unit's γ against the iteration (one line per run and unit), generators
    left, discriminators right, one colour per variant."""
    from PIL import Image, ImageDraw

    colours = {"sagan": (110, 110, 110), "spap_c2f": (31, 119, 180), "spap_c2f_glr": (214, 39, 40)}
    panels = (("generators", ("G_A", "G_B")), ("discriminators", ("D_A", "D_B")))
    lines = {
        label: [
            (colours.get(r["variant"].split(" (")[0], (0, 0, 0)), c)
            for r in results
            for c in _unit_curves(r, nets)
        ]
        for label, nets in panels
    }
    values = [abs(v) for ls in lines.values() for _, c in ls for _, v in c]
    if not values:
        return None
    top = max(values)
    scale = 10 ** math.floor(math.log10(top)) if top > 0 else 1.0
    ymax = math.ceil(top / scale) * scale if top > 0 else 1.0
    xmax = max(s for ls in lines.values() for _, c in ls for s, _ in c)
    w, h, m = 960, 400, 56
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    pw = (w - 3 * m) // 2
    for i, (label, _) in enumerate(panels):
        x0, y0, y1 = m + i * (pw + m), 40, h - 40
        to_xy = lambda s, v, x0=x0, y0=y0, y1=y1: (  # noqa: E731
            x0 + pw * s / xmax,
            y1 - (y1 - y0) * (v + ymax) / (2 * ymax),
        )
        draw.rectangle([x0, y0, x0 + pw, y1], outline=(0, 0, 0))
        for f in (-1.0, -0.5, 0.0, 0.5, 1.0):
            y = to_xy(0, f * ymax)[1]
            draw.line([x0, y, x0 + pw, y], fill=(225, 225, 225) if f else (160, 160, 160))
            draw.text((x0 - 40, y - 6), f"{f * ymax:g}", fill=(0, 0, 0))
        for f in (0.0, 0.5, 1.0):
            x = to_xy(f * xmax, 0)[0]
            draw.text((x - 14, y1 + 6), f"{f * xmax:.0f}", fill=(0, 0, 0))
        draw.text(
            (x0 + 4, y0 - 16), f"gamma of the units in the {label} vs. iteration", fill=(0, 0, 0)
        )
        for colour, c in lines[label]:
            if len(c) > 1:
                draw.line([to_xy(s, v) for s, v in c], fill=colour, width=1)
    x = m
    for name, colour in colours.items():
        draw.rectangle([x, h - 16, x + 10, h - 6], fill=colour)
        draw.text((x + 14, h - 18), name, fill=(0, 0, 0))
        x += 120
    return atomic_write(path, lambda f: img.save(f, format="png"), fsync=False)


def summarise2(results: list[dict[str, Any]], extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Part 2's tables: scores, per-class IoU, differences with intervals, Holm-adjusted p and
    minimum detectable effects, γ at the end and during training, validation curves."""
    variants = [v for v in CG2_VARIANTS if any(r["variant"] == v for r in results)]
    lines = [
        "| CycleGAN variant | seeds | iterations | CPU s / iteration | CPU min / run "
        "| photo→labels per-pixel acc | per-class acc | class IoU | labels→photo FCN "
        "per-pixel acc | per-class acc | class IoU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {"variants": {}, "tests": compare2(results), **extra}
    for v in variants:
        rs = [r for r in results if r["variant"] == v]
        cells = [
            _cell([r["scores"][d][m] for r in rs]) if d in rs[0]["scores"] else "n/a"
            for d, m in CG_METRICS
        ]
        cpi = [r["cpu_seconds_per_iteration"] for r in rs]
        steps = sorted({r["steps"] for r in rs})
        lines.append(
            f"| {v} | {len(rs)} | {', '.join(map(str, steps))} | {_cell(cpi, 4)} | "
            f"{_cell([r['cpu_seconds'] / 60 for r in rs], 1)} | " + " | ".join(cells) + " |"
        )
        summary["variants"][v] = {
            "seeds": sorted(r["seed"] for r in rs),
            "steps": steps,
            "cpu_seconds_per_iteration": dict(zip(("mean", "std"), _mean_sd(cpi))),
            **{
                f"{d}.{m}": dict(zip(("mean", "std"), _mean_sd([r["scores"][d][m] for r in rs])))
                for d, m in CG_METRICS
                if d in rs[0]["scores"]
            },
        }
    if extra.get("real_photo"):
        s = extra["real_photo"]
        lines.append(
            f"| *(real photos through the segmentation net: the FCN-score ceiling)* | | | | "
            f"| | | | {s['pixel_acc']:.3f} | {s['class_acc']:.3f} | {s['class_iou']:.3f} |"
        )
    lines.append("")
    if results and all("labels2photo" in r["per_class"] for r in results):
        lines += _per_class_table(results, variants)
    tests = summary["tests"]
    main = [t for t in tests if t["family"] == "mIoU"]
    if main:
        lines += [
            "| difference | class IoU of | difference [95 % CI] | Welch p | Holm p | "
            "min. detectable effect (80 % power, Bonferroni level) |",
            "|---|---|---|---|---|---|",
        ]
        for t in main:
            lines.append(
                f"| {t['a']} − {t['b']} | {dict(CG2_DIRECTIONS)[t['direction']]} | "
                f"{_fmt(t['diff'], sign=True)} [{_fmt(t['ci_low'], sign=True)}, "
                f"{_fmt(t['ci_high'], sign=True)}] | {_pval(t['p'])} | {_pval(t['p_holm'])} | "
                f"±{_fmt(t['mde'])} (α = 0.05/{t['family_size']}) |"
            )
        lines.append("")
    tex = [t for t in tests if t["family"] == "texture"]
    if tex:
        lines += [
            f"Texture-scale classes: IoU difference [95 % CI], Holm p over the {len(tex)} "
            f"tests, min. detectable effect at α = 0.05/{len(tex)}:",
            "",
            "| difference | direction | " + " | ".join(TEXTURE_CLASSES) + " |",
            "|---|---|" + "---|" * len(TEXTURE_CLASSES),
        ]
        for a, b in CG2_COMPARISONS:
            for d, label in CG2_DIRECTIONS:
                row = {t["metric"]: t for t in tex if (t["a"], t["b"], t["direction"]) == (a, b, d)}
                if row:
                    cells = [
                        f"{_fmt(t['diff'], sign=True)} [{_fmt(t['ci_low'], sign=True)}, "
                        f"{_fmt(t['ci_high'], sign=True)}] p {_pval(t['p_holm'])}, "
                        f"±{_fmt(t['mde'], 2)}"
                        for t in (row[c] for c in TEXTURE_CLASSES)
                    ]
                    lines.append(f"| {a} − {b} | {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _gamma_table(results, variants)
    lines += gamma_curve_table(results, variants)
    lines += eval_curve_table(results, variants)
    return "\n".join(lines), summary


def matched_steps(out: Path, results: list[dict[str, Any]], args: argparse.Namespace) -> int | None:
    """The iterations of ``baseline_cm``: ``--cg-steps`` x (CPU s / iteration of spap_c2f) /
    (CPU s / iteration of baseline), both measured in this study's finished runs (all seeds),
    fixed in ``OUT/cyclegan2_matched.json`` the first time (so a resumed study keeps them).
    None until those runs are done."""
    path = out / f"cyclegan2{'_' + args.tag if args.tag else ''}_matched.json"
    if path.is_file():
        return int(json.loads(path.read_text())["steps"])
    cpi = {}
    for v in ("baseline", "spap_c2f"):
        rs = [r for r in results if r["variant"] == v]
        if len(rs) < len(args.seeds):
            return None
        cpi[v] = statistics.fmean(r["cpu_seconds_per_iteration"] for r in rs)
    ratio = cpi["spap_c2f"] / cpi["baseline"]
    steps = round(args.cg_steps * ratio)
    write_json(path, {"steps": steps, "ratio": ratio, "cpu_seconds_per_iteration": cpi})
    log.info("compute-matched baseline: %d iterations (CPU ratio %.3f)", steps, ratio)
    return steps


def _cg2_spec(
    args: argparse.Namespace, common: dict[str, Any], out: Path, name: str, variant: str, **kw: Any
) -> dict[str, Any]:
    spec = dict(common, name=name, variant=variant, model=CG2_VARIANTS[variant])
    spec["tag"] = ""  # the tag names the runs and the output files, not the table rows
    spec.update(n_train=args.n_train, width=args.cg_width, run_dir=str(out / "runs" / name))
    spec.update(log_every=50, curves=True, **kw)
    spec.setdefault("checkpoint_every", max(1, spec["steps"] // 8))
    if args.eval_points:
        spec.setdefault("eval_every", max(1, spec["steps"] // args.eval_points))
    if variant == "spap_c2f_glr":
        spec["train"] = {"gamma_lr_mult": args.gamma_lr_mult}
    return spec


def run_cyclegan2(
    args: argparse.Namespace, out: Path, meta: dict[str, Any], common: dict[str, Any]
) -> tuple[list[dict[str, Any]], int, int]:
    """Part 2: every variant of :data:`CG2_VARIANTS` x every seed, scored on the test split
    (and the validation split). First baseline and spap_c2f, whose measured CPU time sets the
    iterations of the compute-matched baseline; then the others. Returns the results, the
    number of failed or unfinished runs, and the number of runs in the study."""
    if not (Path(meta["data"]) / "valA").is_dir():
        raise SystemExit(f"{meta['data']} has no validation split; use a new --out folder")
    n = args.cg_steps
    failed = 0

    def jobs_of(variants: tuple[str, ...], steps: dict[str, int]) -> list[tuple[Any, dict]]:
        jobs = []
        for s in args.seeds:  # seed by seed: a study cut short has every variant equally often
            for v in variants:
                name = f"cg2_{v}{'_' + args.tag if args.tag else ''}_s{s}"
                spec = _cg2_spec(
                    args,
                    common,
                    out,
                    name,
                    v,
                    seed=s,
                    steps=steps.get(v, n),
                    phases=["test", "val"],
                )
                jobs.append((cyclegan_job, spec))
        return jobs

    first = jobs_of(("baseline", "spap_c2f"), {})
    results, f = run_jobs(out, first, args.jobs)
    failed += f
    cm = matched_steps(out, results, args)
    rest = jobs_of(
        ("sagan", "spap_c2f_glr") + (("baseline_cm",) if cm else ()), {"baseline_cm": cm or 0}
    )
    more, f = run_jobs(out, rest, args.jobs)
    failed += f
    total = len(args.seeds) * len(CG2_VARIANTS)
    return results + more, failed + (0 if cm else len(args.seeds)), total


def run_cyclegan2_pilot(
    args: argparse.Namespace, out: Path, meta: dict[str, Any], common: dict[str, Any]
) -> tuple[str, dict[str, Any], int]:
    """The pilot of part 2, in this process: the CPU time per iteration of every variant at
    each ``--pilot-widths`` (median of ``--cost-repeat`` iterations on a fixed batch), and
    ``spap_c2f`` with each ``--pilot-mults`` multiplier of γ's learning rate for the first
    ``--pilot-steps`` iterations of the ``--cg-steps`` schedule (seed ``--pilot-seed``),
    scored on the validation split only. Returns the text, the numbers, the failures."""
    cost_file = out / "cyclegan2_pilot_cost.json"
    widths = args.pilot_widths or [args.cg_width]
    costs = json.loads(cost_file.read_text()) if cost_file.is_file() else []
    for w in widths:
        for v in ("baseline", "sagan", "spap_c2f", "spap_c2f_glr"):
            if any(c["width"] == w and c["variant"] == v for c in costs):
                continue
            spec = dict(common, kind="cyclegan", variant=v, model=CG2_VARIANTS[v], seed=0)
            spec.update(steps=args.cg_steps, n_train=args.n_train, width=w)
            spec.update(repeat=args.cost_repeat)
            if v == "spap_c2f_glr":
                spec["train"] = {"gamma_lr_mult": args.gamma_lr_mult}
            costs.append({**cost_job(spec), "width": w})
            write_json(cost_file, costs)
    jobs = []
    for m in args.pilot_mults:
        name = f"pilot_spap_c2f_m{m:g}_n{args.pilot_steps}_s{args.pilot_seed}"
        spec = _cg2_spec(
            args, common, out, name, "spap_c2f", seed=args.pilot_seed, steps=args.pilot_steps,
            schedule_steps=args.cg_steps, phases=["val"], train={"gamma_lr_mult": m},
        )  # fmt: skip
        jobs.append((cyclegan_job, spec))
    if args.pilot_timing_steps:  # the other variants' CPU time in a run (no evaluation)
        n = args.pilot_timing_steps
        for v in ("baseline", "sagan"):
            name = f"pilot_{v}_n{n}_s{args.pilot_seed}"
            spec = _cg2_spec(
                args, common, out, name, v, seed=args.pilot_seed, steps=n,
                schedule_steps=args.cg_steps, phases=["val"], eval_every=0,
            )  # fmt: skip
            jobs.append((cyclegan_job, spec))
    results, failed = run_jobs(out, jobs, 0)
    timing = {r["variant"]: r for r in results if r["variant"] != "spap_c2f"}
    results = [r for r in results if r["variant"] == "spap_c2f"]

    lines = [
        f"CPU time per training iteration ({args.size} px, batch 1, median of "
        f"{args.cost_repeat} iterations on a fixed batch, {args.threads} thread(s)):",
        "",
        "| width | variant | CPU s / iteration | relative to baseline | parameters |",
        "|---|---|---|---|---|",
    ]
    cpi: dict[int, dict[str, float]] = {}
    for c in costs:
        cpi.setdefault(c["width"], {})[c["variant"]] = t = c["cpu_seconds_per_iteration"]
        params = ", ".join(f"{k} {n / 1e3:.0f} k" for k, n in c["params"].items())
        rel = t / cpi[c["width"]].get("baseline", t)
        lines.append(f"| {c['width']} | {c['variant']} | {t:.4f} | {rel:.2f} | {params} |")
    in_run = {v: r["cpu_seconds_per_iteration"] for v, r in timing.items()}
    for r in results:
        m = r["train"].get("gamma_lr_mult", 1.0)
        if m == 1.0:
            in_run["spap_c2f"] = r["cpu_seconds_per_iteration"]
        if m == args.gamma_lr_mult:
            in_run["spap_c2f_glr"] = r["cpu_seconds_per_iteration"]
    sources = {f"fixed batch, width {w}": c for w, c in cpi.items()}
    if len(in_run) == 4:
        sources[f"in the pilot runs, width {args.cg_width}"] = in_run
        lines += [
            "",
            f"In the pilot runs (width {args.cg_width}, data loading and logging included, "
            "evaluation excluded): "
            + ", ".join(f"{v} {in_run[v]:.4f}" for v in CG2_VARIANTS if v in in_run)
            + " CPU s / iteration.",
        ]
    steps_list = sorted({args.cg_steps, 4000, 5000, 6000, 7000, 8000})
    lines += [
        "",
        f"Expected training CPU hours of `--part cyclegan2` ({len(args.seeds)} seeds; the "
        "compute-matched baseline costs what spap_c2f costs):",
        "",
        "| CPU s / iteration measured | " + " | ".join(f"{n} it" for n in steps_list) + " |",
        "|---|" + "---|" * len(steps_list),
    ]
    expected = {}
    for label, c in sources.items():
        if len(c) == 4:
            per_it = c["baseline"] + c["sagan"] + 2 * c["spap_c2f"] + c["spap_c2f_glr"]
            expected[label] = {n: len(args.seeds) * n * per_it / 3600 for n in steps_list}
            lines.append(
                f"| {label} | " + " | ".join(f"{expected[label][n]:.2f}" for n in steps_list) + " |"
            )
    lines.append("")
    rows = sorted(results, key=lambda r: r["train"].get("gamma_lr_mult", 1.0))
    if rows:
        k6 = [args.pilot_steps * k / 6 for k in range(1, 7)]
        lines += [
            f"spap_c2f, the first {args.pilot_steps} of {args.cg_steps} iterations (seed "
            f"{args.pilot_seed}): mean |γ| (max |γ|) of the units, and the validation scores "
            "after them:",
            "",
            "| γ lr × | units | " + " | ".join(f"{s:.0f} it" for s in k6) + " |",
            "|---|---|" + "---|" * len(k6),
        ]
        for r in rows:
            for label, nets in (("G", ("G_A", "G_B")), ("D", ("D_A", "D_B"))):
                cells = []
                for s in k6:
                    vals = [
                        abs(x) for c in _unit_curves(r, nets) if (x := curve_at(c, s)) is not None
                    ]
                    cells.append(f"{statistics.fmean(vals):.3f} ({max(vals):.3f})" if vals else "—")
                mult = r["train"].get("gamma_lr_mult", 1.0)
                lines.append(f"| {mult:g} | {label} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| γ lr × | val photo→labels pixel acc | class acc | class IoU | val labels→photo "
            "pixel acc | class acc | class IoU | CPU s / iteration in the run |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            cells = [_fmt(r["scores"][d][m]) if d in r["scores"] else "n/a" for d, m in CG_METRICS]
            mult = r["train"].get("gamma_lr_mult", 1.0)
            lines.append(
                f"| {mult:g} | "
                + " | ".join(cells)
                + f" | {_fmt(r['cpu_seconds_per_iteration'], 4)} |"
            )
        lines.append("")
    summary = {"costs": costs, "expected_training_cpu_hours": expected, "runs": results}
    summary["timing_runs"] = list(timing.values())
    return "\n".join(lines), summary, failed


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
    t0, c0 = time.perf_counter(), time.process_time()
    seg, seg_cfg = None, {}
    if args.seg_steps > 0:  # 0: no segmentation net (photo->labels only)
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
        "segnet": str(seg) if seg else None,
        "data_seconds": t_data,
        "segnet_seconds": time.perf_counter() - t0,
        "segnet_cpu_seconds": time.process_time() - c0,
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
        choices=("all", "cyclegan", "gan", "ablation", "cost", "cyclegan2", "cyclegan2-pilot"),
        default="all",
        help="all = CycleGAN + GAN comparisons; ablation = SPAP's open choices (CycleGAN); "
        "cost = CPU time per iteration of every variant (no training); cyclegan2 = part 2 "
        "(64 px, 5 seeds, long enough for gamma to grow, a compute-matched baseline); "
        "cyclegan2-pilot = its pilot (costs, gamma with each --pilot-mults, validation split)",
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (cyclegan2: 0-4)"
    )
    p.add_argument("--size", type=int, default=None, help="default 32 (cyclegan2: 64)")
    p.add_argument("--n-train", type=int, default=500, help="training scenes")
    p.add_argument("--n-test", type=int, default=100, help="test scenes")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seg-steps", type=int, default=600, help="segmentation net steps (batch 16)")
    p.add_argument(
        "--cg-steps",
        type=int,
        default=None,
        help=f"CycleGAN iterations (batch 1); default 1000 (cyclegan2: {CG2_DEFAULTS['cg_steps']})",
    )
    p.add_argument(
        "--cg-width",
        type=int,
        default=None,
        help=f"CycleGAN ngf = ndf; default 16 (cyclegan2: {CG2_DEFAULTS['cg_width']})",
    )
    p.add_argument(
        "--gamma-lr-mult",
        type=float,
        default=None,
        help="train.gamma_lr_mult of cyclegan2's spap_c2f_glr [ours] "
        f"(default {CG2_DEFAULTS['gamma_lr_mult']:g})",
    )
    p.add_argument(
        "--eval-points",
        type=int,
        default=8,
        help="cyclegan2: in-training evaluations on the validation split per run (0: none)",
    )
    p.add_argument(
        "--hours",
        type=float,
        default=None,
        help="CycleGAN parts: start no training after this many hours; runs in progress "
        "checkpoint and stop, and the next invocation resumes them",
    )
    p.add_argument("--pilot-mults", type=float, nargs="+", default=[1.0, 10.0, 30.0])
    p.add_argument("--pilot-steps", type=int, default=1000, help="iterations of a pilot run")
    p.add_argument("--pilot-widths", type=int, nargs="+", default=None, help="default --cg-width")
    p.add_argument("--pilot-seed", type=int, default=100)
    p.add_argument(
        "--pilot-timing-steps",
        type=int,
        default=300,
        help="iterations of the pilot's baseline and sagan runs, which measure their CPU time",
    )
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
    part2 = args.part.startswith("cyclegan2")
    defaults = CG2_DEFAULTS if part2 else {"size": 32, "cg_width": 16, "cg_steps": 1000}
    defaults = {"seeds": [0, 1, 2], "gamma_lr_mult": 1.0, **defaults}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

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
        "deadline": time.time() + 3600 * args.hours if args.hours else None,
    }
    if args.part == "cost":
        return run_cost(args, common)
    command = "python experiments/study.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if part2:
        if args.part == "cyclegan2":
            results, failed, total = run_cyclegan2(args, out, meta, common)
            extra = {"real_photo": meta.get("real_photo")}
            table, summary = summarise2(results, extra)
            stem = "cyclegan2" + (f"_{args.tag}" if args.tag else "")
            picture = gamma_plot(results, out / f"{stem}_gamma.png")
            done = f"{len(results)} of {total} runs done"
        else:
            table, summary, failed = run_cyclegan2_pilot(args, out, meta, common)
            stem, done, picture = "cyclegan2_pilot", "pilot", None
        header = (
            f"Command: `{command}`\n\nWall-clock time of this invocation: "
            f"{(time.perf_counter() - t_start) / 60:.1f} min ({args.jobs} job(s) x "
            f"{args.threads} thread(s)); load average at the end {os.getloadavg()[0]:.1f} on "
            f"{os.cpu_count()} cores; {done}. Width {args.cg_width}, {args.size} px, "
            f"{args.cg_steps} iterations, γ lr × {args.gamma_lr_mult:g} in spap_c2f_glr.\n\n"
        )
        text = header + table + "\n"
        atomic_write(out / f"{stem}.md", lambda f: f.write(text.encode()), fsync=False)
        write_json(
            out / f"{stem}.json",
            {"args": vars(args), "meta": meta, "picture": str(picture) if picture else None,
             **summary},
        )  # fmt: skip
        print(text)
        return 1 if failed else 0
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

    results, failed = run_jobs(out, jobs, args.jobs)
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
