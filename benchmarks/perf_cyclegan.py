"""Goal 1: spap's CycleGAN training iteration vs a faithful reference iteration (CPU, fp32).

For each configuration (256x256 / 9 blocks / ngf=ndf=64, 128x128 / 6 blocks / 64,
64x64 / 6 blocks / 32), in one process:

1. build the reference iteration (``tests/reference/cyclegan.py``'s ``RefCycleGAN``) and spap's
   ``CycleGANTask`` (the code ``spap train cyclegan`` runs) from *identical* weights;
2. run one iteration of each on the same batch and compare the eight losses, then a
   second iteration (after each took its own Adam step);
3. time both iterations interleaved (reference, spap, 2048^3 matmul, reference, ...) and
   report medians, the speedup (goal: >= 1.2x) and spap's conv+matmul FLOP/s as a
   fraction of the same run's matmul FLOP/s (goal: >= 0.85). FLOPs are the reference
   iteration's, counted with ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add
   = 2, backward included); spap does the same convolutions.

``--levers`` instead measures each optimisation applied alone to the reference iteration
(channels_last, torch.compile, batched forwards, reflect padding inside the conv,
foreach/fused Adam), interleaved with the unmodified reference.

    python benchmarks/perf_cyclegan.py                 # all three configs
    python benchmarks/perf_cyclegan.py --quick         # 64 and 128 only, fewer repeats
    python benchmarks/perf_cyclegan.py --levers --configs 64,128
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import _common as C
from reference.cyclegan import RefCycleGAN
from spap.models.cyclegan import convert_reference_discriminator as convert_discriminator
from spap.models.cyclegan import convert_reference_generator as convert_generator

# name -> (image size, residual blocks, ngf = ndf, shipped config)
CONFIGS: dict[str, tuple[int, int, int, str]] = {
    "256": (256, 9, 64, "cyclegan/facades"),
    "128": (128, 6, 64, "cyclegan/cityscapes"),
    "64": (64, 6, 32, "cyclegan/cityscapes"),
}
LOSS_NAMES = ("D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B")


# ----------------------------------------------------------------------------- builders


def make_batches(size: int, n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of one A and one B image, uniform in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "A": torch.rand(1, 3, size, size, generator=g) * 2 - 1,
            "B": torch.rand(1, 3, size, size, generator=g) * 2 - 1,
        }
        for _ in range(n)
    ]


def make_task(config: str, overrides: dict[str, Any], size: int, info: Any = None) -> Any:
    """spap's ``CycleGANTask`` for a shipped config (CPU; one process unless ``info``, a
    ``spap.train.distributed.DistInfo`` of an initialised process group, is given)."""
    from spap.config import from_dict, merge, read_yaml
    from spap.systems.cyclegan import apply_size as cyclegan_apply_size
    from spap.train.context import RunContext
    from spap.train.cyclegan import CycleGANTask
    from spap.train.distributed import DistInfo

    data = read_yaml(config)
    cyclegan_apply_size(data, size)
    data = merge(data, {"run": {"device": "cpu"}})
    data = merge(data, overrides)
    cfg = from_dict(CycleGANTask.config_class, data)
    ctx = RunContext(cfg.run, torch.device("cpu"), info or DistInfo())
    return CycleGANTask(cfg, ctx)


def copy_reference_weights(ref: RefCycleGAN, task: Any) -> None:
    """Load the reference networks' weights into the task's networks (strict)."""
    for name, net in ref.networks().items():
        convert = convert_generator if name[0] == "G" else convert_discriminator
        state, _ = convert(net.state_dict())
        missing, unexpected = task.nets[name].load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("attention.")]:
            raise RuntimeError(f"{name}: weights do not match ({missing}, {unexpected})")


def loss_gap(a: dict[str, float], b: dict[str, float]) -> float:
    """Largest relative difference between two loss dicts."""
    return max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-8) for k in LOSS_NAMES)


class Cycler:
    """Calls ``step(batch)`` on the batches in turn."""

    def __init__(self, step: Callable[[dict[str, torch.Tensor]], object], batches: list) -> None:
        self.step, self.batches, self.i = step, batches, 0

    def __call__(self) -> object:
        out = self.step(self.batches[self.i % len(self.batches)])
        self.i += 1
        return out


# ----------------------------------------------------------------------------- levers


class LeverCycleGAN(RefCycleGAN):
    """The reference iteration with optional optimisations (each measurable alone).

    ``batch_g``: "2+2" runs ``G_A([A, B])`` (fake_B and the identity idt_A in one batch-2
    forward) and ``G_B([B, A])``, then the two cycle forwards; "2+3" runs ``G_B([B, A])``,
    then ``G_A([A, B, fake_A])`` (fake_B, idt_A and rec_B), then ``G_B(fake_B)``.
    ``batch_d``: each discriminator sees ``[real, fake]`` in one forward. Instance norm
    normalises every image on its own, so both give the reference's losses.
    """

    def __init__(
        self,
        *,
        batch_g: str = "",
        batch_d: bool = False,
        reflect_in_conv: bool = False,
        adam: str = "default",
        channels_last: bool = False,
        compile: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch_g, self.batch_d, self.cl = batch_g, batch_d, channels_last
        if reflect_in_conv:
            for net in self.networks().values():
                fold_reflection_pads(net)
        for net in self.networks().values():
            if channels_last:
                net.to(memory_format=torch.channels_last)
            if compile:
                net.compile()
        if adam != "default":
            flag = {adam: True}
            lr, betas = 2e-4, (0.5, 0.999)
            self.optimizer_G = torch.optim.Adam(
                list(self.netG_A.parameters()) + list(self.netG_B.parameters()),
                lr=lr,
                betas=betas,
                **flag,
            )
            self.optimizer_D = torch.optim.Adam(
                list(self.netD_A.parameters()) + list(self.netD_B.parameters()),
                lr=lr,
                betas=betas,
                **flag,
            )

    def load_from(self, other: RefCycleGAN) -> LeverCycleGAN:
        for name, net in self.networks().items():
            src = other.networks()[name].state_dict()
            net.load_state_dict(src, strict=False)  # folded pads have no tensors
        return self

    def set_input(self, batch: dict[str, Any]) -> None:
        fmt = torch.channels_last if self.cl else torch.contiguous_format
        self.real_A = batch["A"].contiguous(memory_format=fmt)
        self.real_B = batch["B"].contiguous(memory_format=fmt)

    def forward(self) -> None:
        A, B, n = self.real_A, self.real_B, self.real_A.shape[0]
        if self.batch_g == "2+2":
            self.fake_B, self.idt_A = self.netG_A(torch.cat([A, B])).split(n)
            self.fake_A, self.idt_B = self.netG_B(torch.cat([B, A])).split(n)
            self.rec_A = self.netG_B(self.fake_B)
            self.rec_B = self.netG_A(self.fake_A)
        elif self.batch_g == "2+3":
            self.fake_A, self.idt_B = self.netG_B(torch.cat([B, A])).split(n)
            self.fake_B, self.idt_A, self.rec_B = self.netG_A(torch.cat([A, B, self.fake_A])).split(
                n
            )
            self.rec_A = self.netG_B(self.fake_B)
        else:
            super().forward()

    def backward_G(self) -> None:
        if self.batch_g:  # the identity images come from the batched forwards
            self.backward_G_losses()
        else:
            super().backward_G()

    def backward_D_basic(
        self, netD: nn.Module, real: torch.Tensor, fake: torch.Tensor
    ) -> torch.Tensor:
        if not self.batch_d:
            return super().backward_D_basic(netD, real, fake)
        pred_real, pred_fake = netD(torch.cat([real, fake.detach()])).split(real.shape[0])
        loss = (self.criterionGAN(pred_real, True) + self.criterionGAN(pred_fake, False)) * 0.5
        loss.backward()
        return loss


def fold_reflection_pads(net: nn.Module) -> None:
    """Replace every ``ReflectionPad2d(p)`` + ``Conv2d(padding=0)`` pair by one
    ``Conv2d(padding=p, padding_mode="reflect")`` with the same weights."""
    for module in net.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module)
        for i in range(len(children) - 1):
            pad, conv = children[i], children[i + 1]
            if isinstance(pad, nn.ReflectionPad2d) and isinstance(conv, nn.Conv2d):
                p = pad.padding[0]
                folded = nn.Conv2d(
                    conv.in_channels,
                    conv.out_channels,
                    conv.kernel_size,
                    stride=conv.stride,
                    padding=p,
                    bias=conv.bias is not None,
                    padding_mode="reflect",
                )
                folded.load_state_dict(conv.state_dict())
                module[i] = nn.Identity()
                module[i + 1] = folded


LEVERS: dict[str, dict[str, Any]] = {
    "channels_last": {"channels_last": True},
    "torch.compile": {"compile": True},
    "batched G forwards 2+2": {"batch_g": "2+2"},
    "batched G forwards 2+3": {"batch_g": "2+3"},
    "batched D real+fake": {"batch_d": True},
    "reflect pad inside conv": {"reflect_in_conv": True},
    "foreach Adam": {"adam": "foreach"},
    "fused Adam": {"adam": "fused"},
}


def run_levers(name: str, repeats: int, levers: list[str]) -> list[list[Any]]:
    size, n_blocks, width, _ = CONFIGS[name]
    torch.manual_seed(0)
    base = RefCycleGAN(ngf=width, ndf=width, n_blocks=n_blocks)
    batches = make_batches(size, 4)
    ref_losses = copy.deepcopy(base).train_step(batches[0])
    variants: dict[str, Callable[[], object]] = {"reference": Cycler(base.train_step, batches)}
    rows = []
    gaps = {}
    for lever in levers:
        torch.manual_seed(0)
        m = LeverCycleGAN(ngf=width, ndf=width, n_blocks=n_blocks, **LEVERS[lever]).load_from(base)
        gaps[lever] = loss_gap(ref_losses, m.train_step(batches[0]))  # also the warm-up
        variants[lever] = Cycler(m.train_step, batches)
    times = C.interleaved(variants, repeats, warmup=1)
    t_ref = C.median(times["reference"])
    for lever in levers:
        t = C.median(times[lever])
        rows.append([name, lever, t_ref, t, t_ref / t, f"{gaps[lever]:.1e}"])
    return rows


# ----------------------------------------------------------------------------- goal 1


def run_goal(name: str, repeats: int, overrides: dict[str, Any]) -> dict[str, Any]:
    size, n_blocks, width, config = CONFIGS[name]
    torch.manual_seed(0)
    ref = RefCycleGAN(ngf=width, ndf=width, n_blocks=n_blocks)
    model = {"ngf": width, "ndf": width, "n_blocks": n_blocks, "attention": "none"}
    task = make_task(config, C.merge_dicts({"model": model}, overrides), size)
    copy_reference_weights(ref, task)
    batches = make_batches(size, 4)

    # same weights, same batch: the losses must agree within fp32 rounding (the second
    # iteration's also reflect Adam's first step, which moves every weight by +-lr whatever
    # the size of its gradient, so rounding-level gradient differences show up more there)
    gaps = []
    for i in range(2):
        ref_losses = ref.train_step(batches[i])
        ours = task.train_step(batches[i], i)
        gaps.append(loss_gap(ref_losses, ours))
    step = {"i": 2}

    def ours_step(batch: dict[str, torch.Tensor]) -> None:
        task.train_step(batch, step["i"])
        step["i"] += 1

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    times = C.interleaved(
        {
            "reference": Cycler(ref.train_step, batches),
            "spap": Cycler(ours_step, batches),
            "matmul": lambda: a @ b,
        },
        repeats,
        warmup=1 if size >= 256 else 2,
    )
    # the reference's conv + matmul FLOPs are the work of the iteration (spap's are the same)
    ref_flops = C.count_flops(lambda: ref.train_step(batches[0]))
    flops = ref_flops
    t_ref, t_ours = C.median(times["reference"]), C.median(times["spap"])
    mm = 2 * 2048**3 / C.median(times["matmul"])
    return {
        "config": f"{size}px/{n_blocks}blk/{width}",
        "gap": gaps[0],
        "gap2": gaps[1],
        "t_ref": t_ref,
        "t_ours": t_ours,
        "speedup": t_ref / t_ours,
        "flops": flops,
        "ref_flops": ref_flops,
        "ours_fps": flops / t_ours,
        "ref_fps": ref_flops / t_ref,
        "matmul_fps": mm,
    }


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    from spap.config import parse_overrides as parse

    return parse(pairs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="64 and 128 only, fewer repeats")
    C.add_clock_option(p)
    p.add_argument("--configs", help="comma-separated subset of 256,128,64")
    p.add_argument("--repeats", type=int, help="timed iterations per variant")
    p.add_argument("--levers", action="store_true", help="measure each optimisation alone")
    p.add_argument("--lever", action="append", help="only these levers (repeatable)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="spap config overrides")
    args = p.parse_args(argv)
    C.apply_clock_option(args)
    names = (args.configs or ("128,64" if args.quick else "256,128,64")).split(",")
    print(C.machine_line())

    if args.levers:
        rows = []
        for name in names:
            repeats = args.repeats or (3 if name == "256" else 3 if args.quick else 5)
            rows += run_levers(name, repeats, args.lever or list(LEVERS))
        print("\nEach optimisation alone, applied to the reference iteration (median s/iter):")
        headers = ["config", "lever", "reference s", "with lever s", "speedup", "loss gap"]
        print(C.table(headers, rows))
        print(C.machine_line())
        return 0

    overrides = parse_overrides(args.overrides)
    rows = []
    for name in names:
        repeats = args.repeats or (3 if name == "256" else 3 if args.quick else 7)
        print(f"config {name}: {repeats} timed iterations per variant", file=sys.stderr)
        r = run_goal(name, repeats, overrides)
        frac = r["ours_fps"] / r["matmul_fps"]
        rows.append(
            [
                r["config"],
                r["t_ref"],
                r["t_ours"],
                f"{r['speedup']:.3f}x",
                C.verdict(r["speedup"] >= 1.2),
                r["flops"] / 1e9,
                r["ref_fps"] / 1e9,
                r["ours_fps"] / 1e9,
                r["matmul_fps"] / 1e9,
                f"{frac:.2f}",
                C.verdict(frac >= 0.85),
                f"{r['gap']:.1e}",
                f"{r['gap2']:.1e}",
            ]
        )
    headers = [
        "config",
        "reference s/iter",
        "spap s/iter",
        "speedup (goal >= 1.2x)",
        "",
        "GFLOP/iter",
        "reference GFLOP/s",
        "spap GFLOP/s (reference FLOPs / time)",
        "matmul GFLOP/s",
        "spap/matmul (goal >= 0.85)",
        "",
        "loss gap, 1st iteration",
        "2nd iteration",
    ]
    print("\nGoal 1: CycleGAN training iteration, spap vs reference (medians, interleaved):")
    print(C.table(headers, rows))
    print(C.machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
