"""The reference CycleGAN, re-implemented as a test oracle (the one copy in the tests).

Networks (with the reference's ``norm`` and ``use_dropout`` options) and one training
iteration: what the widely used PyTorch reference
(junyanz/pytorch-CycleGAN-and-pix2pix, ``CycleGANModel.optimize_parameters`` with the
``resnet_{6,9}blocks`` generator and the ``basic`` PatchGAN) does per iteration, written
from its description, with the same modules in the same order (so its state dicts have the
reference's key layout ``model.<i>.*`` and load into spap's networks with
:func:`spap.models.cyclegan.convert_reference_generator`):

- generator: ``ReflectionPad2d(3)``, 7x7 conv, ``InstanceNorm2d(affine=False)``, ReLU; two
  stride-2 3x3 convs; residual blocks ``x + [ReflectionPad2d(1), conv3x3, IN, ReLU,
  ReflectionPad2d(1), conv3x3, IN](x)``; two ``ConvTranspose2d`` (3x3, stride 2, output
  padding 1); ``ReflectionPad2d(3)``, 7x7 conv, tanh. Convs followed by instance norm have a
  bias; weights N(0, 0.02), biases 0.
- discriminator: 70x70 PatchGAN (4x4 convs, LeakyReLU 0.2, instance norm from layer 2).
- losses: LSGAN (``MSELoss`` against a target of the logits' shape), cycle L1 x 10,
  identity L1 x 10 x 0.5; ``loss_D = 0.5 * (real + fake)``.
- image pools of 50 (Python ``random``), one Adam for both generators and one for both
  discriminators (lr 2e-4, betas (0.5, 0.999), PyTorch defaults otherwise).
- the update order of ``optimize_parameters``: ``G_A(A), G_B(G_A(A)), G_B(B), G_A(G_B(B))``;
  discriminators frozen; ``G_A(B), G_B(A)`` (identity), ``D_A(fake_B), D_B(fake_A)``,
  generator backward and step; discriminators unfrozen; ``D_A`` on ``real_B`` and a pooled
  ``fake_B``, ``D_B`` likewise, backward, step.
- the learning-rate schedule (``lr_policy='linear'``): one ``LambdaLR`` per optimizer with
  ``lambda(k) = 1 - max(0, k + epoch_count - n_epochs) / (n_epochs_decay + 1)`` (``k``: the
  scheduler's step count, ``epoch_count = 1``), stepped by ``update_learning_rate()`` at the
  *start* of every epoch ``epoch_count .. n_epochs + n_epochs_decay`` of ``train.py`` (its
  current order; earlier versions stepped at the end), before that epoch's iterations.
"""

from __future__ import annotations

import itertools
import random
import warnings
from typing import Any

import torch
from torch import nn


def _norm_layer(kind: str):
    """The reference's ``get_norm_layer``: batch norm (affine, running statistics), instance
    norm (no affine parameters, no running statistics) or none (an identity; the convs before
    it have no bias, as with batch norm: the reference gives a bias only before instance
    norm)."""
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "none":
        return lambda c: nn.Identity()
    return lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)


