"""Part 2 of the CycleGAN study (``experiments/study.py --part cyclegan2``): a tiny run of the
whole part resumes instead of repeating, measures the compute-matched baseline's iterations,
records γ curves and CPU time; its statistics match hand-computed numbers."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))

import study  # noqa: E402

TINY = [
    "--part", "cyclegan2", "--size", "32", "--n-train", "20", "--n-test", "4",
    "--seg-steps", "2", "--cg-steps", "4", "--cg-width", "4", "--seeds", "0", "1",
    "--jobs", "0", "--eval-points", "2",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _results(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))}


def test_tiny_part2_runs_resumes_and_matches_compute(tmp_path):
    out = tmp_path / "cg2"
    assert study.main([*TINY, "--out", str(out)]) == 0
    res = _results(out)
    assert sorted(res) == sorted(f"cg2_{v}_s{s}" for v in study.CG2_VARIANTS for s in (0, 1))
    # the compute-matched baseline: --cg-steps x measured CPU ratio of spap_c2f to baseline
    matched = json.loads((out / "cyclegan2_matched.json").read_text())
    cpi = {
        v: sum(res[f"cg2_{v}_s{s}"]["cpu_seconds_per_iteration"] for s in (0, 1)) / 2
        for v in ("baseline", "spap_c2f")
    }
    assert matched["ratio"] == pytest.approx(cpi["spap_c2f"] / cpi["baseline"])
    assert matched["steps"] == round(4 * matched["ratio"])
    assert all(res[f"cg2_baseline_cm_s{s}"]["steps"] == matched["steps"] for s in (0, 1))
    for name, r in res.items():
        pieces = json.loads((out / "runs" / name / "cpu.json").read_text())
        assert [(p["from"], p["to"]) for p in pieces] == [(0, r["steps"])]
        assert r["cpu_seconds"] == pytest.approx(pieces[0]["cpu"]) and r["cpu_seconds"] > 0
        assert set(r["by_phase"]) == {"test", "val"}
        assert set(r["scores"]) == {"photo2labels", "labels2photo"}
        # validation curve: an evaluation every steps // 2 iterations and after the last
        every = r["steps"] // 2
        want = sorted({*range(every, r["steps"] + 1, every), r["steps"]})
        assert [s for s, _ in r["eval_curve"]["eval/fcn_AtoB"]] == want
    glr = res["cg2_spap_c2f_glr_s0"]
    assert glr["train"] == {"gamma_lr_mult": study.CG2_DEFAULTS["gamma_lr_mult"]}
    assert res["cg2_spap_c2f_s0"]["train"] == {}
    # γ curves from TensorBoard: one per unit (G after the trunk, D after layer 2)
    nets = sorted(tag.split("/")[1] for tag in glr["gamma_curve"])
    assert nets == ["D_A", "D_B", "G_A", "G_B"]
    assert all(t.endswith("layer_2/gamma") for t in glr["gamma_curve"] if "/D_" in t)
    assert res["cg2_baseline_s0"]["gamma_curve"] == {}
    text = (out / "cyclegan2.md").read_text()
    assert "10 of 10 runs done" in text
    assert "| spap_c2f_glr − baseline_cm | labels→photo |" in text
    assert (out / "cyclegan2_gamma.png").is_file()

    # repeating the command trains nothing and rewrites no result
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()}
    assert study.main([*TINY, "--out", str(out)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()} == stamps
    assert all(len(json.loads((out / "runs" / n / "cpu.json").read_text())) == 1 for n in res)


def test_time_budget_stops_a_run_and_the_next_call_resumes_it(tmp_path, monkeypatch):
    out = tmp_path / "cg2"
    assert study.main([*TINY, "--out", str(out), "--seeds", "0", "--hours", "1e-9"]) == 1
    assert not list((out / "results").glob("*.json"))  # the budget was spent at once
    # one job by hand: its start passes the budget, the check after iteration 1 stops it
    spec = {
        "name": "one", "variant": "spap_c2f", "model": study.CG2_VARIANTS["spap_c2f"],
        "data": str(out / "data"), "segnet": None, "size": 32, "threads": 1, "seed": 0,
        "steps": 4, "n_train": 20, "width": 4, "run_dir": str(out / "runs" / "one"),
        "phases": ["val"],
    }  # fmt: skip
    clock = iter([0.0])
    real = study.time.time
    monkeypatch.setattr(study.time, "time", lambda: next(clock, 10.0))
    with pytest.raises(RuntimeError, match="stopped at iteration 1 of 4"):
        study.cyclegan_job({**spec, "deadline": 5.0})
    monkeypatch.setattr(study.time, "time", real)
    r = study.cyclegan_job(spec)
    pieces = json.loads((out / "runs" / "one" / "cpu.json").read_text())
    assert [(p["from"], p["to"]) for p in pieces] == [(0, 1), (1, 4)]
    assert r["steps"] == 4 and set(r["scores"]) == {"photo2labels"}  # no segnet: one way
    assert r["cpu_seconds"] == pytest.approx(pieces[0]["cpu"] + pieces[1]["cpu"])


def _fake(variant: str, seed: int, iou: float, road: float) -> dict:
    per = [{"name": c, "iou": road if c == "road" else 0.5} for c in study.TEXTURE_CLASSES]
    return {
        "variant": variant,
        "seed": seed,
        "scores": {d: {"class_iou": iou} for d in ("photo2labels", "labels2photo")},
        "per_class": {d: per for d in ("photo2labels", "labels2photo")},
        "cpu_seconds_per_iteration": 0.1 if variant == "baseline" else 0.15,
    }


def test_comparisons_match_hand_computed_welch_holm_and_mde():
    base = [1.0, 2.0, 3.0, 4.0, 5.0]
    results = [_fake("baseline", s, x, x) for s, x in enumerate(base)]
    results += [_fake("spap_c2f", s, x + 3.0, x + 1.0) for s, x in enumerate(base)]
    tests = study.compare2(results)  # only spap_c2f - baseline has runs on both sides
    main = [t for t in tests if t["family"] == "mIoU"]
    assert [(t["a"], t["b"], t["direction"]) for t in main] == [
        ("spap_c2f", "baseline", "photo2labels"),
        ("spap_c2f", "baseline", "labels2photo"),
    ]
    # equal sizes and variances: df = 2 (n - 1) = 8, se = sqrt(2.5 / 5 * 2) = 1;
    # t table: t_0.975(8) = 2.306004, t_0.9875(8) = 2.751524, t_0.8(8) = 0.888889
    t = main[0]
    assert (t["diff"], t["se"], t["df"]) == pytest.approx((3.0, 1.0, 8.0))
    assert (t["ci_low"], t["ci_high"]) == pytest.approx((3.0 - 2.306004, 3.0 + 2.306004), abs=1e-5)
    assert t["p_holm"] == pytest.approx(min(1.0, 2 * t["p"]))  # two tests, equal p
    assert t["family_size"] == 2
    assert t["mde"] == pytest.approx(2.751524 + 0.888889, abs=1e-4)
    tex = [t for t in tests if t["family"] == "texture"]
    assert len(tex) == 8 and all(t["family_size"] == 8 for t in tex)
    road = next(t for t in tex if t["metric"] == "road" and t["direction"] == "photo2labels")
    assert road["diff"] == pytest.approx(1.0)
    flat = next(t for t in tex if t["metric"] == "sidewalk")
    assert flat["diff"] == 0.0 and math.isnan(flat["p"])  # no spread: nothing to test
    # the p-values Holm adjusts are the Welch ones: the smallest times the family size
    ps = sorted(t["p"] for t in tex if not math.isnan(t["p"]))
    assert min(t["p_holm"] for t in tex if not math.isnan(t["p"])) == pytest.approx(
        min(1.0, len(ps) * ps[0])
    )


def test_matched_steps_are_measured_once_and_kept(tmp_path):
    args = argparse.Namespace(seeds=[0, 1], cg_steps=1000, tag="")
    runs = [_fake(v, s, 0.0, 0.0) for v in ("baseline", "spap_c2f") for s in (0, 1)]
    assert study.matched_steps(tmp_path, runs[:3], args) is None  # spap_c2f seed 1 missing
    assert study.matched_steps(tmp_path, runs, args) == 1500
    for r in runs:
        r["cpu_seconds_per_iteration"] = 1.0
    assert study.matched_steps(tmp_path, runs, args) == 1500  # fixed by the first call


def test_curve_at_takes_the_last_value_logged_by_then():
    curve = [[1, 0.0], [50, 0.1], [100, 0.3]]
    assert study.curve_at(curve, 0) is None
    assert study.curve_at(curve, 75) == 0.1
    assert study.curve_at(curve, 100) == 0.3
