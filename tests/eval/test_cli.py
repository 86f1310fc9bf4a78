"""``spap eval`` and ``spap seg`` on tiny inputs."""

from __future__ import annotations

import json
import re

import pytest
import torch

import spap.inference
from spap.cli import main
from spap.eval import fidelity

from .test_fcn import Oracle


def test_eval_fid_kid_is_lines(segnet_ckpt, image_dirs, tmp_path, capsys) -> None:
    a, b = image_dirs
    common = [
        "--feature-extractor",
        "spap-segnet",
        "--weights",
        str(segnet_ckpt),
        "--cache-dir",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    out_json = tmp_path / "m.json"
    code = main(
        [
            "eval",
            "fid",
            "--real",
            str(a),
            "--fake",
            str(b),
            "--kid",
            "--is",
            "--kid-subset-size",
            "4",
            "--splits",
            "2",
            "--json",
            str(out_json),
            *common,
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    fid = float(re.search(r"^FID: (\S+)$", out, re.M).group(1))
    assert re.search(r"^KID: \S+ \+/- \S+$", out, re.M) and re.search(
        r"^IS: \S+ \+/- \S+$", out, re.M
    )
    ref = fidelity.compute_fid(
        a,
        b,
        feature_extractor="spap-segnet",
        weights_path=segnet_ckpt,
        cache_dir=tmp_path,
        device="cpu",
    )
    assert fid == pytest.approx(ref, abs=1e-4)
    saved = json.loads(out_json.read_text())
    assert saved["feature_extractor"] == "spap-segnet" and {"fid", "kid_mean", "is_mean"} <= set(
        saved
    )
    # statistics saved once, then used as --real
    stats = tmp_path / "real.npz"
    assert main(["eval", "stats", "--real", str(a), "--out", str(stats), *common]) == 0
    capsys.readouterr()
    assert main(["eval", "fid", "--real", str(stats), "--fake", str(b), *common]) == 0
    fid2 = float(re.search(r"^FID: (\S+)$", capsys.readouterr().out, re.M).group(1))
    # printed to 4 decimals; the saved statistics round-trip through a file, so the two
    # values may differ in the last printed digit
    assert fid2 == pytest.approx(fid, abs=3e-4)
    assert main(["eval", "is", "--fake", str(b), "--splits", "2", *common]) == 0
    assert re.search(r"^IS: ", capsys.readouterr().out, re.M)


def test_missing_inception_weights_exit_2_one_line(
    monkeypatch, tmp_path, image_dirs, capsys
) -> None:
    monkeypatch.delenv(fidelity.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    a, b = image_dirs
    assert main(["eval", "fid", "--real", str(a), "--fake", str(b)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fidelity.INCEPTION_FILE in err[0] and fidelity.INCEPTION_URL in err[0]


def test_eval_fcn_and_paired(aligned_dir, segnet_ckpt, tmp_path, monkeypatch, capsys) -> None:
    seen = []
    monkeypatch.setattr(
        spap.inference, "load", lambda path, device="auto": seen.append(path) or Oracle()
    )
    out_json = tmp_path / "fcn.json"
    code = main(
        [
            "eval",
            "fcn",
            "--checkpoint",
            "RUN",
            "--data",
            str(aligned_dir),
            "--segnet",
            str(segnet_ckpt),
            "--device",
            "cpu",
            "--json",
            str(out_json),
            "--save-images",
            str(tmp_path / "gen"),
        ]
    )
    assert code == 0 and seen == ["RUN"]
    out = capsys.readouterr().out
    assert re.search(r"^photo2labels\s+1\.000\s+1\.000\s+1\.000$", out, re.M)
    assert "labels2photo" in out and "real_photo" in out
    res = json.loads(out_json.read_text())
    assert res["photo2labels"]["pixel_acc"] == 1.0 and res["num_images"] == 6
    # the generated photos against the real photos (right halves of the aligned test images)
    code = main(
        [
            "eval",
            "paired",
            "--real",
            str(aligned_dir / "test"),
            "--real-half",
            "B",
            "--fake",
            str(tmp_path / "gen" / "labels2photo"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    psnr = float(re.search(r"^PSNR: (\S+) dB$", out, re.M).group(1))
    ssim = float(re.search(r"^SSIM: (\S+)$", out, re.M).group(1))
    assert 20 < psnr < 40 and 0 < ssim < 1  # clean class colours vs noisy photos
    assert "images: 6" in out
    code = main(["eval", "paired", "--real", str(aligned_dir / "train"), "--fake", str(tmp_path)])
    assert code == 2 and "no image of" in capsys.readouterr().err


def test_seg_train_and_eval(aligned_dir, tmp_path, capsys) -> None:
    code = main(
        [
            "seg",
            "train",
            "--data",
            str(aligned_dir),
            "--out",
            str(tmp_path / "seg"),
            "--steps",
            "3",
            "--size",
            "16",
            "--width",
            "4",
            "--batch-size",
            "4",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "segnet.pt" in out and "real test photos (6)" in out
    assert (
        main(
            [
                "seg",
                "eval",
                "--segnet",
                str(tmp_path / "seg"),
                "--data",
                str(aligned_dir),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "real_photo" in capsys.readouterr().out
    assert (
        main(["seg", "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    )