class RefResnetBlock(nn.Module):
    def __init__(self, dim: int, norm: str = "instance", dropout: bool = False) -> None:
        super().__init__()
        nl, bias = _norm_layer(norm), norm == "instance"
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, padding=0, bias=bias),
            nl(dim),
            nn.ReLU(True),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=bias), nl(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class RefResnetGenerator(nn.Module):
    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        dropout: bool = False,
    ):
        super().__init__()
        nl, bias = _norm_layer(norm), norm == "instance"
        model: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, 7, padding=0, bias=bias),
            nl(ngf),
            nn.ReLU(True),
        ]
        for i in range(2):
            mult = 2**i
            model += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=bias),
                nl(ngf * mult * 2),
                nn.ReLU(True),
            ]
        model += [RefResnetBlock(ngf * 4, norm, dropout) for _ in range(n_blocks)]
        for i in range(2):
            mult = 2 ** (2 - i)
            model += [
                nn.ConvTranspose2d(
                    ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1, bias=bias
                ),
                nl(ngf * mult // 2),
                nn.ReLU(True),
            ]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class RefNLayerDiscriminator(nn.Module):
    def __init__(
        self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance"
    ) -> None:
        super().__init__()
        nl, bias = _norm_layer(norm), norm == "instance"
        seq: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            seq += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2, padding=1, bias=bias),
                nl(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        seq += [
            nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=bias),
            nl(ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1),
        ]
        self.model = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def ref_init(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """``init_weights(net, 'normal', 0.02)``: conv weights N(0, gain), biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.0)
    return net


def randomise(m: nn.Module) -> nn.Module:
    """Random weights and norm statistics (eval mode), so conversions are tested on more
    than an initialisation."""
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
        for name, b in m.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.1)
    return m.eval()


class RefGANLoss(nn.Module):
    """LSGAN: ``MSELoss`` against a constant target expanded to the prediction's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("real_label", torch.tensor(1.0))
        self.register_buffer("fake_label", torch.tensor(0.0))
        self.loss = nn.MSELoss()

    def __call__(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        target = self.real_label if target_is_real else self.fake_label
        return self.loss(prediction, target.expand_as(prediction))


class RefImagePool:
    """History of 50 generated images, with the reference's Python ``random`` draws."""

    def __init__(self, pool_size: int = 50) -> None:
        self.pool_size = pool_size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 0:
            return images
        out = []
        for image in images:
            image = torch.unsqueeze(image.data, 0)
            if len(self.images) < self.pool_size:
                self.images.append(image)
                out.append(image)
            elif random.uniform(0, 1) > 0.5:
                idx = random.randint(0, self.pool_size - 1)
                tmp = self.images[idx].clone()
                self.images[idx] = image
                out.append(tmp)
            else:
                out.append(image)
        return torch.cat(out, 0)


def ref_scheduler(
    optimizer: torch.optim.Optimizer, n_epochs: int, n_epochs_decay: int, epoch_count: int = 1
) -> torch.optim.lr_scheduler.LambdaLR:
    """``networks.get_scheduler`` with ``lr_policy='linear'``."""

    def lambda_rule(epoch: int) -> float:
        return 1.0 - max(0, epoch + epoch_count - n_epochs) / float(n_epochs_decay + 1)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda_rule)


def _step_schedulers(schedulers: list[torch.optim.lr_scheduler.LRScheduler]) -> None:
    with warnings.catch_warnings():  # stepped before any optimizer step, as the reference does
        warnings.filterwarnings("ignore", "Detected call of", UserWarning)
        for scheduler in schedulers:
            scheduler.step()


def ref_lr_per_epoch(n_epochs: int, n_epochs_decay: int, lr: float = 2e-4) -> list[float]:
    """The learning rate each epoch of the reference's ``train.py`` trains with (epoch 1
    first): ``update_learning_rate()`` at the start of every epoch, then its iterations."""
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=lr, betas=(0.5, 0.999))
    scheduler = ref_scheduler(optimizer, n_epochs, n_epochs_decay)
    rates = []
    for _epoch in range(1, n_epochs + n_epochs_decay + 1):
        _step_schedulers([scheduler])
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


