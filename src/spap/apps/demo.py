"""The end-to-end demo behind ``spap demo``: scenes -> SPAP CycleGAN -> scores -> report.

1. writes the built-in procedural street scenes (label maps = domain A, photos = domain B);
2. trains a CycleGAN with SPAP units (``configs/cyclegan/scenes_spap.yaml``) for a time
   budget: a short timing probe measures one iteration, and the run gets as many
   iterations as fit (the shared training loop runs a fixed number of steps, so the budget
   is met by calibration, not by interrupting it);
3. trains the small segmentation network on the real photo/label pairs (also calibrated);
4. scores photo->labels (nearest palette colour) and labels->photo (FCN-score with the
   segmentation net) on the test split;
5. writes ``OUT/report/index.html`` (translations, reconstructions, attention maps, loss
   curves, metric table) and ``OUT/report/metrics.json``.

``minutes`` is the budget of the whole demo; data generation, evaluation and the report
are taken from it first, the CycleGAN gets 70 % of the rest and the segmentation net what
is left once the CycleGAN is done (so a CycleGAN slower than its probe shortens it). Very small budgets still run a few iterations of each, so every
part of the report exists.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from spap.apps.report import Report, read_scalars
from spap.config import from_dict, merge, read_yaml, to_dict
from spap.data.labels import get_label_space, nearest_palette
from spap.data.pairs import AlignedPairs, to_tensor
from spap.data.scenes import SCENE_CLASSES, write_scenes
from spap.devices import pick_device
from spap.errors import SpapError
from spap.eval.fcn import fcn_score
from spap.inference.translate import Translator
from spap.models.segnet import build_segnet, load_segnet, predict_ids
from spap.systems.cyclegan import CycleGANConfig, apply_size
from spap.train import distributed as D
from spap.train.context import RunContext
from spap.train.cyclegan import CycleGANTask
from spap.train.loop import run
from spap.train.segnet import train_segnet
from spap.viz.attention import overlay

__all__ = ["DemoPlan", "plan_demo", "run_demo"]

log = logging.getLogger(__name__)

#: Config of the demo's CycleGAN (a name under ``configs/``).
DEMO_CONFIG = "cyclegan/scenes_spap"
#: Marker file that makes a folder recognisably the demo's own (safe to refresh).
MARKER = "spap-demo.json"
#: Sub-folders the demo writes (and deletes when it is run again into the same folder).
PARTS = ("data", "run", "segnet", "report")

CYCLEGAN_SHARE = 0.7  # of the training budget; the segmentation net gets the rest
MIN_CYCLEGAN_STEPS = 4
MIN_SEG_STEPS = 20
SEG_BATCH = 16


@dataclass
class DemoPlan:
    """Sizes of the demo's parts for a budget (see :func:`plan_demo`)."""

    minutes: float
    size: int
    n_train: int
    n_test: int
    num_visuals: int = 8


