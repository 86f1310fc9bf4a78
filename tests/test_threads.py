"""The thread rule (spap.devices): cgroup CPU quotas (v1 and v2) read from crafted files,
CPU affinity respected in a real child process, OMP_NUM_THREADS and torchrun's local world
size, and ``--threads`` / ``run.threads`` reaching ``torch.get_num_threads()`` through the
``spap`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from spap.cli import build_parser, main, parse_args, quiet_openmp_wait
from spap.config import RunConfig, from_dict
from spap.devices import cgroup_cpu_limit, default_threads, set_threads, usable_cpus
from spap.errors import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _v2(tmp_path: Path, limits: dict[str, str], own: str = "/a/b") -> tuple[Path, Path]:
    """A cgroup v2 tree: ``limits`` maps a cgroup path to its cpu.max line."""
    root = tmp_path / "cgroup"
    _write(root / "cgroup.controllers", "cpu memory")
    for sub, line in limits.items():
        _write(root / sub.lstrip("/") / "cpu.max", line + "\n")
    (root / own.lstrip("/")).mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "proc_cgroup"
    _write(proc, f"0::{own}\n")
    return root, proc


def test_cgroup_v2_quota_smallest_up_the_tree(tmp_path: Path) -> None:
    root, proc = _v2(tmp_path, {"/a/b": "150000 100000", "/a": "300000 100000"})
    assert cgroup_cpu_limit(root, proc) == pytest.approx(1.5)
    assert usable_cpus(affinity=8, cgroup_root=root, proc_cgroup=proc) == 2  # rounded up
    root, proc = _v2(tmp_path / "2", {"/a/b": "max 100000", "/a": "50000 100000"})
    assert cgroup_cpu_limit(root, proc) == pytest.approx(0.5)
    assert usable_cpus(affinity=8, cgroup_root=root, proc_cgroup=proc) == 1  # at least 1


def test_cgroup_v2_no_quota_and_garbage(tmp_path: Path) -> None:
    root, proc = _v2(tmp_path, {"/a/b": "max 100000"})
    assert cgroup_cpu_limit(root, proc) is None
    assert usable_cpus(affinity=6, cgroup_root=root, proc_cgroup=proc) == 6
    root, proc = _v2(tmp_path / "g", {"/a/b": "lots of cpu", "/a": "0 100000"})
    assert cgroup_cpu_limit(root, proc) is None
    assert cgroup_cpu_limit(tmp_path / "none", tmp_path / "none.txt") is None


def test_cgroup_v2_inside_a_container_namespace(tmp_path: Path) -> None:
    """The process's cgroup path is not visible under the mount (the container's own
    cgroup is the mount's root): the root's cpu.max applies."""
    root = tmp_path / "cgroup"
    _write(root / "cgroup.controllers", "cpu")
    _write(root / "cpu.max", "400000 100000\n")
    proc = tmp_path / "proc_cgroup"
    _write(proc, "0::/kubepods/pod1/abc\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(4.0)
    assert usable_cpus(affinity=64, cgroup_root=root, proc_cgroup=proc) == 4


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    d = root / "cpu,cpuacct" / "docker" / "x"
    _write(d / "cpu.cfs_quota_us", "250000\n")
    _write(d / "cpu.cfs_period_us", "100000\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    proc = tmp_path / "proc_cgroup"
    _write(proc, "12:memory:/docker/x\n4:cpu,cpuacct:/docker/x\n1:name=systemd:/docker/x\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(2.5)
    assert usable_cpus(affinity=16, cgroup_root=root, proc_cgroup=proc) == 3
    _write(d / "cpu.cfs_quota_us", "-1\n")  # no quota
    assert cgroup_cpu_limit(root, proc) is None


def test_default_threads_environment(tmp_path: Path) -> None:
    root, proc = _v2(tmp_path, {"/a/b": "400000 100000"})
    cpus = {"affinity": 16, "cgroup_root": root, "proc_cgroup": proc}
    assert default_threads({}, **cpus) == 4  # the quota, not the 16 cores
    assert default_threads({"OMP_NUM_THREADS": "3"}, **cpus) == 3  # respected
    assert default_threads({"OMP_NUM_THREADS": "junk"}, **cpus) == 4
    assert default_threads({"LOCAL_WORLD_SIZE": "2"}, **cpus) == 2  # torchrun, 2 per node
    assert default_threads({"LOCAL_WORLD_SIZE": "8"}, **cpus) == 1


@pytest.mark.slow
def test_affinity_respected_in_a_child_process() -> None:
    """A real process pinned to one core gets one thread by default, whatever the host has."""
    code = (
        "import torch; from spap.devices import set_threads; "
        "n = set_threads(); print(n, torch.get_num_threads())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    env["PYTHONPATH"] = str(SRC)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
        check=True,
    )
    assert out.stdout.split() == ["1", "1"]


def test_set_threads_validates() -> None:
    assert set_threads(2) == 2 and torch.get_num_threads() == 2
    with pytest.raises(ConfigError, match="at least 1"):
        set_threads(0)
    with pytest.raises(ConfigError, match="whole number"):
        set_threads(1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="threads"):
        from_dict(RunConfig, {"threads": 0})
    assert from_dict(RunConfig, {"threads": 3}).threads == 3
    assert from_dict(RunConfig, {}).threads is None


def test_quiet_openmp_wait_keeps_a_users_choice() -> None:
    env: dict[str, str] = {}
    quiet_openmp_wait(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for given in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"}):
        env = dict(given)
        quiet_openmp_wait(env)
        assert env == given


@pytest.mark.parametrize(
    "argv",
    [
        ["--threads", "2", "sample", "--checkpoint", "c", "--num", "1", "--output", "o"],
        ["sample", "--checkpoint", "c", "--num", "1", "--output", "o", "--threads", "2"],
        ["--threads", "2", "demo"],
        ["demo", "--threads", "2"],
        ["--threads", "1", "demo", "--threads", "2"],  # the later one wins
    ],
)
def test_threads_flag_before_or_after_the_command(argv: list[str]) -> None:
    assert parse_args(build_parser(), argv).threads == 2


def test_threads_flag_refused_in_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "gan", "--out", "x", "--threads", "0"])
    assert exc.value.code == 2
    assert "argument --threads: must be at least 1, got 0" in capsys.readouterr().err


def _images(folder: Path, n: int = 4, size: int = 16) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            folder / f"{i}.png"
        )
    return folder


TINY_GAN = [
    "--steps",
    "1",
    "--size",
    "32",
    "run.device=cpu",
    "run.num_workers=0",
    "run.sample_every=1000",
    "model.z_dim=8",
    "model.g_ch=4",
    "model.d_ch=4",
    "model.g_attention={}",
    "model.d_attention={}",
    "train.batch_size=2",
    "train.n_dis=1",
    "train.num_fixed=2",
]


@pytest.mark.slow
@pytest.mark.parametrize("before", [True, False])
def test_threads_flag_reaches_the_training_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: bool
) -> None:
    """``spap train gan ... --threads 2`` (or ``spap --threads 2 train ...``): every
    training step runs with 2 threads, the run's config records run.threads=2, and the
    caller's count is back afterwards."""
    from spap.train.gan import GANTask

    seen: list[int] = []
    real_step = GANTask.train_step

    def step(self, batch, i):
        seen.append(torch.get_num_threads())
        return real_step(self, batch, i)

    monkeypatch.setattr(GANTask, "train_step", step)
    torch.set_num_threads(1)
    data, out = _images(tmp_path / "data"), tmp_path / "run"
    flag = ["--threads", "2"]
    args = ["train", "gan", "--data", str(data), "--out", str(out), *TINY_GAN]
    assert main([*flag, *args] if before else [*args, *flag]) == 0
    assert seen == [2]
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["threads"] == 2
    assert torch.get_num_threads() == 1


@pytest.mark.slow
def test_run_threads_key_applies_without_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spap.train.gan import GANTask

    seen: list[int] = []
    real_step = GANTask.train_step

    def step(self, batch, i):
        seen.append(torch.get_num_threads())
        return real_step(self, batch, i)

    monkeypatch.setattr(GANTask, "train_step", step)
    data, out = _images(tmp_path / "data"), tmp_path / "run"
    args = ["train", "gan", "--data", str(data), "--out", str(out), *TINY_GAN, "run.threads=2"]
    assert main(args) == 0
    assert seen == [2]
