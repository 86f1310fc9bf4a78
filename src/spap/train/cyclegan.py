"""CycleGAN training (Zhu et al. 2017), optionally with SPAP / SAGAN units.

One iteration follows the reference implementation's ``CycleGANModel.optimize_parameters``:

1. forward: ``fake_B = G_A(A)``, ``rec_A = G_B(fake_B)``, ``fake_A = G_B(B)``,
   ``rec_B = G_A(fake_A)``;
2. generator update (discriminators frozen: ``requires_grad`` off, so no D gradients are
   computed): ``L_G = gan(D_A(fake_B)) + gan(D_B(fake_A)) + lambda_A |rec_A - A|_1 +
   lambda_B |rec_B - B|_1 + lambda_idt (lambda_B |G_A(B) - B|_1 + lambda_A |G_B(A) - A|_1)``
   with one Adam over G_A and G_B;
3. discriminator update: ``D_A`` on (real B, a fake B from the image pool),
   ``D_B`` on (real A, a fake A from the pool), each ``0.5 * (real + fake)``; one Adam over
   D_A and D_B.

With ``train.batched_forwards`` (by default for images up to 128x128) the forwards that
share a network run as one batch (``G_B([B, A])``, ``G_A([A, B, fake_A])``, ``G_B(fake_B)``;
each D on ``[real, fake]``): per-image norms make every image's result the same as in the
order above, up to float rounding, and small images train faster (``docs/performance.md``).

Learning rate: the reference's ``linear`` policy as its training script applies it (the
scheduler is stepped at the *start* of every epoch, so its first epoch already uses the
rule's value for epoch 1): epoch ``e`` (counted from 0) runs at
``lr * (1 - max(0, e + 2 - n_epochs) / (n_epochs_decay + 1))``, i.e. ``n_epochs - 1``
epochs at ``lr``, then a linear decay that reaches 0 in the last epoch. Here the
``LambdaLR`` schedulers are stepped when an epoch ends, which sets the next epoch's rate
before its first iteration; a resumed run recomputes the rate of its epoch from this rule
(:meth:`CycleGANTask.load_state_dict`), so checkpoints written under an earlier rule
continue on this one.

Naming as in the reference: ``G_A: A -> B``, ``G_B: B -> A``, ``D_A`` judges domain B,
``D_B`` judges domain A.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spap.data import build_dataset, detect_layout
from spap.errors import CheckpointError, DataError
from spap.layers import record_attention
from spap.models.cyclegan import (
    CycleGANModelConfig,
    architecture_mismatches,
    convert_reference_discriminator,
    convert_reference_generator,
    discriminator_architecture,
    discriminator_slots,
    generator_architecture,
    generator_slots,
    load_problems,
    load_weights,
)
from spap.seeds import derive_seed
from spap.systems import model_config
from spap.systems.cyclegan import NETWORKS, CycleGANConfig, build_networks
from spap.train.checkpoint import load_checkpoint
from spap.train.context import RunContext
from spap.train.losses import d_loss, g_loss
from spap.train.pool import ImagePool
from spap.train.task import Task
from spap.viz.attention import attention_overlays

__all__ = ["CycleGANTask", "initialise_networks", "lr_factor"]

log = logging.getLogger(__name__)

_POOL_KEY = 0xC7C1  # mixed into the image pools' seeds


def lr_factor(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """Learning-rate multiplier of (0-based) ``epoch``: the reference's ``linear`` policy
    (``1 - max(0, epoch + epoch_count - n_epochs) / (n_epochs_decay + 1)`` with its
    ``epoch_count = 1``), stepped at the start of each epoch as the reference's training
    script does, so 0-based epoch ``e`` gets the policy's value at ``e + 1``. Never below 0
    (the schedule itself ends at exactly 0; ``run.steps`` may train past it)."""
    return max(0.0, 1.0 - max(0, epoch + 2 - n_epochs) / float(n_epochs_decay + 1))


def _architecture(model: CycleGANModelConfig, name: str) -> dict[str, Any]:
    """What network ``name`` of a model config is (channels as :func:`build_networks`)."""
    a, b = model.input_nc, model.output_nc
    if name == "G_A":
        return generator_architecture(model, a, b)
    if name == "G_B":
        return generator_architecture(model, b, a)
    return discriminator_architecture(model, b if name == "D_A" else a)


def _attention_mismatches(
    stored: CycleGANModelConfig, model: CycleGANModelConfig, name: str
) -> list[str]:
    """Units network ``name`` of a spap checkpoint has that the config would not rebuild
    the same (units the config adds are fine: they start at their initial values)."""
    g = name.startswith("G")
    at, opts = (
        ("g_attention_at", "g_attention_options")
        if g
        else ("d_attention_at", "d_attention_options")
    )
    if stored.attention == "none" or not getattr(stored, at):
        return []
    if model.attention != stored.attention:
        return [f"attention {stored.attention} in the file, {model.attention} in the config"]
    out = []
    if dict(getattr(stored, opts)) != dict(getattr(model, opts)):
        out.append(
            f"{opts} {getattr(stored, opts)} in the file, {getattr(model, opts)} in the config"
        )
    if g:
        have = generator_slots(stored.g_attention_at, stored.n_blocks)
        want = generator_slots(model.g_attention_at, model.n_blocks)
    else:
        have = discriminator_slots(stored.d_attention_at, stored.n_layers_d)
        want = discriminator_slots(model.d_attention_at, model.n_layers_d)
    lost = [str(place) for slot, place in have.items() if slot not in want]
    if lost:
        out.append(f"units at {', '.join(lost)} in the file, not in the config")
    return out


@dataclasses.dataclass
class _Source:
    """Initial weights of one network: the tensors, the architecture the file gives, and
    for a spap checkpoint its model config."""

    path: str
    state: dict[str, torch.Tensor]
    arch: dict[str, Any]
    stored: CycleGANModelConfig | None = None


def _spap_sources(path: str) -> dict[str, _Source]:
    """Every network of a spap CycleGAN checkpoint or run folder."""
    ckpt = load_checkpoint(path, kind="cyclegan")
    stored = model_config("cyclegan", ckpt.get("config") or {}, source=str(ckpt["path"]))
    models = ckpt["task"]["models"]
    return {
        name: _Source(path, models[name], _architecture(stored, name), stored)
        for name in NETWORKS
        if name in models
    }


def _file_source(path: str, name: str) -> _Source:
    """Weights for network ``name`` from a reference state dict or a spap checkpoint."""
    if not os.path.exists(path):
        raise CheckpointError(f"train.init_networks.{name}: no such file or folder: {path}")
    if not os.path.isdir(path):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{path}: not a readable weights file ({first[:200]})") from None
        if not (isinstance(state, dict) and state.get("format") == "spap-checkpoint"):
            convert = (
                convert_reference_generator
                if name.startswith("G")
                else convert_reference_discriminator
            )
            converted, arch = convert(state, source=path)
            return _Source(path, converted, arch)
    sources = _spap_sources(path)
    if name not in sources:
        raise CheckpointError(f"{path}: holds no {name} weights")
    return sources[name]


def initialise_networks(
    nets: dict[str, nn.Module], cfg: CycleGANConfig, verbose: bool = True
) -> None:
    """Apply ``train.init_from`` then ``train.init_networks``.

    Each file's architecture (read from a reference file's tensors, or a spap checkpoint's
    model section) is compared with the configured network's: under ``train.init_strict``
    (the default) any difference fails in one line naming the file and every difference;
    attention units the file lacks start at their initial values and blocks the config
    replaces by units are left out, as intended. ``train.init_strict=false`` loads the
    tensors that fit and logs what was dropped and what kept its initial values.
    """
    tc = cfg.train
    sources: dict[str, _Source] = {}
    if tc.init_from:
        sources.update(_spap_sources(tc.init_from))
    for name, path in tc.init_networks.items():
        sources[name] = _file_source(path, name)
    for name, src in sources.items():
        net = nets[name]
        problems = architecture_mismatches(src.arch, _architecture(cfg.model, name))
        if src.stored is not None:
            problems += _attention_mismatches(src.stored, cfg.model, name)
        where = f"{name} from {src.path}"
        if problems and tc.init_strict:
            raise CheckpointError(f"{where}: {'; '.join(problems)}{_HINT}")
        report = load_weights(net, src.state, source=where, skip_mismatched=not tc.init_strict)
        if not problems:
            problems = load_problems(net, report)
            if problems and tc.init_strict:
                raise CheckpointError(f"{where}: {'; '.join(problems)}{_HINT}")
        if not verbose:
            continue
        if problems:
            log.warning(
                "%s initialised from %s, partly (train.init_strict=false): %s; %s",
                name,
                src.path,
                "; ".join(problems),
                report.summary(limit=None),
            )
        else:
            log.info("%s initialised from %s: %s", name, src.path, report.summary())


_HINT = " (train.init_strict=false loads the tensors that fit)"


def _check_image_sizes(
    batch: dict[str, Any], real_A: torch.Tensor, real_B: torch.Tensor, cfg: CycleGANConfig
) -> None:
    """One line for images too small for the networks (possible with data.preprocess=none
    or scale_width, which keep the images' own sizes): the generator's reflection pads need
    8x8, the PatchGAN 3 * 2**n_layers_d per side."""
    need = max(8, 3 * 2**cfg.model.n_layers_d)
    for name, x in (("A", real_A), ("B", real_B)):
        h, w = x.shape[-2:]
        if min(h, w) < need:
            paths = batch.get(f"{name}_path") or ["?"]
            raise DataError(
                f"{paths[0]}: a {w}x{h} image (after data.preprocess={cfg.data.preprocess}) "
                f"is smaller than the networks need ({need}x{need} with "
                f"model.n_layers_d={cfg.model.n_layers_d}); remove it or use a preprocess "
                "that resizes (resize_and_crop)"
            )


class CycleGANTask(Task):
    """Trains G_A, G_B, D_A, D_B; ``visuals`` shows translations, cycles and attention maps."""

    kind = "cyclegan"
    config_class = CycleGANConfig

    def __init__(self, cfg: CycleGANConfig, ctx: RunContext) -> None:
        super().__init__(cfg, ctx)
        tc = cfg.train
        nets = build_networks(cfg.model)
        if not ctx.resuming:  # on resume the checkpoint overwrites everything anyway
            initialise_networks(nets, cfg, verbose=ctx.is_main)
        self.nets: dict[str, nn.Module] = {name: ctx.prepare(net) for name, net in nets.items()}
        self.G_A, self.G_B = self.nets["G_A"], self.nets["G_B"]
        self.D_A, self.D_B = self.nets["D_A"], self.nets["D_B"]
        betas = tuple(tc.betas)
        mult = tc.gamma_lr_mult
        self.opt_G = ctx.adam(
            itertools.chain(self.G_A.parameters(), self.G_B.parameters()), tc.lr, betas,
            gamma_lr_mult=mult, networks=(self.G_A, self.G_B),
        )  # fmt: skip
        self.opt_D = ctx.adam(
            itertools.chain(self.D_A.parameters(), self.D_B.parameters()), tc.lr, betas,
            gamma_lr_mult=mult, networks=(self.D_A, self.D_B),
        )  # fmt: skip

        def factor(epoch: int) -> float:
            return lr_factor(epoch, tc.n_epochs, tc.n_epochs_decay)

        self.schedulers = {
            "G": torch.optim.lr_scheduler.LambdaLR(self.opt_G, factor),
            "D": torch.optim.lr_scheduler.LambdaLR(self.opt_D, factor),
        }
        if tc.n_epochs_decay == 0 and ctx.is_main and not ctx.resuming:
            log.warning(
                "train.n_epochs_decay=0: the last epoch trains at learning rate 0 (the "
                "reference's linear rule reaches 0 in the last epoch)"
            )
        seed = cfg.run.seed
        # fake_A feeds D_B, fake_B feeds D_A; each rank keeps its own pools
        self.pools = {
            "A": ImagePool(tc.pool_size, derive_seed(seed, ctx.rank, _POOL_KEY, 0)),
            "B": ImagePool(tc.pool_size, derive_seed(seed, ctx.rank, _POOL_KEY, 1)),
        }
        self.batch_size = tc.batch_size
        # the most recent training images (up to num_visuals, across steps when the batch
        # is smaller), shown by visuals()
        self._recent: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -- data
    def build_dataset(self) -> torch.utils.data.Dataset:
        dc = self.cfg.data
        kwargs: dict[str, Any] = dict(
            direction=dc.direction,
            load_size=dc.load_size,
            crop_size=dc.crop_size,
            preprocess=dc.preprocess,
            flip=dc.flip,
            seed=self.cfg.run.seed,
            interpolation=dc.interpolation,
            channels_A=self.cfg.model.input_nc,
            channels_B=self.cfg.model.output_nc,
            value_range=dc.value_range,
        )
        layout = dc.layout
        if layout == "auto":
            layout = detect_layout(dc.root, dc.phase)
        if layout == "unaligned":
            kwargs["serial_batches"] = dc.serial_batches
        return build_dataset(layout, dc.root, dc.phase, **kwargs)

    def total_steps(self, steps_per_epoch: int) -> int:
        tc = self.cfg.train
        return (tc.n_epochs + tc.n_epochs_decay) * steps_per_epoch

    # -- one iteration
    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        ctx, tc = self.ctx, self.cfg.train
        real_A = ctx.to_device(batch["A"])
        real_B = ctx.to_device(batch["B"])
        _check_image_sizes(batch, real_A, real_B, self.cfg)
        for net in self.nets.values():
            net.train()
        lam_idt = tc.lambda_identity

        # generators (the discriminators get no gradients)
        self.D_A.requires_grad_(False)
        self.D_B.requires_grad_(False)
        n, pixels = real_A.shape[0], real_A.shape[-2] * real_A.shape[-1]
        # data.preprocess=none / scale_width keep each image's size: A and B may differ
        batched = (
            real_A.shape == real_B.shape
            and self.cfg.model.norm != "batch"
            and (
                tc.batched_forwards == "always"
                or (tc.batched_forwards == "auto" and pixels <= 128 * 128)
            )
        )
        with ctx.autocast():
            if batched:  # 3 generator calls instead of 6, same per-image results
                if lam_idt > 0:
                    fake_A, idt_B = self.G_B(torch.cat([real_B, real_A])).split(n)
                    fake_B, idt_A, rec_B = self.G_A(torch.cat([real_A, real_B, fake_A])).split(n)
                else:
                    fake_A = self.G_B(real_B)
                    fake_B, rec_B = self.G_A(torch.cat([real_A, fake_A])).split(n)
                rec_A = self.G_B(fake_B)
            else:  # the reference's order
                fake_B = self.G_A(real_A)
                rec_A = self.G_B(fake_B)
                fake_A = self.G_B(real_B)
                rec_B = self.G_A(fake_A)
                if lam_idt > 0:
                    idt_A = self.G_A(real_B)
                    idt_B = self.G_B(real_A)
            pred_fake_B = self.D_A(fake_B)
            pred_fake_A = self.D_B(fake_A)
        losses: dict[str, torch.Tensor] = {
            "G_A": g_loss(tc.loss, pred_fake_B),
            "G_B": g_loss(tc.loss, pred_fake_A),
            "cycle_A": F.l1_loss(rec_A.float(), real_A.float()) * tc.lambda_A,
            "cycle_B": F.l1_loss(rec_B.float(), real_B.float()) * tc.lambda_B,
        }
        if lam_idt > 0:
            losses["idt_A"] = F.l1_loss(idt_A.float(), real_B.float()) * tc.lambda_B * lam_idt
            losses["idt_B"] = F.l1_loss(idt_B.float(), real_A.float()) * tc.lambda_A * lam_idt
        loss_G = sum(losses.values())
        ctx.optimize(loss_G, self.opt_G, "loss_G", max_norm=tc.clip_grad_norm)
        self.D_A.requires_grad_(True)
        self.D_B.requires_grad_(True)

        # discriminators, on fakes from the pools
        pooled_B = self.pools["B"].query(fake_B.float())
        pooled_A = self.pools["A"].query(fake_A.float())
        with ctx.autocast():
            if batched and pooled_B.shape == real_B.shape and pooled_A.shape == real_A.shape:
                real_B_logits, fake_B_logits = self.D_A(torch.cat([real_B, pooled_B])).split(n)
                real_A_logits, fake_A_logits = self.D_B(torch.cat([real_A, pooled_A])).split(n)
            else:
                real_B_logits, fake_B_logits = self.D_A(real_B), self.D_A(pooled_B)
                real_A_logits, fake_A_logits = self.D_B(real_A), self.D_B(pooled_A)
        losses["D_A"] = d_loss(tc.loss, real_B_logits, fake_B_logits)
        losses["D_B"] = d_loss(tc.loss, real_A_logits, fake_A_logits)
        loss_D = losses["D_A"] + losses["D_B"]
        ctx.optimize(loss_D, self.opt_D, "loss_D", max_norm=tc.clip_grad_norm)

        n = tc.num_visuals
        pairs = list(zip(real_A[:n].detach(), real_B[:n].detach()))
        self._recent = (self._recent + pairs)[-n:]
        order = ("D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B")
        return {k: losses[k].detach() for k in order if k in losses}  # the loop reads them

    def on_epoch_end(self, epoch: int) -> None:
        for sched in self.schedulers.values():  # sets the rate of epoch `epoch + 1`
            sched.step()

    def scalars(self) -> dict[str, float]:
        """``lr/G``, ``lr/D``: the learning rates the next iteration uses."""
        return {
            f"lr/{k}": float(s.optimizer.param_groups[0]["lr"]) for k, s in self.schedulers.items()
        }

    # -- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "models": {name: net.state_dict() for name, net in self.nets.items()},
            "optimizers": {"G": self.opt_G.state_dict(), "D": self.opt_D.state_dict()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "pools": {k: p.state_dict() for k, p in self.pools.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, net in self.nets.items():
            net.load_state_dict(state["models"][name])
        self.opt_G.load_state_dict(state["optimizers"]["G"])
        self.opt_D.load_state_dict(state["optimizers"]["D"])
        tc = self.cfg.train
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
            # the rate of the checkpoint's epoch under this release's rule (a checkpoint
            # written under an earlier rule stored that rule's rate)
            factor = lr_factor(s.last_epoch, tc.n_epochs, tc.n_epochs_decay)
            for group, base in zip(s.optimizer.param_groups, s.base_lrs):
                group["lr"] = base * factor
        for k, p in self.pools.items():
            p.load_state_dict(state["pools"][k], device=self.ctx.device)

    # -- attention health (spap.train.health)
    d_loss_keys = ("D_A", "D_B")

    def networks(self) -> dict[str, nn.Module]:
        return dict(self.nets)

    @torch.no_grad()
    def _translate_recent(self, cycle: bool) -> dict[str, Any]:
        """Both generators (eval mode, then back to their modes) on the most recent training
        images of the last one's shape: ``real_A``, ``fake_B``, ``real_B``, ``fake_A``,
        with ``cycle`` also ``rec_A`` and ``rec_B``, and each generator's attention maps
        (``maps_A``, ``maps_B``); ``{}`` before the first iteration."""
        if not self._recent:
            return {}
        shape_a, shape_b = self._recent[-1][0].shape, self._recent[-1][1].shape
        recent = [(a, b) for a, b in self._recent if a.shape == shape_a and b.shape == shape_b]
        real_A = torch.stack([a for a, _ in recent])
        real_B = torch.stack([b for _, b in recent])
        modes = {name: net.training for name, net in self.nets.items()}
        self.G_A.eval()
        self.G_B.eval()
        try:
            with record_attention(self.G_A) as maps_A:
                fake_B = self.G_A(real_A)
            rec_A = self.G_B(fake_B) if cycle else None
            with record_attention(self.G_B) as maps_B:
                fake_A = self.G_B(real_B)
            rec_B = self.G_A(fake_A) if cycle else None
        finally:
            for name, net in self.nets.items():
                net.train(modes[name])
        out = {"real_A": real_A, "fake_B": fake_B, "real_B": real_B, "fake_A": fake_A}
        if cycle:
            out.update(rec_A=rec_A, rec_B=rec_B)
        return {**out, "maps_A": maps_A, "maps_B": maps_B}

    def probe(self) -> dict[str, Any]:
        """Both generators (eval mode) on the most recent training images."""
        t = self._translate_recent(cycle=False)
        if not t:
            return {}
        return {
            "maps": {"G_A": t["maps_A"], "G_B": t["maps_B"]},
            "pairs": {
                "AtoB": (t["real_A"], t["fake_B"].float()),
                "BtoA": (t["real_B"], t["fake_A"].float()),
            },
        }

    # -- pictures
    def visuals(self) -> dict[str, torch.Tensor]:
        """real_A, fake_B, rec_A, real_B, fake_A, rec_B of the most recent training images
        (``train.num_visuals`` of them; current weights, eval mode) and, with attention
        units, each generator unit's maps as heat-map overlays on its input."""
        t = self._translate_recent(cycle=True)
        if not t:
            return {}
        names = ("real_A", "fake_B", "rec_A", "real_B", "fake_A", "rec_B")
        rows = {k: t[k].float().cpu() for k in names}
        rows.update(attention_overlays(rows["real_A"], t["maps_A"], prefix="G_A"))
        rows.update(attention_overlays(rows["real_B"], t["maps_B"], prefix="G_B"))
        return rows
