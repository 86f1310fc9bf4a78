"""Unconditional GAN training (SNGAN-style ResNet G and D, optional SAGAN / SPAP units).

One iteration (``train_step``) = ``n_dis`` discriminator updates + one generator update +
one EMA update of the generator's weights. Each discriminator update sees its own real
batch: the runner hands over ``train.batch_size * train.n_dis`` images per iteration
(:attr:`GANTask.batch_size`) and the task splits them into ``n_dis`` chunks. The latent
noise of an iteration is a pure function of (``run.seed``, rank, iteration), so a resumed
run draws exactly the noise of an uninterrupted one.

The configuration schema is :class:`spap.systems.gan.GANConfig`.
"""

from __future__ import annotations

from typing import Any

import torch

from spap.data import build_dataset
from spap.layers import record_attention
from spap.models.sngan import latents
from spap.seeds import derive_seed
from spap.systems.gan import GANConfig, build_networks
from spap.train.context import RunContext
from spap.train.ema import EMA
from spap.train.losses import d_loss, g_loss
from spap.train.task import Task
from spap.viz.attention import attention_overlays

__all__ = ["GANTask"]

# Key mixed into the per-iteration noise seed (keeps it apart from other derived seeds).
_NOISE_KEY = 0x6A4E


class GANTask(Task):
    """Trains G and D; keeps an EMA copy of G (``G_ema``) for sampling."""

    kind = "gan"
    config_class = GANConfig

    def __init__(self, cfg: GANConfig, ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        tc = cfg.train
        nets = build_networks(cfg.model)
        G = nets["G"]
        self.ema = EMA(G, decay=tc.ema_decay, start=tc.ema_start).to(ctx.device)
        self.G = ctx.prepare(G)
        self.D = ctx.prepare(nets["D"])
        mult = tc.gamma_lr_mult
        self.opt_g = ctx.adam(
            self.G.parameters(), tc.lr_g, tuple(tc.betas_g), gamma_lr_mult=mult, networks=[self.G]
        )
        self.opt_d = ctx.adam(
            self.D.parameters(), tc.lr_d, tuple(tc.betas_d), gamma_lr_mult=mult, networks=[self.D]
        )
        self.schedulers = {
            "G": torch.optim.lr_scheduler.LambdaLR(self.opt_g, self._lr_factor),
            "D": torch.optim.lr_scheduler.LambdaLR(self.opt_d, self._lr_factor),
        }
        self.batch_size = tc.batch_size * tc.n_dis
        self.fixed_z = latents(cfg.run.seed, range(tc.num_fixed), cfg.model.z_dim)
        self._last_real: torch.Tensor | None = None

    def _lr_factor(self, step: int) -> float:
        if self.cfg.train.lr_decay == "none":
            return 1.0
        return max(0.0, 1.0 - step / self.cfg.train.iterations)

    def scalars(self) -> dict[str, float]:
        """``lr/G``, ``lr/D``: the learning rates the next iteration uses."""
        return {
            f"lr/{k}": float(s.optimizer.param_groups[0]["lr"]) for k, s in self.schedulers.items()
        }

    def build_dataset(self) -> torch.utils.data.Dataset:
        dc = self.cfg.data
        return build_dataset(
            "folder",
            dc.root,
            size=dc.size,
            preprocess=dc.preprocess,
            load_size=dc.load_size,
            flip=dc.flip,
            seed=self.cfg.run.seed,
            channels=3,
            value_range=dc.value_range,
        )

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.cfg.train.iterations

    # -- one iteration
    def _noise(self, step: int) -> torch.Generator:
        seed = derive_seed(self.cfg.run.seed, self.ctx.rank, step, _NOISE_KEY)
        return torch.Generator().manual_seed(seed)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
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
        loss_d_total = torch.zeros((), device=ctx.device)
        for chunk in real.split(bs):
            z = torch.randn(bs, z_dim, generator=noise).to(ctx.device)
            with torch.no_grad(), ctx.autocast():
                fake = self.G(z)
            with ctx.autocast():
                logits = self.D(torch.cat([chunk, fake.to(chunk.dtype)]))
            real_logits, fake_logits = logits.float().split(bs)
            loss_d = d_loss(tc.loss, real_logits, fake_logits)
            ctx.optimize(loss_d, self.opt_d, "loss_D", max_norm=tc.clip_grad_norm)
            loss_d_total += loss_d.detach()

        self.D.requires_grad_(False)
        z = torch.randn(bs, z_dim, generator=noise).to(ctx.device)
        with ctx.autocast():
            fake_logits_g = self.D(self.G(z)).float()
        loss_g = g_loss(tc.loss, fake_logits_g)
        ctx.optimize(loss_g, self.opt_g, "loss_G", max_norm=tc.clip_grad_norm)
        self.D.requires_grad_(True)

        self.ema.update(self.G, step + 1)
        for sched in self.schedulers.values():
            sched.step()
        self._last_real = real[: tc.num_fixed].detach()
        return {  # on the device: the loop reads them when it logs
            "loss_D": loss_d_total / tc.n_dis,
            "loss_G": loss_g.detach(),
            "D_real": real_logits.detach().mean(),
            "D_fake": fake_logits.detach().mean(),
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

    # -- attention health (spap.train.health)
    d_loss_keys = ("loss_D",)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"G": self.G, "D": self.D, "G_ema": self.ema.module}

    @torch.no_grad()
    def probe(self) -> dict[str, Any]:
        """The EMA generator on the fixed noise."""
        with record_attention(self.ema.module) as maps:
            self.ema.module(self.fixed_z.to(self.ctx.device))
        return {"maps": {"G_ema": maps}}

    # -- pictures
    @torch.no_grad()
    def visuals(self) -> dict[str, torch.Tensor]:
        """Rows: real images, G and EMA-G samples of the fixed noise, attention overlays."""
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
