"""The end-to-end demo behind ``spap demo``: scenes -> SPAP CycleGAN -> scores -> report.

1. writes the built-in procedural street scenes (label maps = domain A, photos = domain B);
2. trains the small segmentation network on the real photo/label pairs, for as many steps
   as its share of the budget holds at the speed a short timing probe measures;
3. trains a CycleGAN with SPAP units (``configs/cyclegan/scenes_spap.yaml``) until the
   budget, less what scoring needs, is used up;
4. scores photo->labels (nearest palette colour) and labels->photo (FCN-score with the
   segmentation net) on the test split;
5. writes ``OUT/report/index.html`` (translations, reconstructions, attention maps, loss
   curves, metric table) and ``OUT/report/metrics.json``.

``minutes`` is the budget of the whole demo. For ``spap demo`` (or a script that calls
:func:`run_demo` right after importing it) it is the process's: its start-up, mostly
importing PyTorch, counts (up to a fifth of the budget) and room is left for its exit
(:func:`_start_up_seconds`); otherwise it counts from the call. Data generation and the
probes come first; of the rest, less the expected time of scoring and the report, the
segmentation net gets 30 % (by its probe) and the CycleGAN what is left. The CycleGAN's
length is not fixed by a probe: the load of a shared machine changes within minutes, so
the run is planned with headroom and stopped (``should_stop`` of the shared loop, with its
final checkpoint) once its measured seconds per iteration say that the next one, the end
of the run and scoring would end past the budget (:class:`_Clock`). Very small budgets
still run a few iterations of each, so every part of the report exists.
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

from spap.apps.report import Report, gamma_section, read_scalars
from spap.config import from_dict, merge, read_yaml, to_dict
from spap.data.labels import get_label_space, nearest_palette
from spap.data.pairs import AlignedPairs, to_tensor
from spap.data.scenes import SCENE_CLASSES, write_scenes
from spap.devices import pick_device, set_threads
from spap.errors import SpapError
from spap.eval.fcn import fcn_score
from spap.inference.translate import Translator
from spap.layers import record_attention
from spap.models.segnet import build_segnet, load_segnet, predict_ids
from spap.systems.cyclegan import CycleGANConfig, apply_size
from spap.train import distributed as D
from spap.train.context import RunContext
from spap.train.cyclegan import CycleGANTask
from spap.train.loop import run
from spap.train.segnet import train_segnet

__all__ = ["DemoPlan", "plan_demo", "run_demo"]

log = logging.getLogger(__name__)

#: When this module finished importing (see :func:`_start_up_seconds`).
_IMPORTED = time.perf_counter()

#: Config of the demo's CycleGAN (a name under ``configs/``).
DEMO_CONFIG = "cyclegan/scenes_spap"
#: Marker file that makes a folder recognisably the demo's own (safe to refresh).
MARKER = "spap-demo.json"
#: Sub-folders the demo writes (and deletes when it is run again into the same folder).
PARTS = ("data", "run", "segnet", "report")

CYCLEGAN_SHARE = 0.7  # of the training budget; the segmentation net gets the rest
#: At most this share of the budget is the process's life before the demo was called.
START_UP_SHARE = 0.2
#: A process that imported PyTorch takes about this share of its start-up to exit (2.4-4.6 s
#: after a 9-20 s start, 10.9 s after 35 s, at load 9-13 on a 2-core machine).
EXIT_SHARE = 0.4
#: Iterations planned beyond what the probe says fits, so that a machine getting faster
#: still fills the budget: the clock ends the CycleGAN's run, not the plan (which sets the
#: learning-rate schedule and the progress bar's length).
CYCLEGAN_HEADROOM = 3.0
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
    # constant learning rate for the first half of the epochs, linear decay over the rest;
    # the schedule is an epoch longer than the run, whose last epoch the reference's rule
    # trains at rate 0 (run.steps ends the run before it)
    n_epochs = (epochs + 1) // 2 + 1
    n_decay = max(1, epochs - n_epochs + 1)
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
            "eval_every": 0,  # the demo scores once, on the test pairs, after training
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
            "generated labels mapped to the nearest class colour": _colorize(_nearest_ids(fake_A)),
            "true labels": labels,
        },
        "photo_to_labels",
        caption="test images",
    )
    rep.heading("Attention maps")
    if maps_A or maps_B:
        rep.text(
            "Each SPAP unit fuses its atrous branches two at a time; for every fuse step the "
            "map shows the weight given to the branch brought in at that step (its dilation "
            "rate in the row name; red = high, see the colour scale), over the input image."
        )
        for direction, images, name, what in (
            ("AtoB", labels, "G_A", "labels (input)"),
            ("BtoA", photos, "G_B", "photo (input)"),
        ):
            net = translator.generator(direction)
            with torch.no_grad(), record_attention(net) as recorded:
                net(images.to(next(net.parameters()).device))
            rep.attention(images, net, recorded, name, f"{name} ({direction})", what)
    else:
        rep.text("This model has no attention units in its generators.")
    gamma_section(rep, Path(info["run_dir"]) / "tb")
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
        f"{info['run_dir']} --direction AtoB --input LABEL_MAPS --output OUT --attention "
        "(label maps to photos), or --direction BtoA --input PHOTOS (photos to label maps).",
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

    ``threads`` sets PyTorch's CPU threads for the demo (restored afterwards). Default:
    :func:`spap.devices.default_threads`, the rule of every command.
    """
    if threads is not None and threads < 1:
        raise SpapError(f"--threads must be at least 1, got {threads}")
    old_threads = torch.get_num_threads()
    set_threads(threads)
    try:
        return _run_demo(Path(out), minutes, size, seed, device, echo)
    finally:
        torch.set_num_threads(old_threads)


