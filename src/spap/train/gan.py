"""Unconditional GAN training (SNGAN-style ResNet G and D, optional SAGAN / SPAP units).

One iteration (``train_step``) = ``n_dis`` discriminator updates + one generator update +
one EMA update of the generator's weights. Each discriminator update sees its own real
batch: the runner hands over ``train.batch_size * train.n_dis`` images per iteration
(:attr:`GANTask.batch_size`) and the task splits them into ``n_dis`` chunks. The latent
noise of an iteration is a pure function of (``run.seed``, rank, iteration), so a resumed
run draws exactly the noise of an uninterrupted one.

The configuration (:class:`GANConfig`) has the sections ``run`` (shared run machinery),
``data``, ``model`` (:class:`spap.models.sngan.SNGANConfig`) and ``train``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from spap.config import RunConfig, option
from spap.data.sampler import derive_seed
from spap.data.transforms import PREPROCESS_OPTIONS, check_transform_options
from spap.errors import ConfigError
from spap.models.sngan import SNGANConfig, build_discriminator, build_generator, latents
from spap.train.ema import EMA
from spap.train.losses import LOSSES, d_loss, g_loss
from spap.train.runner import RunContext, Task

__all__ = ["GANConfig", "GANDataConfig", "GANTask", "GANTrainConfig"]

# Key mixed into the per-iteration noise seed (keeps it apart from other derived seeds).
_NOISE_KEY = 0x6A4E


@dataclasses.dataclass
class GANDataConfig:
    """Training images: any folder of images (searched recursively)."""

    root: str | None = option(None, "image folder, searched recursively (--data sets it)")
    size: int = option(
        128, "training image size (equals model.resolution; --size sets both)", min=4
    )
    preprocess: str = option(
        "resize_and_crop",
        "resize_and_crop (resize to load_size, random size x size crop) | crop | scale_width | "
        "scale_width_and_crop | none; see spap.data.transforms",
        choices=PREPROCESS_OPTIONS,
    )
    load_size: int | None = option(
        None, "resize target before cropping (default: size, i.e. no crop)", min=1
    )
    flip: bool = option(True, "random horizontal flips")

    def validate(self) -> None:
        check_transform_options(
            self.preprocess, self.load_size or self.size, self.size, prefix="data.", crop_key="size"
        )


@dataclasses.dataclass
class GANTrainConfig:
    """Losses, optimisers, schedule and weight averaging."""

    iterations: int = option(
        100_000, "generator updates of the full schedule (run.steps caps it)", min=1
    )
    batch_size: int = option(64, "images per discriminator update and per generator update", min=1)
    n_dis: int = option(
        1, "discriminator updates per generator update (each on its own real batch)", min=1
    )
    loss: str = option(
        "hinge",
        "adversarial loss: hinge (SNGAN/SAGAN), vanilla (non-saturating BCE), lsgan",
        choices=tuple(LOSSES),
    )
    lr_g: float = option(1e-4, "generator Adam learning rate", min=0.0)
    lr_d: float = option(4e-4, "discriminator Adam learning rate (TTUR: higher than lr_g)", min=0.0)
    betas_g: tuple[float, float] = option((0.0, 0.999), "generator Adam betas", min=0.0, max=1.0)
    betas_d: tuple[float, float] = option(
        (0.0, 0.999), "discriminator Adam betas", min=0.0, max=1.0
    )
    lr_decay: str = option(
        "none",
        "learning-rate schedule: none (constant) or linear (to 0 over train.iterations)",
        choices=("none", "linear"),
    )
    ema_decay: float = option(0.9999, "decay of the generator weight average", min=0.0, max=1.0)
    ema_start: int = option(
        1000,
        "generator updates before the average starts (it copies the weights until then)",
        min=0,
    )
    num_fixed: int = option(
        16, "fixed-noise samples shown in the sample grids (latents of seed run.seed)", min=1
    )

    def validate(self) -> None:
        for key in ("betas_g", "betas_d"):
            if len(getattr(self, key)) != 2:
                raise ConfigError(f"train.{key}: expected two numbers, got {getattr(self, key)!r}")


@dataclasses.dataclass
class GANConfig:
    """Unconditional GAN: SNGAN-style ResNet G and D, hinge loss, TTUR, EMA."""

    run: RunConfig = option(default_factory=RunConfig)
    data: GANDataConfig = option(default_factory=GANDataConfig)
    model: SNGANConfig = option(default_factory=SNGANConfig)
    train: GANTrainConfig = option(default_factory=GANTrainConfig)

    def validate(self) -> None:
        if self.data.size != self.model.resolution:
            raise ConfigError(
                f"data.size ({self.data.size}) must equal model.resolution "
                f"({self.model.resolution}); --size N sets both"
            )


def _rescale_attention(value: Any, old: int, new: int) -> Any:
    if not isinstance(value, dict):
        return value
    out = {}
    for k, kind in value.items():
        try:
            out[max(1, int(k) * new // old)] = kind
        except (TypeError, ValueError):
            out[k] = kind  # left for validation to report
    return out


class GANTask(Task):
    """Trains G and D; keeps an EMA copy of G (``G_ema``) for sampling."""

    kind = "gan"
    config_class = GANConfig

    def __init__(self, cfg: GANConfig, ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        tc = cfg.train
        G = build_generator(cfg.model)
        self.ema = EMA(G, decay=tc.ema_decay, start=tc.ema_start).to(ctx.device)
        self.G = ctx.prepare(G)
        self.D = ctx.prepare(build_discriminator(cfg.model))
        self.opt_g = ctx.adam(self.G.parameters(), tc.lr_g, tuple(tc.betas_g))
        self.opt_d = ctx.adam(self.D.parameters(), tc.lr_d, tuple(tc.betas_d))
        self.schedulers = {
            "G": torch.optim.lr_scheduler.LambdaLR(self.opt_g, self._lr_factor),
            "D": torch.optim.lr_scheduler.LambdaLR(self.opt_d, self._lr_factor),
        }
        self.batch_size = tc.batch_size * tc.n_dis
        self.fixed_z = latents(cfg.run.seed, range(tc.num_fixed), cfg.model.z_dim)
        self._last_real: torch.Tensor | None = None

    # -- configuration hooks
    @staticmethod
    def apply_size(cfg_dict: dict[str, Any], size: int) -> None:
        """``--size N``: model.resolution and data.size become N; attention units keep their
        relative depth (a unit at 64 for 128 px moves to 16 for 32 px)."""
        model = cfg_dict.setdefault("model", {})
        old = int(model.get("resolution", SNGANConfig.resolution))
        if old != size:
            for key in ("g_attention", "d_attention"):
                if key in model:
                    model[key] = _rescale_attention(model[key], old, size)
        model["resolution"] = size
        cfg_dict.setdefault("data", {})["size"] = size

    def _lr_factor(self, step: int) -> float:
        if self.cfg.train.lr_decay == "none":
            return 1.0
        return max(0.0, 1.0 - step / self.cfg.train.iterations)

    def build_dataset(self) -> torch.utils.data.Dataset:
        from spap.data import build_dataset

        dc = self.cfg.data
        return build_dataset("folder", dc.root, size=dc.size, flip=dc.flip, seed=self.cfg.run.seed)

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.cfg.train.iterations

    # -- one iteration
    def _noise(self, step: int) -> torch.Generator:
        seed = derive_seed(self.cfg.run.seed, self.ctx.rank, step, _NOISE_KEY)
        return torch.Generator().manual_seed(seed)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        ctx, tc = self.ctx, self.cfg.train
        bs, z_dim = tc.batch_size, self.cfg.model.z_dim
        real = ctx.to_device(batch["image"])
        if real.shape[0] != self.batch_size:
            raise ValueError(
                f"expected {self.batch_size} images per iteration, got {real.shape[0]}"
            )
        noise = self._noise(step)
        self.G.train()
        self.D.train()

        self.D.requires_grad_(True)
        loss_d_total = 0.0
        for chunk in real.split(bs):
            z = torch.randn(bs, z_dim, generator=noise).to(ctx.device)
            with torch.no_grad(), ctx.autocast():
                fake = self.G(z)
            with ctx.autocast():
                logits = self.D(torch.cat([chunk, fake.to(chunk.dtype)]))
            real_logits, fake_logits = logits.float().split(bs)
            loss_d = d_loss(tc.loss, real_logits, fake_logits)
            ctx.optimize(loss_d, self.opt_d, name="loss_D")
            loss_d_total += float(loss_d.detach())

        self.D.requires_grad_(False)
        z = torch.randn(bs, z_dim, generator=noise).to(ctx.device)
        with ctx.autocast():
            fake_logits_g = self.D(self.G(z)).float()
        loss_g = g_loss(tc.loss, fake_logits_g)
        ctx.optimize(loss_g, self.opt_g, name="loss_G")
        self.D.requires_grad_(True)

        self.ema.update(self.G, step + 1)
        for sched in self.schedulers.values():
            sched.step()
        self._last_real = real[: tc.num_fixed].detach()
        return {
            "loss_D": loss_d_total / tc.n_dis,
            "loss_G": float(loss_g.detach()),
            "D_real": float(real_logits.detach().mean()),
            "D_fake": float(fake_logits.detach().mean()),
        }

    # -- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "models": {
                "G": self.G.state_dict(),
                "D": self.D.state_dict(),
                "G_ema": self.ema.module.state_dict(),
            },
            "optimizers": {"G": self.opt_g.state_dict(), "D": self.opt_d.state_dict()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "fixed_z": self.fixed_z.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        models = state["models"]
        self.G.load_state_dict(models["G"])
        self.D.load_state_dict(models["D"])
        self.ema.module.load_state_dict(models["G_ema"])
        self.opt_g.load_state_dict(state["optimizers"]["G"])
        self.opt_d.load_state_dict(state["optimizers"]["D"])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        self.fixed_z = state["fixed_z"].cpu()

    # -- pictures
    @torch.no_grad()
    def visuals(self) -> dict[str, torch.Tensor]:
        """Rows: real images, G and EMA-G samples of the fixed noise, attention overlays."""
        from spap.inference.sample import attention_overlays
        from spap.layers import record_attention

        z = self.fixed_z.to(self.ctx.device)
        rows: dict[str, torch.Tensor] = {}
        if self._last_real is not None:
            rows["real"] = self._last_real.float().cpu()
        was_training = self.G.training
        self.G.eval()
        rows["G"] = self.G(z).float().cpu()
        self.G.train(was_training)
        with record_attention(self.ema.module) as maps:
            ema = self.ema.module(z).float().cpu()
        rows["G_ema"] = ema
        rows.update(attention_overlays(ema, maps))
        return rows
