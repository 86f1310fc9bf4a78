"""The contract a training system implements (CycleGAN, GAN): build the networks, say what
one iteration does, hand over and take back its state. :func:`spap.train.loop.run` does
everything around it (see ``docs/architecture.md``, "The task contract")."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from spap.train.context import RunContext

__all__ = ["Task"]


class Task(abc.ABC):
    """One training system.

    ``__init__`` builds the networks through ``ctx.prepare()`` and their optimizers;
    ``train_step`` updates weights only through ``ctx.optimize()`` (or ``ctx.backward()``
    then ``ctx.step()``) and returns its losses as 0-d tensors on the device (plain floats
    are accepted too); the loop reads them back only on the steps it logs, so an iteration
    that does not log never waits for the device.
    """

    #: Stored in checkpoints ("cyclegan", "gan"); a checkpoint resumes only its own kind.
    kind: ClassVar[str]
    #: The config dataclass (with a ``run: RunConfig`` section).
    config_class: ClassVar[type]
    #: Items per iteration and rank: what the data loader batches.
    batch_size: int

    def __init__(self, cfg: Any, ctx: RunContext) -> None:
        self.cfg = cfg
        self.ctx = ctx

    @abc.abstractmethod
    def build_dataset(self) -> torch.utils.data.Dataset:
        """The training items, addressed by ``(epoch, index)`` (augmentation is a pure
        function of them)."""

    @abc.abstractmethod
    def total_steps(self, steps_per_epoch: int) -> int:
        """Iterations of the full schedule (``run.steps`` caps it)."""

    @abc.abstractmethod
    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, torch.Tensor | float]:
        """One iteration on ``batch`` (iteration index ``step``, from 0); its losses."""

    def on_epoch_end(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called after every complete epoch (learning-rate schedules)."""

    def scalars(self) -> dict[str, float]:
        """Values the next iteration uses, by TensorBoard tag (``lr/<optimizer>``: each
        optimizer's learning rate). The loop records them before the first iteration of the
        run and of every epoch and before each iteration whose losses it logs
        (``run.log_every``), at that iteration's step; at epoch starts it also logs the ones
        that changed."""
        return {}

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything to resume from; ``"models"`` maps each network's name to its
        ``state_dict()`` (checked for non-finite weights before every checkpoint)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def visuals(self) -> dict[str, torch.Tensor]:
        """Rows of the sample grid, images in [-1, 1]."""
        return {}

    #: Loss names of the discriminators (the health check's "discriminator wins" window).
    d_loss_keys: ClassVar[tuple[str, ...]] = ()

    def networks(self) -> dict[str, torch.nn.Module]:
        """Every network by name (attention health: each unit's ``gamma``)."""
        return {}

    def probe(self) -> dict[str, Any]:
        """One no-grad look at the generators on recent inputs, for attention health
        (:mod:`spap.train.health`): ``{"maps": {network: record_attention dict},
        "pairs": {direction: (input, output)}}`` (images in [-1, 1]); ``{}``: none."""
        return {}
