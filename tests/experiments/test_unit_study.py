"""The unit study's runner resumes exactly, and its statistics match hand-computed numbers."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))

import studylib  # noqa: E402
import unit_study  # noqa: E402
from spap.layers import SPAP  # noqa: E402


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- Student's t


@pytest.mark.parametrize("t", [-7.0, -1.3, -0.2, 0.0, 0.4, 1.0, 2.5, 12.0])
def test_t_cdf_closed_forms(t):
    # df = 1 is the Cauchy distribution, df = 2 and df = 4 have closed forms too.
    assert studylib.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert studylib.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    u = 1 + t * t / 4
    f4 = 0.5 + 3 / 8 * t / math.sqrt(u) * (1 - t * t / (12 * u))
    assert studylib.t_cdf(t, 4) == pytest.approx(f4, abs=1e-12)


@pytest.mark.parametrize("p", [0.01, 0.2, 0.5, 0.8, 0.975, 0.999])
def test_t_ppf_closed_forms(p):
    assert studylib.t_ppf(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9, abs=1e-9)
    exact2 = (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    assert studylib.t_ppf(p, 2) == pytest.approx(exact2, rel=1e-9, abs=1e-9)


def test_t_ppf_table_values():
    # Printed t tables: t_{0.975}(4) = 2.776, t_{0.975}(10) = 2.228, t_{0.8}(8) = 0.889;
    # the normal quantiles 1.959964 and 0.841621 for a very large df.
    assert studylib.t_ppf(0.975, 4) == pytest.approx(2.7764451, abs=1e-6)
    assert studylib.t_ppf(0.975, 10) == pytest.approx(2.2281389, abs=1e-6)
    assert studylib.t_ppf(0.8, 8) == pytest.approx(0.8889, abs=1e-4)
    assert studylib.t_ppf(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)


def test_welch_by_hand():
    # equal sizes and variances: df = 2 (n - 1) = 4, se = sqrt(1/3 + 1/3)
    r = studylib.welch([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
    assert r["diff"] == pytest.approx(3.0)
    assert r["se"] == pytest.approx(math.sqrt(2 / 3))
    assert r["df"] == pytest.approx(4.0)
    t = 3 / math.sqrt(2 / 3)
    u = 1 + t * t / 4
    cdf4 = 0.5 + 3 / 8 * t / math.sqrt(u) * (1 - t * t / (12 * u))
    assert r["p"] == pytest.approx(2 * (1 - cdf4), rel=1e-9)
    half = 2.7764451 * math.sqrt(2 / 3)
    assert r["ci_low"] == pytest.approx(3 - half, abs=1e-6)
    assert r["ci_high"] == pytest.approx(3 + half, abs=1e-6)
    # unequal variances: se^2 = 2.5/5 + 10/5, df = 2.5^2 / (0.5^2/4 + 2^2/4) = 5.882...
    r = studylib.welch([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert r["diff"] == pytest.approx(-3.0)
    assert r["se"] == pytest.approx(math.sqrt(2.5))
    assert r["df"] == pytest.approx(6.25 / 1.0625)
    q = (r["ci_high"] - r["ci_low"]) / 2 / r["se"]
    assert 2.4469 < q < 2.5706  # between the table's t_{0.975}(6) and t_{0.975}(5)


def test_one_sample_holm_mde_by_hand():
    r = studylib.one_sample([0.1, 0.3, 0.2])  # mean 0.2, sd 0.1, df 2
    q2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # closed-form t_{0.975}(2) = 4.3027
    assert r["diff"] == pytest.approx(0.2)
    assert r["ci_high"] - r["diff"] == pytest.approx(q2 * 0.1 / math.sqrt(3), rel=1e-8)
    # sorted p 0.005, 0.01, 0.03, 0.04 -> 4x, 3x, 2x (0.06), 1x (0.04, raised to 0.06)
    adj = studylib.holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert adj[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adj[4])
    # large df: (z_{0.975} + z_{0.8}) * se = (1.959964 + 0.841621) * 2
    assert studylib.mde(2.0, 1e7) == pytest.approx(2 * 2.801585, abs=1e-4)
    assert studylib.mde(1.0, 4, alpha=0.05, power=0.8) == pytest.approx(
        2.7764451 + 0.9409646, abs=1e-5
    )
    assert math.isnan(studylib.mde(0.0, 4))


def test_mean_sd_and_cell():
    assert studylib.mean_sd([1.0, 2.0, None, math.nan, 3.0]) == (2.0, 1.0)
    assert studylib.cell([0.5, 0.7]) == "0.600 ± 0.141"
    assert studylib.cell([]) == "n/a"


# ----------------------------------------------------------------------------- the unit's weights


def test_branch_weights_by_hand():
    m0, m1 = torch.full((1, 1, 1, 1), 0.25), torch.full((1, 1, 1, 1), 0.5)
    # cascade 2 -> 1 -> 0: branch 1 comes in with 0.25, branch 0 with 0.5
    w = unit_study.branch_weights([m0, m1], [2, 1, 0]).flatten().tolist()
    assert w == pytest.approx([0.5, 0.25 * 0.5, 0.75 * 0.5])


@pytest.mark.parametrize("order", ["coarse_to_fine", "fine_to_coarse"])
def test_branch_weights_reproduce_a_linear_cascade(order):
    # Without conv stacks in the fuse blocks the cascade is a weighted sum of the branches:
    # the weights from the recorded maps must rebuild its output exactly.
    torch.manual_seed(0)
    unit = SPAP(8, (0, 1, 2, 4), inner_channels=8, order=order, fuse_layers=0, gamma_init=1.0)
    unit.project = nn.Identity()
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        y, w = unit_study.spap_weights(unit, x)
        feats = torch.stack([b(x) for b in unit.branches], 1)  # (N, K, C, H, W)
    assert w.sum(1).sub(1).abs().max() < 1e-6
    assert torch.allclose((w.unsqueeze(2) * feats).sum(1), y, atol=1e-5)


def test_parameters_matched():
    for width in (4, 8):
        for row in unit_study.parameter_table(width):
            assert 0.9 <= row["relative"] <= 1.1, row


# ----------------------------------------------------------------------------- the runner


def _study(out: Path) -> int:
    return unit_study.main(
        ["--out", str(out), "--part", "main", "--size", "32", "--n-train", "8", "--n-val", "4",
         "--n-test", "4", "--seeds", "0", "--width", "4", "--steps", "6", "--batch", "2",
         "--variants", "none", "spap_c2f"]
    )  # fmt: skip


def test_runner_resumes_exactly(tmp_path, monkeypatch, caplog):
    assert _study(tmp_path / "a") == 0
    # the same study, interrupted after the checkpoint of step 3 of its first run
    real = unit_study.batch

    def interrupted(split, seed, step, size):
        if step == 3:
            raise RuntimeError("interrupted")
        return real(split, seed, step, size)

    monkeypatch.setattr(unit_study, "batch", interrupted)
    assert _study(tmp_path / "b") == 1  # both runs fail at step 3, nothing is scored
    assert not list((tmp_path / "b" / "results").glob("*.json"))
    monkeypatch.setattr(unit_study, "batch", real)
    with caplog.at_level("INFO", logger="study"):
        assert _study(tmp_path / "b") == 0
    assert "none_w4_n6_s0: resuming at step 3" in caplog.text
    for name in ("none_w4_n6_s0", "spap_c2f_w4_n6_s0"):
        ra, rb = (json.loads((tmp_path / d / "results" / f"{name}.json").read_text()) for d in "ab")
        assert ra["test"] == rb["test"] and ra["gamma"] == rb["gamma"]
        sa, sb = (
            torch.load(tmp_path / d / "runs" / name / "checkpoint.pt", weights_only=True)["model"]
            for d in "ab"
        )
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # a finished study is not run again
    stamp = (tmp_path / "b" / "results" / "none_w4_n6_s0.json").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO", logger="study"):
        assert _study(tmp_path / "b") == 0
    assert "2 runs, 0 to do" in caplog.text
    assert (tmp_path / "b" / "results" / "none_w4_n6_s0.json").stat().st_mtime_ns == stamp
    assert "| spap_c2f |" in (tmp_path / "b" / "unit_study.md").read_text()


def test_unit_share():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    net = unit_study.UnitNet("spap_c2f", 4).eval()
    assert unit_study.unit_share(net, x) == 0.0  # gamma = 0: the unit is the identity
    with torch.no_grad():
        f = net.encoder(x)
        net.unit.gamma.fill_(1.0)
        h = net.unit(f)  # gamma = 1: the cascade's output alone
        net.unit.gamma.fill_(0.5)  # y - skip = h / 2 and skip = f / 2
    assert unit_study.unit_share(net, x) == pytest.approx(float(h.norm() / f.norm()), rel=1e-5)
    sagan = unit_study.UnitNet("sagan", 4).eval()
    assert unit_study.unit_share(sagan, x) == 0.0
    assert unit_study.unit_share(unit_study.UnitNet("none", 4), x) is None


@pytest.mark.parametrize("val_from", ["train", "scenes"])
def test_validation_split_is_not_the_test_split(tmp_path, val_from):
    args = unit_study.argparse.Namespace(
        n_train=6, n_val=2, n_test=2, size=32, data_seed=0, val_from=val_from
    )
    meta = unit_study.prepare(args, tmp_path)
    splits = unit_study.load_scenes(Path(meta["data"]), args.n_val)
    assert [len(splits[k][0]) for k in ("train", "val", "test")] == [6, 2, 2]
    flat = {k: splits[k][0].flatten(1) for k in splits}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert torch.cdist(flat[a], flat[b]).min() > 0  # no scene in two splits