def plan_demo(minutes: float, size: int) -> DemoPlan:
    """How many scenes to write for a budget: about one training image per second of
    budget at 64 px (a CycleGAN sees one image per iteration), between 32 and 400."""
    if minutes <= 0:
        raise SpapError(f"--minutes must be positive, got {minutes}")
    if size < 32 or size > 256 or size % 4:
        raise SpapError(f"--size must be a multiple of 4 between 32 and 256, got {size}")
    per_second = (64 / size) ** 2
    n_train = int(min(400, max(32, minutes * 60 * per_second)))
    n_test = int(min(50, max(16, n_train // 6)))
    return DemoPlan(minutes=minutes, size=size, n_train=n_train, n_test=n_test)


# ----------------------------------------------------------------------------- steps


def _prepare_out(out: Path) -> None:
    """Create ``out`` or refresh a previous demo in it; refuse other non-empty folders."""
    if out.exists() and not out.is_dir():
        raise SpapError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise SpapError(
                f"--out {out} is not empty and holds no earlier demo; choose another folder"
            )
        for part in PARTS:
            shutil.rmtree(out / part, ignore_errors=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpapError(f"cannot create {out}: {exc.strerror or exc}") from None


def write_data(root: Path, plan: DemoPlan, seed: int) -> dict[str, Any]:
    """The scenes (CycleGAN + aligned layouts, ground-truth ids) in ``root``."""
    n = plan.n_train + plan.n_test
    return write_scenes(root, n=n, size=plan.size, seed=seed, test_fraction=plan.n_test / n)


def cyclegan_config(
    data_root: Path, plan: DemoPlan, seed: int, device: str, steps: int | None
) -> Any:
    """The demo's CycleGAN config: ``configs/cyclegan/scenes_spap.yaml`` at ``plan.size``."""
    data = read_yaml(DEMO_CONFIG)
    apply_size(data, plan.size)
    total = steps or 1
    epochs = max(1, math.ceil(total / plan.n_train))
    # constant learning rate for the first half of the epochs, linear decay over the rest
    n_epochs = max(1, (epochs + 1) // 2)
    n_decay = max(0, epochs - n_epochs)
    over = {
        "data": {"root": str(data_root), "layout": "unaligned"},
        "run": {
            "seed": seed,
            "device": device,
            "steps": steps,
            "num_workers": 0,
            "log_every": max(1, total // 150),
            "sample_every": total,
            "checkpoint_every": total,
            "keep_last": 1,
        },
        "train": {"n_epochs": n_epochs, "n_epochs_decay": n_decay, "num_visuals": 4},
    }
    return from_dict(CycleGANConfig, merge(data, over))


def _seconds_per_step(step: Callable[[], Any], warmup: int = 1, repeat: int = 3) -> float:
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(repeat):
        step()
    return (time.perf_counter() - t0) / repeat


def probe_cyclegan(cfg: Any) -> float:
    """Seconds per CycleGAN iteration of ``cfg`` on this machine (a few real steps on a
    throw-away copy of the networks)."""
    device = pick_device(cfg.run.device)
    task = CycleGANTask(cfg, RunContext(cfg.run, device, D.env_info()))
    ds = task.build_dataset()
    batch = default_collate([ds[(0, i)] for i in range(task.batch_size)])
    steps = iter(range(10**6))
    return _seconds_per_step(lambda: task.train_step(batch, next(steps)))


def probe_segnet(size: int, num_classes: int, device: str) -> float:
    """Seconds per training step of the small segmentation net (batch 16)."""
    dev = pick_device(device)
    size = math.ceil(size / 8) * 8  # the small net pools three times; train_segnet rounds so too
    net = build_segnet("small", num_classes).to(dev).train()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x = torch.randn(SEG_BATCH, 3, size, size, device=dev)
    y = torch.randint(0, num_classes, (SEG_BATCH, size, size), device=dev)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _seconds_per_step(step, warmup=1, repeat=2)


# ----------------------------------------------------------------------------- evaluation


def _test_batch(data_root: Path, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``n`` aligned test pairs: labels (A), photos (B) in [-1, 1], gt ids."""
    pairs = AlignedPairs(data_root, get_label_space("scenes"), "test", "A")
    items = [pairs[i] for i in range(min(n, len(pairs)))]
    labels = torch.stack([to_tensor(s["label"]) for s in items])
    photos = torch.stack([to_tensor(s["photo"]) for s in items])
    ids = torch.stack([torch.from_numpy(s["ids"]) for s in items])
    return labels, photos, ids


def _colorize(ids: torch.Tensor) -> torch.Tensor:
    rgb = get_label_space("scenes").colorize(ids.cpu().numpy())  # (N, H, W, 3) uint8
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _score_rows(scores: dict[str, Any]) -> list[list[Any]]:
    names = {
        "photo2labels": "photo → labels (nearest palette colour)",
        "labels2photo": "labels → photo (FCN-score)",
        "real_photo": "real photos, same segmentation net (ceiling of the FCN-score)",
    }
    return [
        [label, scores[k]["pixel_acc"], scores[k]["class_acc"], scores[k]["class_iou"]]
        for k, label in names.items()
        if k in scores
    ]


def build_report(
    out: Path,
    translator: Any,
    segnet: Any,
    data_root: Path,
    scores: dict[str, Any],
    info: dict[str, Any],
    num_visuals: int = 8,
) -> Path:
    """``out/index.html`` of a trained demo run (see the module doc)."""
    labels, photos, ids = _test_batch(data_root, num_visuals)
    fake_B, maps_A = translator.translate_with_attention(labels, "AtoB")
    fake_A, maps_B = translator.translate_with_attention(photos, "BtoA")
    fake_B, fake_A = fake_B.cpu(), fake_A.cpu()
    rec_A = translator.translate(fake_B, "BtoA").cpu()
    rec_B = translator.translate(fake_A, "AtoB").cpu()
    seg_fake = predict_ids(segnet, fake_B.to(next(segnet.parameters()).device)).cpu()

    rep = Report(out, title="spap demo: a SPAP CycleGAN on the built-in scenes")
    rep.text(
        f"A CycleGAN with SPAP units, trained for {info['cyclegan_steps']} iterations "
        f"({info['cyclegan_seconds'] / 60:.1f} min) on {info['n_train']} unpaired "
        f"{info['size']}x{info['size']} scene label maps (domain A) and photos (domain B), "
        f"scored on {info['n_test']} test pairs. A short CPU run: expect rough translations; "
        "docs/results.md has the longer study."
    )
    rep.heading("Scores on the test split")
    rep.table(
        ["", "per-pixel acc", "per-class acc", "class IoU"],
        _score_rows(scores),
        caption="photo → labels: generated label maps mapped to the nearest class colour; "
        "labels → photo: generated photos segmented by a small segmentation net trained on "
        "the real training pairs. All values in [0, 1], higher is better.",
    )
    rep.heading("Labels → photo (G_A)")
    rep.grid(
        {
            "labels (input)": labels,
            "generated photo": fake_B,
            "reconstructed labels": rec_A,
            "segmentation of the generated photo": _colorize(seg_fake),
            "real photo": photos,
        },
        "labels_to_photo",
        caption="test images",
    )
    rep.heading("Photo → labels (G_B)")
    rep.grid(
        {
            "photo (input)": photos,
            "generated labels": fake_A,
            "reconstructed photo": rec_B,
            "generated labels, nearest class colour": _colorize(_nearest_ids(fake_A)),
            "true labels": labels,
        },
        "photo_to_labels",
        caption="test images",
    )
    rep.heading("Attention maps")
    if maps_A or maps_B:
        rep.text(
            "Each SPAP unit fuses its atrous branches two at a time; for every fuse step the "
            "map shows the weight given to the branch brought in at that step (red = high), "
            "over the input image."
        )
        attn_A = {"labels (input)": labels}
        attn_A.update({f"G_A {k}": overlay(labels, m) for k, m in maps_A.items()})
        rep.grid(attn_A, "attention_G_A", caption="G_A (labels → photo)")
        attn_B = {"photo (input)": photos}
        attn_B.update({f"G_B {k}": overlay(photos, m) for k, m in maps_B.items()})
        rep.grid(attn_B, "attention_G_B", caption="G_B (photo → labels)")
    else:
        rep.text("This model has no attention units in its generators.")
    rep.heading("Training losses")
    losses = read_scalars(Path(info["run_dir"]) / "tb", prefix="loss/")
    groups = {
        "discriminators (LSGAN)": ["D_A", "D_B"],
        "generators (LSGAN)": ["G_A", "G_B"],
        "cycle (L1, weighted)": ["cycle_A", "cycle_B"],
        "identity (L1, weighted)": ["idt_A", "idt_B"],
    }
    rep.curves(
        losses,
        title="Faint: logged values; solid: their exponential moving average (weight 0.8).",
        groups={k: v for k, v in groups.items() if any(n in losses for n in v)},
        smooth=0.8,
    )
    rep.heading("Settings")
    rep.table(
        ["setting", "value"],
        [
            ["config", info["config"]],
            ["image size", info["size"]],
            ["training / test scenes", f"{info['n_train']} / {info['n_test']}"],
            ["CycleGAN iterations (batch 1)", info["cyclegan_steps"]],
            ["CycleGAN training time (s)", round(info["cyclegan_seconds"], 1)],
            ["segmentation net steps (batch 16)", info["seg_steps"]],
            ["total time (s)", round(info["total_seconds"], 1)],
            ["seed", info["seed"]],
            ["device (CPU threads)", f"{info['device']} ({info['threads']})"],
        ],
    )
    rep.text(
        f"Run folder: {info['run_dir']} (checkpoints, TensorBoard logs in tb/). "
        "Translate more images with: spap translate --checkpoint "
        f"{info['run_dir']} --input IMAGES --output OUT --attention",
        note=True,
    )
    return rep.write()


def _nearest_ids(images: torch.Tensor) -> torch.Tensor:
    space = get_label_space("scenes")
    rgb = ((images.clamp(-1, 1) + 1) * 127.5).round()
    return nearest_palette(rgb, np.array(space.colors))


# ----------------------------------------------------------------------------- main


def run_demo(
    out: str | Path = "spap-demo",
    minutes: float = 5.0,
    size: int = 64,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo into ``out``; returns the metrics dict (also ``out/report/metrics.json``).

    ``threads`` sets PyTorch's CPU threads for the demo. Default: PyTorch's own choice, or
    one thread when the machine is already busy (load average above 3/4 of its cores):
    several threads competing with other work for the same cores make every step many
    times slower, one thread does not.
    """
    if threads is not None and threads < 1:
        raise SpapError(f"--threads must be at least 1, got {threads}")
    old_threads = torch.get_num_threads()
    if threads is None and _machine_busy():
        threads = 1
        echo("the machine is busy: training with one CPU thread (set --threads to override)")
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_demo(Path(out), minutes, size, seed, device, echo)
    finally:
        torch.set_num_threads(old_threads)


def _machine_busy() -> bool:
    """True when other processes already load most of this machine's cores."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        return False
    return load > 0.75 * (os.cpu_count() or 1)


def _run_demo(
    out: Path, minutes: float, size: int, seed: int, device: str, echo: Callable[[str], None]
) -> dict[str, Any]:
    t_start = time.perf_counter()
    plan = plan_demo(minutes, size)
    _prepare_out(out)
    (out / MARKER).write_text(json.dumps({"plan": asdict(plan), "seed": seed}, indent=1))
    dev = str(pick_device(device))
    budget = minutes * 60.0

    echo(f"[1/5] writing {plan.n_train} + {plan.n_test} scenes at {size}x{size} ...")
    data_root = out / "data"
    write_data(data_root, plan, seed)

    echo("[2/5] timing one CycleGAN and one segmentation step ...")
    probe_cfg = cyclegan_config(data_root, plan, seed, dev, steps=None)
    t_cg = probe_cyclegan(probe_cfg)
    t_seg = probe_segnet(size, _num_classes(), dev)
    # evaluation and report: roughly a forward pass of both generators and the segnet per
    # test image, plus the fixed cost of writing files
    t_eval = 2.0 + plan.n_test * (t_cg / 3 + t_seg / SEG_BATCH)
    left = max(0.0, budget - (time.perf_counter() - t_start) - t_eval)
    cg_steps = max(MIN_CYCLEGAN_STEPS, int(CYCLEGAN_SHARE * left / t_cg))

    echo(
        f"[3/5] training the SPAP CycleGAN for {cg_steps} iterations "
        f"(~{cg_steps * t_cg / 60:.1f} min at {t_cg:.2f} s/it) ..."
    )
    cfg = cyclegan_config(data_root, plan, seed, dev, steps=cg_steps)
    run_dir = out / "run"
    t0 = time.perf_counter()
    run(CycleGANTask, cfg, run_dir)
    cg_seconds = time.perf_counter() - t0

    # the segmentation net gets what is left (less if the CycleGAN ran slower than probed)
    left = budget - (time.perf_counter() - t_start) - t_eval
    seg_steps = max(MIN_SEG_STEPS, int(left / t_seg))
    echo(f"[4/5] training the segmentation net ({seg_steps} steps) and scoring ...")
    t0 = time.perf_counter()
    seg_path = train_segnet(
        data_root,
        out / "segnet",
        palette="scenes",
        size=size,
        steps=seg_steps,
        batch_size=SEG_BATCH,
        device=dev,
        seed=seed,
        eval_phase=None,
        log_every=max(1, seg_steps),
    )
    seg_seconds = time.perf_counter() - t0
    segnet = load_segnet(seg_path, dev)
    translator = Translator.from_checkpoint(run_dir, device=dev)
    scores = fcn_score(
        translator,
        data_root,
        segnet,
        direction="both",
        size=size,
        palette="scenes",
        device=dev,
        include_real=True,
    )

    echo("[5/5] writing the report ...")
    info = {
        "config": DEMO_CONFIG,
        "size": size,
        "n_train": plan.n_train,
        "n_test": plan.n_test,
        "seed": seed,
        "device": dev,
        "threads": torch.get_num_threads(),
        "cyclegan_steps": cg_steps,
        "cyclegan_seconds": cg_seconds,
        "cyclegan_seconds_per_step_probe": t_cg,
        "seg_steps": seg_steps,
        "seg_seconds": seg_seconds,
        "run_dir": str(run_dir),
        "minutes": minutes,
    }
    report_dir = out / "report"
    info["total_seconds"] = time.perf_counter() - t_start
    index = build_report(
        report_dir, translator, segnet[0], data_root, scores, info, plan.num_visuals
    )
    info["total_seconds"] = time.perf_counter() - t_start
    metrics = {
        k: {m: scores[k][m] for m in ("pixel_acc", "class_acc", "class_iou", "per_class")}
        for k in ("photo2labels", "labels2photo", "real_photo")
        if k in scores
    }
    metrics["info"] = info
    metrics["config"] = to_dict(cfg)
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    echo(f"report: {index}")
    return metrics


def _num_classes() -> int:
    return len(SCENE_CLASSES)