def _run_demo(
    out: Path, minutes: float, size: int, seed: int, device: str, echo: Callable[[str], None]
) -> dict[str, Any]:
    plan = plan_demo(minutes, size)
    budget = minutes * 60.0
    # the budget of `spap demo` is the command's: its start-up (mostly importing PyTorch)
    # counts, and its exit (freeing PyTorch) is left room for at the end
    start_up = _start_up_seconds(budget)
    t_start = time.perf_counter() - start_up
    end = t_start + budget - EXIT_SHARE * start_up
    _prepare_out(out)
    (out / MARKER).write_text(json.dumps({"plan": asdict(plan), "seed": seed}, indent=1))
    dev = str(pick_device(device))

    echo(f"[1/5] writing {plan.n_train} + {plan.n_test} scenes at {size}x{size} ...")
    data_root = out / "data"
    write_data(data_root, plan, seed)

    echo("[2/5] timing one CycleGAN and one segmentation step ...")
    probe_cfg = cyclegan_config(data_root, plan, seed, dev, steps=None)
    t_cg = probe_cyclegan(probe_cfg)
    t_seg = probe_segnet(size, _num_classes(), dev)
    t_eval = _eval_seconds(plan, t_cg, t_seg)
    left = max(0.0, end - time.perf_counter() - t_eval)
    seg_steps = max(MIN_SEG_STEPS, int((1 - CYCLEGAN_SHARE) * left / t_seg))

    echo(f"[3/5] training the segmentation net ({seg_steps} steps) ...")
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
    t_seg = seg_seconds / seg_steps  # as it ran, not as probed
    t_eval = _eval_seconds(plan, t_cg, t_seg)

    # the CycleGAN gets the rest, up to the time scoring needs at the speed it really runs
    # (which the load of a shared machine changes within minutes): planned with headroom,
    # the clock ends it
    clock = _Clock(end, plan, t_seg, MIN_CYCLEGAN_STEPS)
    left = max(0.0, end - time.perf_counter() - t_eval)
    planned = max(MIN_CYCLEGAN_STEPS, int(CYCLEGAN_HEADROOM * left / t_cg))
    echo(
        f"[4/5] training the SPAP CycleGAN for the remaining {left / 60:.1f} min "
        f"(~{int(left / t_cg)} iterations at {t_cg:.2f} s/it) ..."
    )
    cfg = cyclegan_config(data_root, plan, seed, dev, steps=planned)
    run_dir = out / "run"
    t0 = time.perf_counter()
    run(CycleGANTask, cfg, run_dir, should_stop=clock)
    cg_seconds = time.perf_counter() - t0
    cg_steps = clock.trained
    if cg_steps < planned:
        echo(f"      time is up after {cg_steps} iterations ({cg_seconds / 60:.1f} min)")

    echo("[5/5] scoring and writing the report ...")
    t_scoring = time.perf_counter()
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

    info = {
        "config": DEMO_CONFIG,
        "size": size,
        "n_train": plan.n_train,
        "n_test": plan.n_test,
        "seed": seed,
        "device": dev,
        "threads": torch.get_num_threads(),
        "cyclegan_steps": cg_steps,
        "cyclegan_steps_planned": planned,
        "cyclegan_seconds": cg_seconds,
        "cyclegan_seconds_per_step_probe": t_cg,
        "seg_steps": seg_steps,
        "seg_seconds": seg_seconds,
        "run_dir": str(run_dir),
        "minutes": minutes,
        "start_up_seconds": start_up,
    }
    report_dir = out / "report"
    info["total_seconds"] = time.perf_counter() - t_start
    index = build_report(
        report_dir, translator, segnet[0], data_root, scores, info, plan.num_visuals
    )
    info["total_seconds"] = time.perf_counter() - t_start
    info["eval_seconds"] = time.perf_counter() - t_scoring  # scoring and the report
    info["eval_seconds_planned"] = _eval_seconds(plan, cg_seconds / max(1, cg_steps), t_seg)
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


