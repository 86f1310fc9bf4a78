"""What a new user meets first: config discovery (``spap config``, ``--print-config``, each
task's ``--help``), messages that name their fix, the ``Translator``'s NumPy convenience,
the demo's hints and time budget."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ranks import cli_worker, free_port
from spap.cli import main
from spap.cli.config import config_yaml, format_table, resolve_target
from spap.config import (
    CONFIG_DIR,
    ConfigKey,
    describe,
    from_dict,
    load_config,
    shipped_configs,
    type_name,
)
from spap.errors import ConfigError
from spap.systems import SYSTEMS

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v0_1"
CYCLEGAN_CKPT = FIXTURES / "cyclegan_step4.pt"
GAN_CKPT = FIXTURES / "gan_step4.pt"


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if "error:" in ln]


# ----------------------------------------------------------------------------- describe


def test_describe_gives_type_default_and_help_of_every_key() -> None:
    rows = {r.key: r for r in describe(SYSTEMS["cyclegan"].config_class)}
    assert all(isinstance(r, ConfigKey) for r in rows.values())
    assert rows["data.root"] == ConfigKey(
        "data.root", "str | None", "None", "dataset folder (--data sets it)"
    )
    assert rows["run.precision"].type == "str, one of fp32, bf16, fp16"
    assert rows["run.steps"].type == "int | None, >= 1"
    assert rows["train.lr"].default == "0.0002"
    assert rows["model.g_attention_at"].type == "list[str]"
    assert type_name(dict[int, str]) == "dict[int, str]"
    assert type_name(tuple[float, ...]) == "tuple[float, ...]"


# ----------------------------------------------------------------------------- config show


@pytest.mark.parametrize("kind", sorted(SYSTEMS))
def test_config_show_lists_every_key_once_with_its_default(kind: str, capsys) -> None:
    assert main(["config", "show", kind]) == 0
    out = capsys.readouterr().out
    rows = describe(SYSTEMS[kind].config_class)
    assert out.splitlines()[0] == f"{kind} config (defaults): {len(rows)} keys"
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ")}
    assert set(lines) == {r.key for r in rows}
    for r in rows:
        key, value = lines[r.key].split()[:2]
        assert value == r.default.split()[0] and r.help.split()[0] in lines[r.key]
        assert "[default" not in lines[r.key]


def test_config_show_of_a_config_marks_what_it_changes(capsys) -> None:
    argv = ["config", "show", "cyclegan/facades_spap", "train.lr=1e-4"]
    assert main(argv) == 0
    lines = {
        ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")
    }
    assert lines["model.attention"].split()[1] == "'spap'"
    assert lines["model.attention"].endswith("[default 'none']")
    assert lines["train.lr"].split()[1] == "0.0001"
    assert lines["train.lr"].endswith("[default 0.0002]")
    assert "[default" not in lines["train.batch_size"]


def test_config_show_yaml_is_the_config_train_would_use(capsys) -> None:
    argv = ["config", "show", "gan/scenes64_spap_c2f", "train.n_dis=2", "--format", "yaml"]
    assert main(argv) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    cls = SYSTEMS["gan"].config_class
    expected = load_config(cls, "gan/scenes64_spap_c2f", ["train.n_dis=2"])
    assert from_dict(cls, shown) == expected
    assert config_yaml(expected) == yaml.safe_dump(shown, sort_keys=False)


def test_config_show_markdown_table(capsys) -> None:
    assert main(["config", "show", "gan", "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| key | type | default | meaning |"
    assert len(lines) == 2 + len(describe(SYSTEMS["gan"].config_class))
    assert "| `run.device` | str | `'auto'` | auto \\| cpu \\| cuda \\| cuda:N |" in lines


def test_config_show_of_a_user_file_finds_its_task(tmp_path: Path) -> None:
    gan_file = tmp_path / "mine.yaml"
    gan_file.write_text("base: " + str(CONFIG_DIR / "gan/scenes64_baseline.yaml") + "\n")
    kind, cfg, _ = resolve_target(str(gan_file))
    assert kind == "gan" and cfg.data.size == 64
    (tmp_path / "cg.yaml").write_text("data: {crop_size: 128}\n")
    kind, cfg, _ = resolve_target(str(tmp_path / "cg.yaml"))
    assert kind == "cyclegan" and cfg.data.crop_size == 128
    both = tmp_path / "both.yaml"
    both.write_text("train: {batch_size: 2}\n")  # a key both schemas have
    with pytest.raises(ConfigError, match="fits both cyclegan and gan configs; pass --kind"):
        resolve_target(str(both))
    assert resolve_target(str(both), kind="gan")[0] == "gan"
    (tmp_path / "neither.yaml").write_text("data: {colour: red}\n")
    with pytest.raises(ConfigError, match="fits no task's config"):
        resolve_target(str(tmp_path / "neither.yaml"))


def test_config_show_bad_target_and_bad_override_are_one_line(capsys) -> None:
    assert main(["config", "show", "cyclegan/facade_spap"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "did you mean 'cyclegan/facades_spap'?" in line
    assert main(["config", "show", "cyclegan", "train.lrr=1"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "unknown config key 'train.lrr'" in line and "'train.lr'" in line


def test_config_list_names_every_shipped_config(capsys) -> None:
    assert main(["config", "list"]) == 0
    out = capsys.readouterr().out
    names = shipped_configs()
    assert {ln.split()[0] for ln in out.splitlines() if "/" in ln.split(" ")[0]} == set(names)
    assert len(names) == len(list(CONFIG_DIR.rglob("*.yaml")))
    assert re.search(r"^cyclegan/facades_spap +facades.yaml with SPAP units", out, re.M)


def test_format_table_groups_keys_by_section() -> None:
    kind, cfg, source = resolve_target("cyclegan")
    text = format_table(cfg, kind, source)
    heads = [ln.split(":")[0] for ln in text.splitlines() if ln and not ln.startswith(" ")][2:]
    assert heads == ["run", "data", "model", "train"]


# ----------------------------------------------------------------------------- spap train


def test_each_task_has_its_own_help(capsys) -> None:
    texts = {}
    for argv in (["train", "--help"], ["train", "cyclegan", "--help"], ["train", "gan", "-h"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        texts[argv[1]] = capsys.readouterr().out
    assert len(set(texts.values())) == 3
    assert "spap train cyclegan --help" in texts["--help"]
    for kind in SYSTEMS:
        text = texts[kind]
        doc = SYSTEMS[kind].config_class.__doc__.split(":")[0]
        assert text.startswith(f"usage: spap train {kind} ") and doc in text
        assert f"spap config show {kind} " in text and "--print-config" in text
        assert f"{len(describe(SYSTEMS[kind].config_class))} keys" in text
        assert "{cyclegan,gan}" not in text


def test_print_config_prints_the_resolved_config_and_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "cyclegan", "--data", str(tmp_path / "data"), "--out", str(out),
            "--config", "cyclegan/facades_spap", "--size", "128", "--steps", "7",
            "train.lr=1e-4", "--print-config"]  # fmt: skip
    assert main(argv) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["data"]["root"] == str(tmp_path / "data")
    assert shown["data"]["crop_size"] == 128 and shown["run"]["steps"] == 7
    assert shown["train"]["lr"] == 1e-4 and shown["model"]["attention"] == "spap"
    assert not out.exists() and not (tmp_path / "data").exists()
    # --out is needed to train, not to print
    assert main(["train", "gan", "--print-config", "train.n_dis=3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["n_dis"] == 3
    assert main(["train", "gan", "--data", str(tmp_path)]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "required: --out" in line


def test_unrecognized_arguments_are_listed_without_the_valid_overrides(capsys) -> None:
    argv = ["train", "gan", "--out", "o", "train.lr=1e-4", "--bogus", "1", "model.g_ch=4"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.endswith("error: unrecognized arguments: --bogus 1")
    # a command without key=value overrides reports such words too
    with pytest.raises(SystemExit):
        main(["sample", "--checkpoint", "c", "--num", "1", "--output", "o", "a=b"])
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.endswith("unrecognized arguments: a=b")


def test_a_misspelt_config_name_gets_the_closest_shipped_one(capsys) -> None:
    argv = ["train", "cyclegan", "--config", "cyclegan/facade_spap", "--print-config"]
    assert main(argv) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "config file not found: cyclegan/facade_spap" in line
    assert "did you mean 'cyclegan/facades_spap'?" in line and "spap config list" in line


def test_too_few_images_for_a_batch_names_the_key(tmp_path: Path, capsys) -> None:
    data = tmp_path / "images"
    data.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "run"
    argv = ["train", "gan", "--data", str(data), "--out", str(out), "--size", "32",
            "model.g_ch=4", "model.d_ch=4", "model.z_dim=8", "run.num_workers=0"]  # fmt: skip
    assert main([*argv, "train.batch_size=4", "train.n_dis=1"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "3 usable items, fewer than one batch of 4 per process" in line
    assert line.endswith("lower train.batch_size or add data")
    assert main([*argv, "train.batch_size=2", "train.n_dis=2"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "lower train.batch_size (or train.n_dis) or add data" in line
    assert not out.exists()


# ----------------------------------------------------------------------------- outputs


@pytest.mark.parametrize(
    "argv",
    [
        ["translate", "--checkpoint", str(CYCLEGAN_CKPT), "--input", "IMG", "--output"],
        ["sample", "--checkpoint", str(GAN_CKPT), "--num", "2", "--output"],
    ],
    ids=["translate", "sample"],
)
def test_output_that_is_a_file_is_refused_in_one_line(argv, tmp_path: Path, capsys) -> None:
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    argv = [str(img) if a == "IMG" else a for a in argv]
    assert main([*argv, str(blocker)]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.endswith(f"--output {blocker} is a file, not a folder; name a folder (new or "
                         "existing) to write into")  # fmt: skip
    assert main([*argv, str(blocker / "sub")]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.endswith(f"cannot be created: {blocker} is a file, not a folder")
    assert blocker.read_text() == "keep me"


# ----------------------------------------------------------------------------- Translator


@pytest.fixture(scope="module")
def translator():
    from spap.inference.translate import Translator

    return Translator.from_checkpoint(CYCLEGAN_CKPT, device="cpu")


def test_translate_takes_and_returns_numpy_arrays(translator) -> None:
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
    out = translator.translate(u8, "AtoB")
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (20, 28, 3)
    np.testing.assert_array_equal(out, np.asarray(translator.translate(Image.fromarray(u8))))
    # floats in [0, 1]: the same translation, as floats in [0, 1] of the input's dtype
    f64 = u8 / 255.0
    out_f = translator.translate(f64, "AtoB")
    assert out_f.dtype == np.float64 and out_f.shape == u8.shape
    assert out_f.min() >= 0.0 and out_f.max() <= 1.0
    t = torch.from_numpy(u8).permute(2, 0, 1).float() / 127.5 - 1
    ref = (translator.translate(t, "AtoB").clamp(-1, 1) + 1) / 2
    np.testing.assert_allclose(out_f, ref.permute(1, 2, 0).numpy(), atol=1e-5)
    # a batch (N, H, W, C)
    batch = translator.translate(np.stack([u8, u8[::-1].copy()]), "BtoA")
    assert batch.shape == (2, 20, 28, 3)
    np.testing.assert_array_equal(batch[0], translator.translate(u8, "BtoA"))
    y, maps = translator.translate_with_attention(u8, "AtoB")
    np.testing.assert_array_equal(y, out)
    assert maps and all(m.shape == (1, 1, 20, 28) for m in maps.values())


def test_translate_rejects_unusable_arrays_saying_what_to_pass(translator) -> None:
    u8 = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match=r"got shape \(3, 16, 16\).*transpose\(1, 2, 0\)"):
        translator.translate(u8.transpose(2, 0, 1))
    with pytest.raises(ValueError, match=r"values in \[0, 1\], got \[0, 255\]"):
        translator.translate(np.linspace(0, 255, 16 * 16 * 3).reshape(16, 16, 3))
    with pytest.raises(TypeError, match="uint8 or float"):
        translator.translate(u8.astype(np.int64))


def test_translate_folder_refuses_a_file_as_output(translator, tmp_path: Path) -> None:
    from spap.errors import SpapError

    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    with pytest.raises(SpapError, match="is a file; name a folder"):
        translator.translate_folder(img, img)


# ----------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_finished_is_said_once_under_two_processes(tmp_path: Path, capfd) -> None:
    import torch.multiprocessing as mp

    data = tmp_path / "images"
    data.mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 50 * i, np.uint8)).save(data / f"{i}.png")
    argv = ["train", "gan", "--data", str(data), "--out", str(tmp_path / "run"), "--size",
            "32", "--steps", "1", "train.batch_size=2", "train.n_dis=1", "model.g_ch=4",
            "model.d_ch=4", "model.z_dim=8", "run.num_workers=0"]  # fmt: skip
    mp.spawn(cli_worker, args=(2, free_port(), argv), nprocs=2, join=True)
    err = capfd.readouterr().err
    assert err.count("finished at step 1") == 1


# ----------------------------------------------------------------------------- eval


def test_is_without_weights_names_the_is_weights(tmp_path: Path, monkeypatch, capsys) -> None:
    pytest.importorskip("torch_fidelity")
    from spap.eval import fidelity

    monkeypatch.delenv(fidelity.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    images = tmp_path / "fake"
    images.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "0.png")
    assert main(["eval", "is", "--fake", str(images), "--device", "cpu", "--no-cache"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "the Inception weights for IS are missing" in line and "FID" not in line
    argv = ["eval", "fid", "--real", str(images), "--fake", str(images), "--kid", "--no-cache"]
    assert main(argv) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "the Inception weights for FID and KID are missing" in line


def test_kid_subsets_are_smaller_than_the_sets() -> None:
    pytest.importorskip("torch_fidelity")
    from spap.eval.fidelity import kid_size

    assert kid_size(1000, 50, 50) == 25  # the default on 50 images: halves, which vary
    assert kid_size(1000, 5000, 3000) == 1000
    assert kid_size(4, 8, 8) == 4
    assert kid_size(8, 8, 10) == 4  # a subset of the whole smaller set would never vary
    assert kid_size(1000, 3, 2) == 2


# ----------------------------------------------------------------------------- the demo


def test_demo_clock_stops_the_cyclegan_at_the_budget() -> None:
    from spap.apps.demo import _Clock, _eval_seconds, plan_demo

    plan = plan_demo(1, 32)
    clock = _Clock(time.perf_counter() + 0.3, plan, t_seg=0.0, min_steps=3)
    assert _eval_seconds(plan, 0.0, 0.0) > 0.3  # scoring alone does not fit: the minimum runs
    assert [clock(step) for step in (1, 2, 3)] == [False, False, True]
    assert clock.trained == 3 and clock.out_of_time
    clock = _Clock(time.perf_counter() + 3600, plan, t_seg=0.0, min_steps=0)
    assert not any(clock(step) for step in range(1, 6))  # an hour holds five iterations


@pytest.mark.slow
def test_demo_report_hints_both_directions_and_captions_its_rows(tmp_path: Path) -> None:
    import html as html_lib

    from spap.apps.demo import run_demo

    metrics = run_demo(tmp_path / "demo", minutes=0.1, size=32, threads=1, echo=lambda _: None)
    page = html_lib.unescape((tmp_path / "demo" / "report" / "index.html").read_text())
    assert "--direction AtoB --input LABEL_MAPS" in page
    assert "--direction BtoA --input PHOTOS (photos to label maps)" in page
    caption = re.search(r'src="photo_to_labels\.png".*?<figcaption>(.*?)</figcaption>', page)
    assert caption is not None
    rows = caption.group(1).split("rows, top to bottom: ")[1].rstrip(")").split(", ")
    assert len(rows) == 5 and rows[3] == "generated labels mapped to the nearest class colour"
    info = metrics["info"]
    assert 4 <= info["cyclegan_steps"] <= info["cyclegan_steps_planned"]


@pytest.mark.slow
def test_demo_cyclegan_stops_at_its_clock(tmp_path: Path) -> None:
    """Through the real training loop: ``should_stop`` ends the run after the iteration it
    says so, with a final checkpoint holding exactly the weights of a run of that length."""
    import dataclasses

    from spap.apps.demo import _Clock, cyclegan_config, plan_demo, write_data
    from spap.train.checkpoint import load_checkpoint
    from spap.train.cyclegan import CycleGANTask
    from spap.train.loop import run

    plan = plan_demo(0.2, 32)
    write_data(tmp_path / "data", plan, seed=0)
    cfg = cyclegan_config(tmp_path / "data", plan, 0, "cpu", steps=6)
    small = {"ngf": 4, "ndf": 4, "n_blocks": 1}
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **small))
    clock = _Clock(time.perf_counter(), plan, t_seg=0.0, min_steps=2)  # out of time at once
    summary = run(CycleGANTask, cfg, tmp_path / "budgeted", should_stop=clock)
    assert summary["step"] == clock.trained == 2 and clock.out_of_time
    plain = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, steps=2))
    run(CycleGANTask, plain, tmp_path / "plain")
    budgeted = load_checkpoint(tmp_path / "budgeted", kind="cyclegan")
    reference = load_checkpoint(tmp_path / "plain", kind="cyclegan")
    assert budgeted["step"] == reference["step"] == 2
    for name in ("G_A", "G_B", "D_A", "D_B"):
        got, want = budgeted["task"]["models"][name], reference["task"]["models"][name]
        assert all(torch.equal(got[k], want[k]) for k in want), name
