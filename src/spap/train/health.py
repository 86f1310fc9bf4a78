"""Attention health: is SPAP doing anything, and is the run going wrong?

Scalars (TensorBoard tags, logged every ``run.log_every`` iterations by the loop):

- ``attention/<network>/<unit>/gamma``: the learned blend scalar of every SPAP / SAGAN unit
  in every network (0: the unit is the identity; SPAP blends ``gamma * h + (1 - gamma) * x``,
  SAGAN adds ``gamma * o``);
- ``attention/<network>/<unit>/entropy``: entropy of the unit's attention, in [0, 1]. SPAP:
  the binary entropy (bits) of each fuse step's complementary pair of maps, averaged over
  steps and positions (1: an even split everywhere; 0: one branch takes all). SAGAN: each
  query's entropy over the keys divided by ``log(keys)`` (1: uniform attention);
- ``attention/<network>/<unit>/rate<r>``: SPAP only, the mean weight the cascade gives the
  branch of dilation rate ``r`` at the fuse step that brings it in (``rate0`` is the 1x1
  branch; 0.5 is an even split with the running input).

The maps come from :meth:`spap.train.task.Task.probe` (the generators on recent training
inputs, or the EMA generator on the fixed noise).

Warnings (each once per run, with the step; thresholds are ``run.health_*`` keys):

- **flat gamma**: a unit's ``gamma`` moved less than ``health_gamma_eps`` from its value at
  the start of the run after ``health_gamma_steps`` iterations;
- **identity collapse**: a CycleGAN translation differs from its input by less than
  ``health_identity_below`` (mean absolute difference, images in [-1, 1]);
- **colour inversion**: the brightness of a translation correlates with its input's below
  ``health_inversion_below`` (Pearson r over all pixels; a heuristic for domains that share
  their layout, as the reference's horse/zebra or photo/map);
- **discriminator wins**: every discriminator loss stayed below ``health_d_loss_below`` for
  ``health_d_window`` iterations.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from spap.config import RunConfig
from spap.layers import SPAP, attention_units
from spap.viz.attention import unit_label

__all__ = ["HealthMonitor", "attention_scalars", "unit_gammas"]

log = logging.getLogger(__name__)


def unit_gammas(networks: Mapping[str, nn.Module]) -> dict[str, float]:
    """``{"attention/<network>/<unit>/gamma": value}`` for every unit of every network."""
    out = {}
    for net_name, net in networks.items():
        for name, unit in attention_units(net):
            gamma = getattr(unit, "gamma", None)
            if isinstance(gamma, Tensor):
                out[f"attention/{net_name}/{unit_label(name)}/gamma"] = float(gamma.detach())
    return out


def _binary_entropy(p: Tensor) -> float:
    p = p.detach().float().clamp(1e-7, 1 - 1e-7)
    h = -(p * p.log() + (1 - p) * (1 - p).log()) / math.log(2)
    return float(h.mean())


def attention_scalars(
    networks: Mapping[str, nn.Module], maps: Mapping[str, Mapping[str, list[Tensor]]]
) -> dict[str, float]:
    """Entropy and per-rate branch weights of the units whose maps were recorded
    (``maps``: ``{network: record_attention dict}``); see the module doc."""
    out: dict[str, float] = {}
    for net_name, recorded in maps.items():
        units = dict(attention_units(networks[net_name])) if net_name in networks else {}
        for name, unit_maps in recorded.items():
            if not unit_maps:
                continue
            tag = f"attention/{net_name}/{unit_label(name)}"
            unit = units.get(name)
            if len(unit_maps) == 1 and unit_maps[0].dim() == 3:  # SAGAN (N, queries, keys)
                a = unit_maps[0].detach().float().clamp_min(1e-12)
                keys = a.shape[-1]
                h = -(a * a.log()).sum(-1) / math.log(max(keys, 2))
                out[f"{tag}/entropy"] = float(h.mean())
                continue
            out[f"{tag}/entropy"] = sum(_binary_entropy(m[:, 1]) for m in unit_maps) / len(
                unit_maps
            )
            if isinstance(unit, SPAP):
                for k, m in enumerate(unit_maps):
                    rate = unit.rates[unit.cascade[k + 1]]
                    out[f"{tag}/rate{rate}"] = float(m[:, 1].detach().float().mean())
    return out


def _luma(x: Tensor) -> Tensor:
    x = x.detach().float()
    return x[:, :3].mean(dim=1) if x.shape[1] >= 3 else x[:, 0]


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a.reshape(-1) - a.mean(), b.reshape(-1) - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 1e-12 else 0.0


class HealthMonitor:
    """Computes the health scalars and issues the warnings of the module doc (each once).
    Its :meth:`state_dict` (plain values) goes into checkpoints, so a resumed run neither
    repeats a warning nor forgets where its windows started."""

    def __init__(self, rc: RunConfig, task: Any) -> None:
        self.rc = rc
        self.task = task
        self.gamma_start: dict[str, float] = unit_gammas(task.networks())
        self.warned: dict[str, int] = {}  # warning key -> step it was issued at
        self.d_low_since: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "gamma_start": dict(self.gamma_start),
            "warned": dict(self.warned),
            "d_low_since": -1 if self.d_low_since is None else self.d_low_since,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.gamma_start.update(state.get("gamma_start", {}))
        self.warned = dict(state.get("warned", {}))
        since = int(state.get("d_low_since", -1))
        self.d_low_since = None if since < 0 else since

    def _warn(self, key: str, step: int, message: str) -> None:
        if key in self.warned:
            return
        self.warned[key] = step
        log.warning("health at step %d: %s", step, message)

    def losses(self, step: int, losses: Mapping[str, float]) -> None:
        """After every iteration: the discriminator window."""
        rc = self.rc
        keys = [k for k in getattr(self.task, "d_loss_keys", ()) if k in losses]
        if not keys or rc.health_d_window <= 0:
            return
        low = all(losses[k] < rc.health_d_loss_below for k in keys)
        if not low:
            self.d_low_since = None
            return
        if self.d_low_since is None:
            self.d_low_since = step
        if step - self.d_low_since + 1 >= rc.health_d_window:
            self._warn(
                "d_wins",
                step,
                f"the discriminator wins everything: {', '.join(keys)} below "
                f"{rc.health_d_loss_below:g} for {step - self.d_low_since + 1} iterations "
                f"(since step {self.d_low_since}; run.health_d_loss_below, run.health_d_window)",
            )

    def check(self, step: int) -> dict[str, float]:
        """Every ``run.log_every`` iterations: the scalars (gamma, entropy, rates, and for a
        CycleGAN ``health/identity_<dir>``, ``health/brightness_r_<dir>``); warns as the
        thresholds say."""
        rc = self.rc
        nets = self.task.networks()
        scalars = unit_gammas(nets)
        probe = self.task.probe() or {}
        scalars.update(attention_scalars(nets, probe.get("maps", {})))
        if rc.health_gamma_steps > 0 and step >= rc.health_gamma_steps:
            for tag, value in scalars.items():
                if not tag.endswith("/gamma") or tag not in self.gamma_start:
                    continue
                moved = abs(value - self.gamma_start[tag])
                if moved < rc.health_gamma_eps:
                    unit = tag[len("attention/") : -len("/gamma")]
                    self._warn(
                        f"flat:{unit}",
                        step,
                        f"attention unit {unit}: gamma is {value:.4g}, moved {moved:.2g} from "
                        f"its start in {step} iterations (below run.health_gamma_eps="
                        f"{rc.health_gamma_eps:g}): the unit is doing nothing yet",
                    )
        for direction, (x, y) in probe.get("pairs", {}).items():
            if x.shape != y.shape:
                continue
            diff = float((x.float() - y.float()).abs().mean())
            r = _pearson(_luma(x), _luma(y))
            scalars[f"health/identity_{direction}"] = diff
            scalars[f"health/brightness_r_{direction}"] = r
            if diff < rc.health_identity_below:
                self._warn(
                    f"identity:{direction}",
                    step,
                    f"identity collapse {direction}: translations differ from their inputs by "
                    f"{diff:.3g} on average (below run.health_identity_below="
                    f"{rc.health_identity_below:g})",
                )
            if r < rc.health_inversion_below:
                self._warn(
                    f"inversion:{direction}",
                    step,
                    f"colour inversion {direction}: the brightness of translations correlates "
                    f"with their inputs' at r = {r:.2f} (below run.health_inversion_below="
                    f"{rc.health_inversion_below:g})",
                )
        return scalars
