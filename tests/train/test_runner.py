"""The shared training loop, exercised with a tiny regression task."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from spap.config import RunConfig, from_dict, option
from spap.errors import ConfigError, NonFiniteLossError
from spap.train.checkpoint import list_checkpoints, load_checkpoint
from spap.train.context import RunContext
from spap.train.loop import run
from spap.train.task import Task


class _Data(torch.utils.data.Dataset):
    """12 items; the value of item (epoch, i) depends only on (epoch, i)."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, key: Any) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        g = torch.Generator().manual_seed(1000 * epoch + i)
        x = torch.randn(4, generator=g)
        return {"x": x, "y": x.sum(0, keepdim=True), "skipped": 0}


@dataclasses.dataclass
class _Train:
    lr: float = option(0.05, "lr")
    batch_size: int = option(3, "batch")
    epochs: int = option(3, "epochs")
    nan_at: int = option(-1, "step at which the loss becomes NaN (test hook)")
    noise: float = option(0.01, "input noise drawn from the global RNG")


@dataclasses.dataclass
class _Cfg:
    train: _Train = option(default_factory=_Train)
    run: RunConfig = option(default_factory=RunConfig)


class _Toy(Task):
    kind = "toy"
    config_class = _Cfg

    def __init__(self, cfg: _Cfg, ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        self.net = ctx.prepare(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.train.lr)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=1, gamma=0.5)
        self.batch_size = cfg.train.batch_size

    def build_dataset(self) -> _Data:
        return _Data()

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.cfg.train.epochs * steps_per_epoch

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        noise = self.cfg.train.noise * torch.randn(
            batch["x"].shape
        )  # global RNG: must be restored on resume
        with self.ctx.autocast():
            loss = ((self.net(batch["x"] + noise) - batch["y"]) ** 2).mean()
        if step == self.cfg.train.nan_at:
            loss = loss * float("nan")
        self.ctx.optimize(loss, self.opt, "loss_mse")
        return {"mse": float(loss.detach())}

    def on_epoch_end(self, epoch: int) -> None:
        self.sched.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "models": {"net": self.net.state_dict()},
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["models"]["net"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])


def _cfg(**run: Any) -> _Cfg:
    """A toy config: keyword arguments set run.* keys; ``train={...}`` sets train.* keys."""
    run.setdefault("num_workers", 0)
    train = run.pop("train", {})
    return from_dict(_Cfg, {"run": run, "train": train})


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir)["task"]["models"]["net"]


def test_full_schedule_and_files(tmp_path: Path) -> None:
    summary = run(_Toy, _cfg(checkpoint_every=5, keep_last=2, sample_every=100), tmp_path)
    assert summary["step"] == 12 and summary["epoch"] == 3  # 3 epochs x 4 batches
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000010.pt", "step_0000012.pt"]
    assert (tmp_path / "config.yaml").is_file()
    state = load_checkpoint(tmp_path)
    assert state["config"]["train"]["batch_size"] == 3
    assert state["task"]["sched"]["last_epoch"] == 3


@pytest.mark.parametrize(("stop_at", "workers"), [(2, 0), (4, 0), (7, 2)])
def test_resume_equals_uninterrupted(tmp_path: Path, stop_at: int, workers: int) -> None:
    """Stopping mid-epoch (2, 7) or at an epoch boundary (4), then resuming, gives bitwise
    the weights of an uninterrupted run, with and without data-loading workers."""
    run(_Toy, _cfg(steps=10, num_workers=workers), tmp_path / "full")
    run(_Toy, _cfg(steps=stop_at, num_workers=workers), tmp_path / "split")
    run(_Toy, _cfg(steps=10, num_workers=workers), tmp_path / "split", resume=True)
    full, split = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    assert all(torch.equal(full[k], split[k]) for k in full)
    assert load_checkpoint(tmp_path / "split")["step"] == 10


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="loss loss_mse is nan at step 5"):
        run(_Toy, _cfg(checkpoint_every=2, train={"nan_at": 5}), tmp_path)
    state = load_checkpoint(tmp_path)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["task"]["models"]["net"].values())


def test_nan_loss_skip_policy(tmp_path: Path) -> None:
    summary = run(_Toy, _cfg(steps=8, nan_policy="skip", train={"nan_at": 5}), tmp_path)
    assert summary["step"] == 8 and summary["skipped_updates"] == 1
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path).values())


def test_fp16_on_cpu_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        run(_Toy, _cfg(precision="fp16"), tmp_path)


def test_fused_adam_by_config_agrees_with_the_default_step() -> None:
    from spap.train.distributed import DistInfo

    results = {}
    for fused in (True, False):
        ctx = RunContext(RunConfig(fused_optimizer=fused), torch.device("cpu"), DistInfo())
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        opt = ctx.adam(net.parameters(), 1e-2, (0.5, 0.999))
        assert bool(opt.defaults.get("fused")) is fused  # this torch fuses Adam on the CPU
        for step in range(3):
            x = torch.randn(5, 8, generator=torch.Generator().manual_seed(step))
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
        results[fused] = torch.cat([p.detach().flatten() for p in net.parameters()])
    torch.testing.assert_close(results[True], results[False], rtol=1e-5, atol=1e-6)


def test_cudnn_benchmark_follows_the_config_on_cuda_devices_only() -> None:
    from spap.train.distributed import DistInfo

    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        RunContext(RunConfig(cudnn_benchmark=True), torch.device("cpu"), DistInfo())
        assert torch.backends.cudnn.benchmark is False  # a CPU run leaves it alone
        # building the context touches no GPU, so this runs without one
        RunContext(RunConfig(cudnn_benchmark=True), torch.device("cuda"), DistInfo())
        assert torch.backends.cudnn.benchmark is True
        RunContext(RunConfig(cudnn_benchmark=False), torch.device("cuda"), DistInfo())
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_warnings_print_on_their_own_line_above_the_progress_bar(tmp_path: Path) -> None:
    """A warning logged while the bar is shown clears the bar's line first instead of
    gluing onto it (the bar is drawn again below)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import logging, sys
        from pathlib import Path
        from spap.config import RunConfig
        from spap.train.logger import ProgressLogger

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        with ProgressLogger(Path(sys.argv[1]), RunConfig(), 4, 0, enabled=True) as logger:
            for step in range(1, 5):
                logger.step(step, {"loss": 1.0}, 1)
                if step == 2:
                    logging.getLogger("spap.test").warning("odd step")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # the bar must show
    res = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.split("\n") if "odd step" in line]
    assert len(lines) == 1 and "train:" in res.stderr, res.stderr
    assert lines[0].split("\r")[-1] == "WARNING odd step", repr(lines[0])