class RefCycleGAN:
    """The reference ``CycleGANModel`` in training mode (AtoB, batch given by the input),
    with its schedulers (``update_learning_rate()`` at the start of each epoch)."""

    def __init__(
        self,
        ngf: int = 64,
        ndf: int = 64,
        n_blocks: int = 9,
        lambda_a: float = 10.0,
        lambda_b: float = 10.0,
        lambda_idt: float = 0.5,
        pool_size: int = 50,
        lr: float = 2e-4,
        beta1: float = 0.5,
        n_epochs: int = 100,
        n_epochs_decay: int = 100,
    ) -> None:
        self.netG_A = ref_init(RefResnetGenerator(3, 3, ngf, n_blocks))
        self.netG_B = ref_init(RefResnetGenerator(3, 3, ngf, n_blocks))
        self.netD_A = ref_init(RefNLayerDiscriminator(3, ndf))
        self.netD_B = ref_init(RefNLayerDiscriminator(3, ndf))
        self.lambda_a, self.lambda_b, self.lambda_idt = lambda_a, lambda_b, lambda_idt
        self.fake_A_pool = RefImagePool(pool_size)
        self.fake_B_pool = RefImagePool(pool_size)
        self.criterionGAN = RefGANLoss()
        self.criterionCycle = nn.L1Loss()
        self.criterionIdt = nn.L1Loss()
        self.optimizer_G = torch.optim.Adam(
            itertools.chain(self.netG_A.parameters(), self.netG_B.parameters()),
            lr=lr,
            betas=(beta1, 0.999),
        )
        self.optimizer_D = torch.optim.Adam(
            itertools.chain(self.netD_A.parameters(), self.netD_B.parameters()),
            lr=lr,
            betas=(beta1, 0.999),
        )
        self.schedulers = [
            ref_scheduler(opt, n_epochs, n_epochs_decay)
            for opt in (self.optimizer_G, self.optimizer_D)
        ]

    def update_learning_rate(self) -> float:
        """Step every scheduler (the start of an epoch); the new rate."""
        _step_schedulers(self.schedulers)
        return self.optimizer_G.param_groups[0]["lr"]

    def networks(self) -> dict[str, nn.Module]:
        return {"G_A": self.netG_A, "G_B": self.netG_B, "D_A": self.netD_A, "D_B": self.netD_B}

    @staticmethod
    def set_requires_grad(nets: list[nn.Module], requires_grad: bool) -> None:
        for net in nets:
            for p in net.parameters():
                p.requires_grad = requires_grad

    def set_input(self, batch: dict[str, Any]) -> None:
        self.real_A = batch["A"]
        self.real_B = batch["B"]

    def forward(self) -> None:
        self.fake_B = self.netG_A(self.real_A)
        self.rec_A = self.netG_B(self.fake_B)
        self.fake_A = self.netG_B(self.real_B)
        self.rec_B = self.netG_A(self.fake_A)

    def backward_D_basic(
        self, netD: nn.Module, real: torch.Tensor, fake: torch.Tensor
    ) -> torch.Tensor:
        loss_real = self.criterionGAN(netD(real), True)
        loss_fake = self.criterionGAN(netD(fake.detach()), False)
        loss = (loss_real + loss_fake) * 0.5
        loss.backward()
        return loss

    def backward_D_A(self) -> None:
        fake_B = self.fake_B_pool.query(self.fake_B)
        self.loss_D_A = self.backward_D_basic(self.netD_A, self.real_B, fake_B)

    def backward_D_B(self) -> None:
        fake_A = self.fake_A_pool.query(self.fake_A)
        self.loss_D_B = self.backward_D_basic(self.netD_B, self.real_A, fake_A)

    def backward_G(self) -> None:
        self.idt_A = self.netG_A(self.real_B)
        self.idt_B = self.netG_B(self.real_A)
        self.backward_G_losses()

    def backward_G_losses(self) -> None:
        """The rest of ``backward_G`` once the identity images ``idt_A``, ``idt_B`` are
        there: the generator losses and their backward."""
        la, lb, li = self.lambda_a, self.lambda_b, self.lambda_idt
        self.loss_idt_A = self.criterionIdt(self.idt_A, self.real_B) * lb * li
        self.loss_idt_B = self.criterionIdt(self.idt_B, self.real_A) * la * li
        self.loss_G_A = self.criterionGAN(self.netD_A(self.fake_B), True)
        self.loss_G_B = self.criterionGAN(self.netD_B(self.fake_A), True)
        self.loss_cycle_A = self.criterionCycle(self.rec_A, self.real_A) * la
        self.loss_cycle_B = self.criterionCycle(self.rec_B, self.real_B) * lb
        self.loss_G = (
            self.loss_G_A
            + self.loss_G_B
            + self.loss_cycle_A
            + self.loss_cycle_B
            + self.loss_idt_A
            + self.loss_idt_B
        )
        self.loss_G.backward()

    def optimize_parameters(self) -> None:
        self.forward()
        self.set_requires_grad([self.netD_A, self.netD_B], False)
        self.optimizer_G.zero_grad()
        self.backward_G()
        self.optimizer_G.step()
        self.set_requires_grad([self.netD_A, self.netD_B], True)
        self.optimizer_D.zero_grad()
        self.backward_D_A()
        self.backward_D_B()
        self.optimizer_D.step()

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """``set_input`` + ``optimize_parameters``; returns the eight losses it logs."""
        self.set_input(batch)
        self.optimize_parameters()
        names = ["D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B"]
        return {n: float(getattr(self, f"loss_{n}").detach()) for n in names}
