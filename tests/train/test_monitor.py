"""Evaluation during training, ``best`` beside ``latest``, attention-health scalars and
warnings (tiny CPU runs; scalars read back with TensorBoard's event reader)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from spap.apps.report import read_scalars
from spap.errors import CheckpointError
from spap.train.checkpoint import load_checkpoint, resolve_checkpoint
from spap.train.evaluation import edge_ssim, lower_is_better
from train.runs import train_cyclegan, train_gan, write_folder, write_unpaired


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_unpaired(tmp_path_factory.mktemp("unpaired"))


def test_edge_ssim_and_direction() -> None:
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert edge_ssim(x, x) == pytest.approx(1.0, abs=1e-5)
    assert edge_ssim(x, torch.rand(2, 3, 32, 32) * 2 - 1) < 0.5
    assert lower_is_better("fid_AtoB[inception]") and lower_is_better("eval/cycle_BtoA")
    assert not lower_is_better("structure_AtoB") and not lower_is_better("fcn_AtoB")


def test_eval_best_latest_scalars_and_resume(data, tmp_path, caplog) -> None:
    run = tmp_path / "run"
    caplog.set_level(logging.INFO)
    # structure_AtoB picks the best: higher is better
    over = ["run.eval_every=2", "run.eval_images=4", "run.best_metric=eval/structure_AtoB"]
    assert train_cyclegan(data, run, 4, *over) == 0
    tb = run / "tb"
    ev = read_scalars(tb, prefix="eval/")
    assert {"structure_AtoB", "structure_BtoA", "cycle_AtoB", "cycle_BtoA"} <= set(ev)
    assert [s for s, _ in ev["structure_AtoB"]] == [2, 4]
    perf = read_scalars(tb, prefix="perf/")
    assert [s for s, _ in perf["eval_seconds"]] == [2, 4] and all(
        v > 0 for _, v in perf["eval_seconds"]
    )
    assert all(0 < v < 1 for _, v in perf["eval_fraction"])
    att = read_scalars(tb, prefix="attention/")
    gammas = [k for k in att if k.endswith("/gamma")]
    # every unit of every network: G_A, G_B, D_A, D_B each hold one
    assert {k.split("/")[0] for k in gammas} == {"G_A", "G_B", "D_A", "D_B"}
    assert any(k.startswith("G_A/") and k.endswith("/entropy") for k in att)
    assert any(k.startswith("G_A/") and k.endswith("/rate0") for k in att)  # rates 0,1,2
    for k in att:
        if k.endswith("/entropy") or "/rate" in k:
            assert all(0 <= v <= 1 for _, v in att[k]), k

    values = dict(ev["structure_AtoB"])
    best_step = max(values, key=values.get)
    folder = run / "checkpoints"
    assert (folder / "latest").read_text() == "step_0000004.pt"
    best_file = resolve_checkpoint(f"{run}:best")
    assert best_file.name == f"best_step_{best_step:07d}.pt"
    assert load_checkpoint(f"{run}:best")["step"] == best_step
    assert resolve_checkpoint(run).name == "step_0000004.pt"  # RUN keeps meaning latest
    assert any(
        "best" in r.getMessage() and "eval at step 4" in r.getMessage() for r in caplog.records
    )

    # resume: best and latest both intact, the best value carried on in the checkpoint
    assert train_cyclegan(data, run, 6, *over, "--resume", "run.keep_last=1") == 0
    state = load_checkpoint(run)
    assert state["step"] == 6
    best = state["monitor"]["best"]
    ev = dict(read_scalars(tb, prefix="eval/")["structure_AtoB"])
    assert sorted(ev) == [2, 4, 6]
    assert best["step"] == max(ev, key=ev.get) and best["value"] == pytest.approx(max(ev.values()))
    assert resolve_checkpoint(f"{run}:best").name == f"best_step_{best['step']:07d}.pt"
    assert len(list(folder.glob("best_step_*.pt"))) == 1
    assert [p.name for p in folder.glob("step_*.pt")] == ["step_0000006.pt"]  # keep_last=1


def test_best_of_a_run_without_evaluation_is_one_line_error(data, tmp_path) -> None:
    assert train_cyclegan(data, tmp_path / "r", 1) == 0
    with pytest.raises(CheckpointError, match="no best checkpoint.*run.eval_every"):
        resolve_checkpoint(f"{tmp_path / 'r'}:best")


WARNINGS = {
    "flat gamma": (["run.health_gamma_steps=2", "run.health_gamma_eps=10"], "gamma is"),
    "identity collapse": (["run.health_identity_below=10"], "identity collapse AtoB"),
    "colour inversion": (["run.health_inversion_below=1"], "colour inversion AtoB"),
    "discriminator wins": (
        ["run.health_d_loss_below=100", "run.health_d_window=2"],
        "the discriminator wins everything",
    ),
}


@pytest.mark.parametrize("name", list(WARNINGS))
def test_health_warnings_once_with_step(name, data, tmp_path, caplog) -> None:
    over, text = WARNINGS[name]
    caplog.set_level(logging.WARNING)
    assert train_cyclegan(data, tmp_path / "r", 4, *over) == 0
    hits = [r.getMessage() for r in caplog.records if text in r.getMessage()]
    # once per run (flat gamma: once per unit, G_A G_B D_A D_B), though checked at 1, 2, 4
    assert len(hits) == (4 if name == "flat gamma" else 1), hits
    assert all(re.match(r"health at step [1-4]: ", h) for h in hits), hits
    others = [t for n, (_, t) in WARNINGS.items() if n != name]
    assert not any(t in r.getMessage() for r in caplog.records for t in others)


def test_default_thresholds_stay_quiet(data, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    assert train_cyclegan(data, tmp_path / "r", 3) == 0
    assert not [r for r in caplog.records if "health at step" in r.getMessage()]


def test_gan_logs_gamma_of_g_d_and_ema(tmp_path) -> None:
    images = write_folder(tmp_path / "img")
    assert train_gan(images, tmp_path / "g", 2) == 0
    att = read_scalars(tmp_path / "g" / "tb", prefix="attention/")
    nets = {k.split("/")[0] for k in att if k.endswith("/gamma")}
    assert nets == {"G", "D", "G_ema"}
    assert any(k.startswith("G_ema/") and k.endswith("/entropy") for k in att)
