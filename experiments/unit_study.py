"""A direct, supervised test of the SPAP unit: segmentation of the built-in scenes.

Road and sidewalk share one mean grey per scene and differ only in texture scale (1-pixel
grain vs. paving slabs), vegetation and terrain share one mean green (leafy blobs vs. fine
grain). A network that can choose, per location, the atrous rate that decides the class
should separate them best. One small encoder-decoder (no skip connections: everything
passes through its lowest resolution, 16x16 at 64 px) holds a single unit there:

- ``none``: no unit, a residual pair of 3x3 convs of matching parameter count instead;
- ``aspp``: torchvision's DeepLab-v3 ASPP (``deeplabv3.ASPP``: a 1x1 branch, 3x3 branches of
  dilation 1, 2, 4, 8, image pooling, projection) at a reduced width, a 1x1 conv back;
- ``sagan``: SAGAN self-attention (``spap.layers.SelfAttention``) after the residual convs;
- ``spap_c2f`` / ``spap_f2c``: SPAP (``spap.layers.SPAP``, rates 0, 1, 2, 4, 8, batch norm
  as in the host), coarse-to-fine / fine-to-coarse cascade.

Parameter counts are matched to the SPAP unit within 10 % by the width of the extra convs
(``none``, ``sagan``) and of ASPP; :func:`parameter_table` prints them.

The study, all resumable (finished runs are skipped, interrupted ones resume from their
checkpoint, so repeating the command continues where it stopped):

1. ``select``: ``none`` and ``spap_c2f`` at each candidate (width, iterations) pair of about
   equal CPU time, scored on a validation split (by default the last ``--n-val`` training
   scenes held out; ``--val-from scenes``: the scenes' own validation split; never the test
   split); the pair with the highest mean validation mIoU is used for
2. ``main``: every variant x every seed at the chosen setting, scored on the test split:
   mIoU and per-class IoU, Welch differences to ``none`` with 95 % intervals, Holm-adjusted
   p-values and the minimum detectable effect at 80 % power; and for SPAP, the mean weight
   each pyramid branch receives at each class's pixels (from ``spap.layers.record_attention``
   and ``spap.viz.attention_maps``);
3. the summary ``OUT/unit_study.md`` / ``.json`` and the attention picture.

    python experiments/unit_study.py --out runs/unit_study \\
        --picture docs/unit_study_attention.png                             # everything
    python experiments/unit_study.py --out /tmp/us --size 32 --n-train 40 --n-val 8 \\
        --n-test 8 --seeds 0 --select 4:20 --variants none spap_c2f        # a smoke run
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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.utils import make_grid, save_image

from spap.data.scenes import SCENE_CLASSES, ids_to_rgb, write_scenes
from spap.eval.segmentation import ConfusionMatrix
from spap.files import atomic_write
from spap.layers import SPAP, SelfAttention, attention_units, record_attention
from spap.seeds import derive_seed
from spap.viz.attention import attention_maps, colorize, unit_label
from studylib import cell, holm, mde, mean_sd, one_sample, run_jobs, welch, write_json

log = logging.getLogger("study")

VARIANTS = ("none", "aspp", "sagan", "spap_c2f", "spap_f2c")
SPAP_VARIANTS = ("spap_c2f", "spap_f2c")
#: SPAP branch rates (the unit's default: a 1x1 branch and 3x3 dilations 1, 2, 4, 8).
RATES = (0, 1, 2, 4, 8)
#: ASPP's 3x3 dilations: the same as SPAP's (plus its 1x1 and image-pooling branches).
ASPP_RATES = (1, 2, 4, 8)
#: The classes the scenes tell apart by texture scale only, in pairs.
TEXTURE_CLASSES = ("road", "sidewalk", "vegetation", "terrain")
PAIRS = (("road", "sidewalk"), ("terrain", "vegetation"))
K = len(SCENE_CLASSES)
ALPHA, POWER = 0.05, 0.8

# ----------------------------------------------------------------------------- network


def _cbr(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ResidualConvs(nn.Module):
    """``x + bn(conv3x3(relu(bn(conv3x3(x)))))`` with ``inner`` middle channels: the extra
    parameters that match ``none`` and ``sagan`` to the SPAP unit."""

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_cbr(channels, inner),
            nn.Conv2d(inner, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _closest(build: Any, target: int, widths: range) -> nn.Module:
    """The module ``build(w)`` whose parameter count is closest to ``target``."""
    best = min(widths, key=lambda w: abs(_count(build(w)) - target))
    return build(best)


def build_unit(variant: str, channels: int) -> nn.Module:
    """The module at the lowest resolution, (N, C, h, w) -> (N, C, h, w)."""
    bn_spap = partial(SPAP, channels, RATES, norm_layer=nn.BatchNorm2d)
    if variant == "spap_c2f":
        return bn_spap(order="coarse_to_fine")
    if variant == "spap_f2c":
        return bn_spap(order="fine_to_coarse")
    target = _count(bn_spap())
    if variant == "none":
        return _closest(lambda w: ResidualConvs(channels, w), target, range(1, 4 * channels))
    if variant == "sagan":
        rest = target - _count(SelfAttention(channels))
        pad = _closest(lambda w: ResidualConvs(channels, w), rest, range(1, 4 * channels))
        return nn.Sequential(pad, SelfAttention(channels))
    if variant == "aspp":
        return _closest(
            lambda w: nn.Sequential(ASPP(channels, ASPP_RATES, w), nn.Conv2d(w, channels, 1)),
            target,
            range(1, channels + 1),
        )
    raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")


class UnitNet(nn.Module):
    """Encoder (64 -> 16 px, widths w, 2w, 4w), the unit at 16x16 with C = 4w, decoder
    (bilinear upsampling, 3x3 convs, widths 2w, w), 1x1 classifier; batch norm, ReLU."""

    def __init__(self, variant: str, width: int, num_classes: int = K) -> None:
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            *_cbr(3, w), *_cbr(w, w), nn.MaxPool2d(2),
            *_cbr(w, 2 * w), *_cbr(2 * w, 2 * w), nn.MaxPool2d(2),
            *_cbr(2 * w, 4 * w), *_cbr(4 * w, 4 * w),
        )  # fmt: skip
        self.unit = build_unit(variant, 4 * w)
        self.up2 = nn.Sequential(*_cbr(4 * w, 2 * w), *_cbr(2 * w, 2 * w))
        self.up1 = nn.Sequential(*_cbr(2 * w, w), *_cbr(w, w))
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.unit(self.encoder(x))
        h = self.up2(F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False))
        h = self.up1(F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False))
        return self.head(h)


def parameter_table(width: int) -> list[dict[str, Any]]:
    """Parameters of every variant at ``width``: total, of the unit, relative to SPAP c2f."""
    rows = []
    for v in VARIANTS:
        net = UnitNet(v, width)
        rows.append({"variant": v, "total": _count(net), "unit": _count(net.unit)})
    ref = next(r["total"] for r in rows if r["variant"] == "spap_c2f")
    for r in rows:
        r["relative"] = r["total"] / ref
    return rows


# ----------------------------------------------------------------------------- data


def _read_split(data: Path, split: str) -> tuple[Tensor, Tensor]:
    """Photos (N, 3, H, W) in [-1, 1] and class ids (N, H, W) of ``split`` (the aligned
    ``label | photo`` images and the ``<split>_ids`` maps of :func:`write_scenes`)."""
    files = sorted((data / f"{split}_ids").glob("*.png"))
    ids = np.stack([np.asarray(Image.open(f)) for f in files]).astype(np.int64)
    pairs = [np.asarray(Image.open(data / split / f.name).convert("RGB")) for f in files]
    photos = np.stack([p[:, p.shape[1] // 2 :] for p in pairs])
    x = torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x.contiguous(), torch.from_numpy(ids)


def load_scenes(data: Path, n_val: int) -> dict[str, tuple[Tensor, Tensor]]:
    """``{"train", "val", "test"}``: a ``val`` split of the scenes if it has one, otherwise
    the last ``n_val`` training scenes held out (never the test split)."""
    train = _read_split(data, "train")
    if (data / "val_ids").is_dir():
        val = _read_split(data, "val")
    else:
        n = len(train[0]) - n_val
        train, val = (train[0][:n], train[1][:n]), (train[0][n:], train[1][n:])
    return {"train": train, "val": val, "test": _read_split(data, "test")}


def batch(split: tuple[Tensor, Tensor], seed: int, step: int, size: int) -> tuple[Tensor, Tensor]:
    """Step ``step``'s batch: a pure function of (seed, step) (so a resumed run draws what an
    uninterrupted one would): epochs of a seeded permutation, random horizontal flips."""
    x, y = split
    n = len(x)
    first = step * size
    idx = []
    for pos in range(first, first + size):
        epoch, i = divmod(pos, n)
        g = torch.Generator().manual_seed(derive_seed(seed, 7, epoch))
        idx.append(int(torch.randperm(n, generator=g)[i]))
    g = torch.Generator().manual_seed(derive_seed(seed, 8, step))
    flip = torch.rand(size, generator=g) < 0.5
    xb, yb = x[idx].clone(), y[idx].clone()
    xb[flip], yb[flip] = xb[flip].flip(-1), yb[flip].flip(-1)
    return xb, yb


# ----------------------------------------------------------------------------- attention


def branch_weights(step_maps: list[Tensor], cascade: list[int]) -> Tensor:
    """The weight each branch gets in a SPAP cascade's output, (N, K, h, w) in rate order.

    ``step_maps[k]`` (N, 1, h, w) is the weight fuse block ``k`` gives the branch it brings
    in (``cascade[k + 1]``); the running input gets ``1 - step_maps[k]``. A branch's weight is
    the product of the weights along its path to the output [ours: the refine convs between
    the blocks are ignored], so the K weights sum to 1 at every position.
    """
    out: list[Tensor | None] = [None] * len(cascade)
    keep = torch.ones_like(step_maps[0])
    for k in reversed(range(len(step_maps))):
        out[cascade[k + 1]] = step_maps[k] * keep
        keep = keep * (1.0 - step_maps[k])
    out[cascade[0]] = keep
    return torch.cat(out, dim=1)  # type: ignore[arg-type]


def spap_weights(net: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(logits, weights)``: the net's output on ``x`` and its SPAP unit's branch weights
    (N, K, H, W) upsampled (bilinear) to the input size, recorded with the public API."""
    (name, unit), *_ = list(attention_units(net))
    with record_attention(net) as rec:
        logits = net(x)
    maps = attention_maps(rec, tuple(x.shape[-2:]))
    label = unit_label(name)
    steps = [maps[f"{label}_{k}"] for k in range(len(unit.cascade) - 1)]
    w = branch_weights(steps, list(unit.cascade))
    return logits, F.interpolate(w, size=x.shape[-2:], mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------- the job


@torch.no_grad()
def evaluate(
    net: nn.Module, split: tuple[Tensor, Tensor], attention: bool = False
) -> dict[str, Any]:
    """Scores on a split (eval mode): mIoU over the classes, per-class IoU, pixel accuracy;
    with ``attention``, per class the mean branch weight at its pixels (``[K][branches]``)."""
    was_training = net.training
    net.eval()
    cm = ConfusionMatrix(K)
    sums = counts = None
    x, y = split
    for i in range(0, len(x), 50):
        xb, yb = x[i : i + 50], y[i : i + 50]
        if attention:
            logits, w = spap_weights(net, xb)
            flat = w.permute(0, 2, 3, 1).reshape(-1, w.shape[1]).double()
            if sums is None:
                sums = torch.zeros(K, w.shape[1], dtype=torch.float64)
                counts = torch.zeros(K, dtype=torch.float64)
            sums.index_add_(0, yb.reshape(-1), flat)
            counts += torch.bincount(yb.reshape(-1), minlength=K).double()
        else:
            logits = net(xb)
        cm.update(logits.argmax(1), yb)
    net.train(was_training)
    s = cm.scores(SCENE_CLASSES)
    out: dict[str, Any] = {
        "miou": s["class_iou"],
        "pixel_acc": s["pixel_acc"],
        "iou": {c["name"]: c["iou"] for c in s["per_class"]},
    }
    if attention:
        mean = sums / counts.clamp_min(1)[:, None]
        out["branch_weight"] = {c: mean[i].tolist() for i, c in enumerate(SCENE_CLASSES)}
        out["class_pixels"] = {c: int(counts[i]) for i, c in enumerate(SCENE_CLASSES)}
    return out


def _lr(base: float, step: int, steps: int) -> float:
    """Cosine decay from ``base`` to 0 over the run."""
    return base * 0.5 * (1.0 + math.cos(math.pi * step / steps))


def _gammas(net: nn.Module) -> list[float]:
    return [float(p.detach()) for n, p in net.named_parameters() if n.endswith("gamma")]


def unit_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) one run and score it; returns the result dict.

    ``spec``: name, variant, seed, width, steps, batch, lr, data, n_val, run_dir, threads,
    eval_every (validation points during training; 0 = only at the end), checkpoint_every,
    test (score the test split, with SPAP's branch weights).
    """
    torch.set_num_threads(spec["threads"])
    splits = load_scenes(Path(spec["data"]), spec["n_val"])
    seed, steps = spec["seed"], spec["steps"]
    torch.manual_seed(derive_seed(seed, 1))
    net = UnitNet(spec["variant"], spec["width"])
    opt = torch.optim.Adam(net.parameters(), lr=spec["lr"])
    run_dir = Path(spec["run_dir"])
    ckpt = run_dir / "checkpoint.pt"
    state: dict[str, Any] = {"step": 0, "cpu": 0.0, "wall": 0.0, "curve": []}
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        state = saved["state"]
        log.info("%s: resuming at step %d", spec["name"], state["step"])

    def save() -> None:
        blob = {
            "model": net.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": torch.get_rng_state(),
            "state": state,
        }
        atomic_write(ckpt, lambda f: torch.save(blob, f), fsync=False)

    net.train()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for step in range(state["step"], steps):
        for group in opt.param_groups:
            group["lr"] = _lr(spec["lr"], step, steps)
        xb, yb = batch(splits["train"], seed, step, spec["batch"])
        loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["step"] = step + 1
        done = step + 1 == steps
        if spec["eval_every"] and ((step + 1) % spec["eval_every"] == 0 or done):
            t = time.process_time()
            val = evaluate(net, splits["val"])
            cpu0 += time.process_time() - t  # validation points are not training time
            state["curve"].append([step + 1, val["miou"], loss.item()])
        if (step + 1) % spec["checkpoint_every"] == 0 or done:
            state["cpu"] += time.process_time() - cpu0
            state["wall"] += time.perf_counter() - wall0
            cpu0, wall0 = time.process_time(), time.perf_counter()
            save()
    t0 = time.perf_counter()
    attention = spec["variant"] in SPAP_VARIANTS
    val = evaluate(net, splits["val"])
    test = evaluate(net, splits["test"], attention=attention) if spec["test"] else None
    return {
        "name": spec["name"],
        "variant": spec["variant"],
        "seed": seed,
        "width": spec["width"],
        "steps": steps,
        "batch": spec["batch"],
        "lr": spec["lr"],
        "params": _count(net),
        "unit_params": _count(net.unit),
        "train_seconds": state["wall"],
        "cpu_seconds": state["cpu"],
        "cpu_seconds_per_step": state["cpu"] / max(1, steps),
        "eval_seconds": time.perf_counter() - t0,
        "gamma": _gammas(net),
        "val_curve": state["curve"],
        "val": val,
        "test": test,
        "scores": {"val_miou": val["miou"], "test_miou": test["miou"] if test else None},
    }


@torch.no_grad()
def unit_share(net: UnitNet, x: Tensor) -> float | None:
    """How much a blended unit adds to the path through it, on images ``x``:
    ``‖y - skip‖ / ‖skip‖`` over all of ``x``, where ``f`` is the unit's input and ``skip`` is
    ``(1 - γ) f`` for SPAP (``y = γ h + (1 - γ) f``) and ``f`` for SAGAN (``y = f + γ o``).
    A small γ need not mean a small share: ``h`` and ``o`` have no norm and may grow.
    ``None`` for the variants without a blend scalar."""
    net.eval()
    unit = net.unit
    num = den = 0.0
    for i in range(0, len(x), 50):
        f = net.encoder(x[i : i + 50])
        if isinstance(unit, SPAP):
            skip, y = (1.0 - unit.gamma) * f, unit(f)
        elif isinstance(unit, nn.Sequential) and isinstance(unit[-1], SelfAttention):
            skip = unit[0](f)
            y = unit[1](skip)
        else:
            return None
        num += float((y - skip).pow(2).sum())
        den += float(skip.pow(2).sum())
    return math.sqrt(num / den)


def unit_shares(out: Path, results: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, float]:
    """:func:`unit_share` on the test split of every finished run with a blended unit."""
    x = load_scenes(Path(spec["data"]), spec["n_val"])["test"][0]
    shares = {}
    for r in results:
        if r["variant"] not in ("sagan", *SPAP_VARIANTS):
            continue
        net = UnitNet(r["variant"], r["width"])
        saved = torch.load(out / "runs" / r["name"] / "checkpoint.pt", weights_only=True)
        net.load_state_dict(saved["model"])
        share = unit_share(net, x)
        if share is not None:
            shares[r["name"]] = share
    return shares


# ----------------------------------------------------------------------------- summary


def _fmt(x: float, digits: int = 3, sign: bool = False) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def select_table(results: list[dict[str, Any]]) -> tuple[list[str], tuple[int, int] | None]:
    """Validation curves of the selection runs, and the chosen (width, steps): the candidate
    with the highest validation mIoU at its last step, averaged over its runs."""
    cands = sorted({(r["width"], r["steps"]) for r in results})
    lines = [
        "| width | iterations | variant | CPU s / iteration | validation mIoU at 1/4, 1/2, 3/4, "
        "all of the iterations |",
        "|---|---|---|---|---|",
    ]
    best, best_score = None, -math.inf
    for w, n in cands:
        rs = [r for r in results if (r["width"], r["steps"]) == (w, n)]
        for r in sorted(rs, key=lambda r: VARIANTS.index(r["variant"])):
            curve = ", ".join(f"{m:.3f}" for _, m, _ in r["val_curve"])
            lines.append(
                f"| {w} | {n} | {r['variant']} | {r['cpu_seconds_per_step']:.3f} | {curve} |"
            )
        score = statistics.fmean(r["val"]["miou"] for r in rs)
        if score > best_score:
            best, best_score = (w, n), score
    lines.append("")
    if best is not None:
        lines.append(
            f"Chosen: width {best[0]}, {best[1]} iterations (mean validation mIoU "
            f"{best_score:.3f} of its runs at the last iteration)."
        )
    return lines + [""], best


def _metrics(r: dict[str, Any]) -> dict[str, float]:
    t = r["test"]
    return {"mIoU": t["miou"], **{c: t["iou"][c] for c in TEXTURE_CLASSES}}


def comparison(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant, mean/sd of each metric; per (variant, metric) the Welch difference to
    ``none`` with a 95 % interval, the Holm-adjusted p (family: the 4 mIoU comparisons, and
    separately the 16 per-class comparisons) and the minimum detectable effect at 80 % power
    at the Bonferroni level of its family (the level of Holm's first step)."""
    by = {v: [r for r in results if r["variant"] == v] for v in VARIANTS}
    names = ["mIoU", *TEXTURE_CLASSES]
    table: dict[str, Any] = {"variants": {}, "diff": {}}
    for v, rs in by.items():
        if rs:
            table["variants"][v] = {
                m: dict(zip(("mean", "sd"), mean_sd([_metrics(r)[m] for r in rs]))) for m in names
            }
            table["variants"][v]["seeds"] = sorted(r["seed"] for r in rs)
    base = [_metrics(r) for r in by["none"]]
    others = [v for v in VARIANTS if v != "none" and len(by[v]) > 1]
    if len(base) < 2 or not others:
        return table
    tests = {}
    for v in others:
        vals = [_metrics(r) for r in by[v]]
        for m in names:
            tests[(v, m)] = welch([x[m] for x in vals], [x[m] for x in base], ALPHA)
    for family in (["mIoU"], list(TEXTURE_CLASSES)):
        keys = [k for k in tests if k[1] in family]
        adj = holm([tests[k]["p"] for k in keys])
        for k, p in zip(keys, adj):
            tests[k]["p_holm"] = p
            tests[k]["family"] = len(keys)
            tests[k]["mde"] = mde(tests[k]["se"], tests[k]["df"], ALPHA / len(keys), POWER)
    for (v, m), t in tests.items():
        table["diff"].setdefault(v, {})[m] = t
    return table


def attention_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per SPAP variant: per class and branch, mean ± sd over seeds of the branch weight;
    per look-alike pair and branch the paired difference (first - second class) over seeds
    with a 95 % interval and Holm-adjusted p (family: all pairs, branches and orders), and
    the total-variation distance between the two classes' branch weights."""
    out: dict[str, Any] = {}
    keys, pvals = [], []
    for v in SPAP_VARIANTS:
        rs = [r for r in results if r["variant"] == v and r.get("test")]
        if not rs:
            continue
        bw = [r["test"]["branch_weight"] for r in rs]
        entry: dict[str, Any] = {
            "seeds": len(rs),
            "gamma": [g for r in rs for g in r["gamma"]],
            "mean": {
                c: [mean_sd([b[c][j] for b in bw]) for j in range(len(RATES))]
                for c in SCENE_CLASSES
            },
            "pairs": {},
        }
        for a, b in PAIRS:
            diffs = [one_sample([w[a][j] - w[b][j] for w in bw], ALPHA) for j in range(len(RATES))]
            tv = [0.5 * sum(abs(w[a][j] - w[b][j]) for j in range(len(RATES))) for w in bw]
            entry["pairs"][f"{a}/{b}"] = {"diff": diffs, "tv": mean_sd(tv)}
            for j, d in enumerate(diffs):
                keys.append((v, f"{a}/{b}", j))
                pvals.append(d["p"])
        out[v] = entry
    for (v, pair, j), p in zip(keys, holm(pvals)):
        out[v]["pairs"][pair]["diff"][j]["p_holm"] = p
    return out


def summarise(
    results: list[dict[str, Any]],
    params: list[dict[str, Any]],
    shares: dict[str, float] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The markdown tables of the main runs and the same numbers as a dict (``shares``: the
    :func:`unit_share` of runs by name)."""
    comp = comparison(results)
    att = attention_summary(results)
    shares = shares or {}
    lines = [
        "| variant | parameters (unit) | rel. to spap_c2f | CPU s / iteration | seeds | "
        "test mIoU | road IoU | sidewalk IoU | vegetation IoU | terrain IoU | learned γ | "
        "unit's share ‖y − skip‖ / ‖skip‖ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in params:
        v = p["variant"]
        rs = [r for r in results if r["variant"] == v]
        if not rs:
            continue
        m = [_metrics(r) for r in rs]
        gam = [g for r in rs for g in r["gamma"]]
        gtxt = f"{min(gam):+.2f} .. {max(gam):+.2f}" if gam else "—"
        cpu = statistics.fmean(r["cpu_seconds_per_step"] for r in rs)
        share = [shares[r["name"]] for r in rs if r["name"] in shares]
        lines.append(
            f"| {v} | {p['total'] / 1e3:.1f} k ({p['unit'] / 1e3:.1f} k) | {p['relative']:.3f} "
            f"| {cpu:.3f} | {len(rs)} | "
            + " | ".join(cell([x[k] for x in m]) for k in ("mIoU", *TEXTURE_CLASSES))
            + f" | {gtxt} | {cell(share, 2) if share else '—'} |"
        )
    lines.append("")
    if comp["diff"]:
        lines += [
            "| variant − none | metric | difference [95 % CI] | Welch p | Holm p | "
            "min. detectable effect (80 % power, Bonferroni level) |",
            "|---|---|---|---|---|---|",
        ]
        for v, ms in comp["diff"].items():
            for m, t in ms.items():
                lines.append(
                    f"| {v} | {m} | {_fmt(t['diff'], sign=True)} [{_fmt(t['ci_low'], sign=True)}, "
                    f"{_fmt(t['ci_high'], sign=True)}] | {_p(t['p'])} | {_p(t['p_holm'])} | "
                    f"±{_fmt(t['mde'])} (α = 0.05/{t['family']}) |"
                )
        lines.append("")
    rates = ["1×1" if r == 0 else f"rate {r}" for r in RATES]
    for v, e in att.items():
        lines += [
            f"Mean branch weight at each class's pixels, {v} (test split, mean ± sd over "
            f"{e['seeds']} seeds; each row sums to 1):",
            "",
            "| class | " + " | ".join(rates) + " |",
            "|---" * (len(RATES) + 1) + "|",
        ]
        for c in SCENE_CLASSES:
            cells = [f"{m:.3f} ± {s:.3f}" for m, s in e["mean"][c]]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("")
    if att:
        lines += [
            "| variant | pair | " + " | ".join(f"Δ {r}" for r in rates) + " | TV distance |",
            "|---|---|" + "---|" * len(RATES) + "---|",
        ]
        for v, e in att.items():
            for pair, d in e["pairs"].items():
                cells = [
                    f"{_fmt(x['diff'], sign=True)} [{_fmt(x['ci_low'], sign=True)}, "
                    f"{_fmt(x['ci_high'], sign=True)}], Holm p {_p(x['p_holm'])}"
                    for x in d["diff"]
                ]
                tv_m, tv_s = d["tv"]
                lines.append(
                    f"| {v} | {pair} | " + " | ".join(cells) + f" | {tv_m:.3f} ± {tv_s:.3f} |"
                )
        lines.append("")
    return "\n".join(lines), {"comparison": comp, "attention": att}


def attention_picture(
    out: Path, results: list[dict[str, Any]], spec: dict[str, Any], path: Path
) -> Path | None:
    """A PNG: per row one test image: photo, labels, then per SPAP order its prediction and
    the weight of each branch (jet colours, 0 blue .. 1 red), of the lowest seed's runs."""
    splits = load_scenes(Path(spec["data"]), spec["n_val"])
    x, y = splits["test"]
    share = torch.stack(
        [(y == SCENE_CLASSES.index(c)).float().mean((1, 2)) for c in TEXTURE_CLASSES], 1
    )
    picks = share.min(1).values.argsort(descending=True)[:3]  # all four classes present
    xs, ys = x[picks], y[picks]
    as_img = lambda ids: torch.from_numpy(ids_to_rgb(ids.numpy())).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    columns = [(xs + 1) / 2, as_img(ys)]
    found = False
    for v in SPAP_VARIANTS:
        rs = sorted((r for r in results if r["variant"] == v), key=lambda r: r["seed"])
        if not rs:
            continue
        net = UnitNet(v, rs[0]["width"])
        saved = torch.load(out / "runs" / rs[0]["name"] / "checkpoint.pt", weights_only=True)
        net.load_state_dict(saved["model"])
        net.eval()
        with torch.no_grad():
            logits, w = spap_weights(net, xs)
        columns.append(as_img(logits.argmax(1)))
        columns += [colorize(w[:, j : j + 1]) for j in range(w.shape[1])]
        found = True
    if not found:
        return None
    tiles = torch.stack(columns, 1).flatten(0, 1)  # row-major: image by image
    tiles = F.interpolate(tiles, scale_factor=2, mode="nearest")
    grid = make_grid(tiles, nrow=len(columns), padding=2, pad_value=1.0)
    return atomic_write(path, lambda f: save_image(grid, f, format="png"), fsync=False)


# ----------------------------------------------------------------------------- main


def prepare(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The scenes, written once (``OUT/prepared.json`` marks them done)."""
    marker = out / "prepared.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    t0 = time.perf_counter()
    if args.val_from == "train":  # the last n_val training scenes are held out
        n = args.n_train + args.n_val + args.n_test
        val_fraction = 0.0
    else:  # the scenes' own validation split, rendered from its own seed stream
        n = args.n_train + args.n_test
        val_fraction = args.n_val / n
    write_scenes(
        out / "data",
        n=n,
        size=args.size,
        seed=args.data_seed,
        test_fraction=args.n_test / n,
        val_fraction=val_fraction,
    )
    meta = {
        "data": str(out / "data"),
        "val_from": args.val_from,
        "seconds": time.perf_counter() - t0,
    }
    write_json(marker, meta)
    return meta


def _spec(args: argparse.Namespace, out: Path, name: str, **kw: Any) -> dict[str, Any]:
    spec = {
        "name": name,
        "data": str(out / "data"),
        "n_val": args.n_val,
        "batch": args.batch,
        "lr": args.lr,
        "threads": args.threads,
        "run_dir": str(out / "runs" / name),
        **kw,
    }
    spec.setdefault("checkpoint_every", max(1, min(100, spec["steps"] // 4)))
    return spec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="runs/unit_study", help="study folder")
    p.add_argument(
        "--part",
        choices=("all", "select", "main", "params"),
        default="all",
        help="select = the validation runs that choose width and iterations; main = every "
        "variant and seed at the chosen setting (selecting first if needed); all = both and "
        "the summary; params = print the parameter counts and exit",
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument(
        "--select",
        nargs="+",
        default=["8:1000", "12:640", "16:480"],
        help="candidate WIDTH:ITERATIONS pairs (about equal CPU time each)",
    )
    p.add_argument("--select-variants", nargs="+", default=["none", "spap_c2f"], choices=VARIANTS)
    p.add_argument("--select-seed", type=int, default=100)
    p.add_argument("--width", type=int, default=None, help="skip the selection: this width")
    p.add_argument("--steps", type=int, default=None, help="skip the selection: these iterations")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (cosine decay)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-train", type=int, default=900, help="training scenes")
    p.add_argument("--n-val", type=int, default=100, help="validation scenes")
    p.add_argument(
        "--val-from",
        choices=("train", "scenes"),
        default="train",
        help="train = hold the last --n-val of --n-train + --n-val training scenes out (the "
        "published tables); scenes = the scenes' own validation split (write_scenes "
        "val_fraction), training on all --n-train training scenes",
    )
    p.add_argument("--n-test", type=int, default=200, help="test scenes")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (0: in this process)")
    p.add_argument("--picture", default=None, help="also write the attention PNG here")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.part == "params":
        for w in sorted({int(c.split(":")[0]) for c in args.select} | {args.width or 0} - {0}):
            for r in parameter_table(w):
                print(
                    f"width {w:3d}  {r['variant']:9s} {r['total']:8d} (unit {r['unit']:7d})  {r['relative']:.3f}"
                )
        return 0
    t_start = time.perf_counter()
    meta = prepare(args, out)
    log.info("scenes ready in %s", meta["data"])
    header = [
        f"Command: `python experiments/unit_study.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
    ]
    failed = 0
    chosen = (args.width, args.steps) if args.width and args.steps else None
    select_lines: list[str] = []
    if chosen is None or args.part == "select":
        jobs = []
        for c in args.select:
            w, n = (int(t) for t in c.split(":"))
            for v in args.select_variants:
                name = f"select_{v}_w{w}_n{n}_s{args.select_seed}"
                spec = _spec(args, out, name, variant=v, seed=args.select_seed, width=w, steps=n)
                spec.update(eval_every=max(1, n // 4), test=False)
                jobs.append((unit_job, spec))
        results, f = run_jobs(out, jobs, args.jobs)
        failed += f
        select_lines, best = select_table(results)
        if chosen is None:
            chosen = best
        write_json(out / "select.json", {"results": results, "chosen": best})
    if args.part == "select" or chosen is None:
        print("\n".join(select_lines))
        return 1 if failed or chosen is None else 0

    width, steps = chosen
    params = parameter_table(width)
    for r in params:
        log.info(
            "%-9s %8d parameters (unit %7d), %.3f of spap_c2f",
            r["variant"],
            r["total"],
            r["unit"],
            r["relative"],
        )
    jobs = []
    for s in args.seeds:  # seed by seed, so a study cut short has every variant equally often
        for v in args.variants:
            name = f"{v}_w{width}_n{steps}_s{s}"
            spec = _spec(args, out, name, variant=v, seed=s, width=width, steps=steps)
            spec.update(eval_every=0, test=True)
            jobs.append((unit_job, spec))
    results, f = run_jobs(out, jobs, args.jobs)
    failed += f
    shares = unit_shares(out, results, jobs[0][1])
    table, summary = summarise(results, params, shares)
    summary["unit_share"] = shares
    picture = None
    if args.picture:
        picture = attention_picture(out, results, jobs[0][1], Path(args.picture))
    header += [
        f"Wall-clock time of this invocation: {(time.perf_counter() - t_start) / 60:.1f} min "
        f"({args.threads} thread(s)); load average at the end {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores. Width {width}, {steps} iterations of batch {args.batch}, "
        f"Adam {args.lr:g} with cosine decay; {len(results)} of {len(jobs)} runs done.",
        "",
    ]
    text = "\n".join(header + select_lines) + "\n" + table + "\n"
    atomic_write(out / "unit_study.md", lambda f: f.write(text.encode()), fsync=False)
    write_json(
        out / "unit_study.json",
        {"args": vars(args), "width": width, "steps": steps, "params": params,
         "picture": str(picture) if picture else None, **summary},
    )  # fmt: skip
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