def _start_up_seconds(budget: float) -> float:
    """Seconds this process ran before the demo, when the demo is what it was started for
    (called right after importing this module, as ``spap demo`` and scripts do), at most
    ``START_UP_SHARE`` of the budget; else (a notebook, tests) 0."""
    if time.perf_counter() - _IMPORTED > 1.0:
        return 0.0
    return min(_process_age(), START_UP_SHARE * budget)


def _process_age() -> float:
    """Seconds since this process started (Linux: from /proc), 0 where unknown."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


class _Clock:
    """``should_stop`` of the demo's CycleGAN run (:func:`spap.train.loop.run`): called
    after each iteration, True once the next one, the run's end (its final checkpoint) and
    scoring would not fit before ``end`` (a ``time.perf_counter()`` value) at the seconds
    per iteration measured so far. The first ``min_steps`` iterations (at least 2, to time
    one) always run."""

    def __init__(self, end: float, plan: DemoPlan, t_seg: float, min_steps: int) -> None:
        self.end, self.plan, self.t_seg, self.min_steps = end, plan, t_seg, max(2, min_steps)
        self.trained = 0
        self.first: float | None = None  # when the first iteration seen ended
        self.first_step = 0
        self.out_of_time = False

    def __call__(self, step: int) -> bool:
        now = time.perf_counter()
        self.trained = step
        if self.first is None:
            self.first = now
            self.first_step = step
        if step < self.min_steps or step == self.first_step:
            return False
        per_step = (now - self.first) / (step - self.first_step)  # loop overhead included
        need = 2 * per_step + _eval_seconds(self.plan, per_step, self.t_seg)
        self.out_of_time = now + need > self.end
        return self.out_of_time


def _eval_seconds(plan: DemoPlan, t_cg: float, t_seg: float) -> float:
    """Expected seconds of scoring and the report, from the seconds of one CycleGAN
    iteration and of one segmentation training step: per test image a twelfth of an
    iteration (the generators' forward passes) and, for the fake and the real photo, a
    segmentation forward pass (a third of a step of SEG_BATCH images), plus the files.
    Fitted to five 5-minute demos at load 9-13 on a 2-core machine (10-17 s; within 5 s)."""
    return 3.0 + plan.n_test * (t_cg / 12 + 2 * t_seg / (3 * SEG_BATCH))


def _num_classes() -> int:
    return len(SCENE_CLASSES)
