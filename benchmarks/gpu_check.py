"""Goal 6: the GPU check. One command, one run, one set of tables (under 8 minutes on one GPU):

1. **CycleGAN 256 px**: the reference iteration (``tests/reference/cyclegan.py``'s
   ``RefCycleGAN``, fp32) and spap's (``CycleGANTask``, the code ``spap train cyclegan``
   runs, ``cyclegan/facades``) from identical weights, at batch 1 and batch 4, spap in fp32,
   bf16 and fp16 (gradient scalers), eager and with ``run.compile``, plus one tuned setting
   (bf16, channels_last, batched generator forwards); images/s, peak GPU memory, and each
   run's first-iteration losses against spap's fp32 eager losses (same weights, same batch).
   Goal: spap's best setting >= 2x the reference iteration's images/s at batch 1.
2. **SPAP / plain**: ``cyclegan/facades_spap`` vs ``cyclegan/facades`` at batch 1 (fp32 and
   bf16, eager), with the FLOP and parameter ratios.
3. **GAN 128 px, batch 64**: ``gan/celebahq128_baseline`` (SNGAN) and
   ``gan/celebahq128_spap_c2f``, fp32 and bf16; SPAP/SNGAN time ratio.
4. **Distributed**: a 1-process NCCL group: spap's CycleGAN and GAN steps with the project's
   gradient all-reduce, broadcast and flag paths forced on (they are skipped for one process
   otherwise; the GAN's BatchNorm becomes SyncBatchNorm), and a ``DistributedDataParallel``
   generator forward/backward.

Every variant runs its first iterations (compiling, under ``run.compile``) before the timed
steps, which are interleaved across the variants of a table (medians). A time budget keeps
the whole run under 8 minutes: compiled variants are built last, and one whose compile
would not fit is reported as skipped. A failing variant is reported in its row; the other
rows still run.

Runs on a machine with only stock PyTorch (CUDA), torchvision, numpy, Pillow, PyYAML, tqdm,
TensorBoard, safetensors and ONNX Runtime, without installing the project:

    PYTHONPATH=src python3 benchmarks/gpu_check.py              # one CUDA GPU
    PYTHONPATH=src python3 benchmarks/gpu_check.py --json out.json
    PYTHONPATH=src python3 benchmarks/gpu_check.py --dry-run    # the plumbing on the CPU, tiny sizes
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

T0 = time.perf_counter()  # the whole run, torch's import included

HERE = Path(__file__).resolve().parent
for _path in (HERE.parent / "src", HERE):  # spap without installing it; _common, perf_cyclegan
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
from spap.cli import quiet_openmp_wait  # noqa: E402  (torch-free; before torch is imported)

quiet_openmp_wait()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import socket  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

import _common as C  # noqa: E402
from perf_cyclegan import copy_reference_weights  # noqa: E402
from reference.cyclegan import RefCycleGAN  # noqa: E402

#: Largest relative difference of a first-iteration loss from spap's fp32 eager loss.
#: fp32 allows for TF32 convolutions and other kernels (compiled, batched); bf16 has 8
#: mantissa bits, fp16 10.
TOLERANCE = {"fp32": 2e-2, "bf16": 1e-1, "fp16": 5e-2}


def elapsed() -> float:
    return time.perf_counter() - T0


def note(msg: str) -> None:
    print(f"[{elapsed():6.1f} s] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- sizes


@dataclasses.dataclass(frozen=True)
class Spec:
    device: torch.device
    size: int  # CycleGAN image size
    ngf: int
    n_blocks: int
    batches: tuple[int, int]  # the two CycleGAN batch sizes
    gan_size: int
    gan_batch: int
    gan_width: dict[str, int]  # model.g_ch / d_ch overrides ({} = as configured)
    precisions: tuple[str, ...]
    repeats: int
    compile_backend: str | None  # None: inductor (torch.compile's default)
    compiled: tuple[str, ...]  # which spap settings are compiled, in priority order
    budget: float  # seconds: the whole run


def gpu_spec(args: argparse.Namespace) -> Spec:
    return Spec(
        device=torch.device("cuda", torch.cuda.current_device()),
        size=256,
        ngf=64,
        n_blocks=9,
        batches=(1, 4),
        gan_size=128,
        gan_batch=64,
        gan_width={},
        precisions=("fp32", "bf16", "fp16"),
        repeats=args.repeats or 10,
        compile_backend=None,
        compiled=("bf16", "fp16", "tuned", "fp32"),
        budget=args.budget,
    )


def dry_spec(args: argparse.Namespace) -> Spec:
    return Spec(
        device=torch.device("cpu"),
        size=32,
        ngf=8,
        n_blocks=2,
        batches=(1, 2),
        gan_size=32,
        gan_batch=4,
        gan_width={"g_ch": 4, "d_ch": 4},
        precisions=("fp32", "bf16"),  # fp16 needs CUDA
        repeats=args.repeats or 1,
        compile_backend="eager",  # dynamo only: the plumbing, not the code generation
        compiled=("fp32",),
        budget=args.budget,
    )


# ----------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_mark(device: torch.device) -> int:
    """Start measuring peak memory; returns the bytes allocated now."""
    if device.type != "cuda":
        return 0
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_mib(device: torch.device, base: int) -> float | None:
    """Peak bytes allocated above ``base`` since :func:`memory_mark` (MiB); None on the CPU."""
    if device.type != "cuda":
        return None
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def floats(out: Any) -> dict[str, float]:
    """A step's returned losses as floats (tensors or numbers; anything else dropped)."""
    if not isinstance(out, dict):
        return {}
    res = {}
    for k, v in out.items():
        with contextlib.suppress(TypeError, ValueError, RuntimeError):
            res[k] = float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)
    return res


def gap(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Largest relative difference over the losses both have."""
    keys = [k for k in a if k in b]
    if not keys:
        return None
    return max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-8) for k in keys)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def compile_backend(backend: str | None):
    """``nn.Module.compile()`` (what ``run.compile`` calls) with ``backend`` (None: as is)."""
    if backend is None:
        yield
        return
    original = nn.Module.compile

    def with_backend(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("backend", backend)
        return original(self, *args, **kwargs)

    nn.Module.compile = with_backend  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.compile = original  # type: ignore[method-assign]


@dataclasses.dataclass
class Row:
    """One timed variant (a task at one batch size)."""

    table: str
    name: str
    batch: int
    precision: str = "fp32"
    compiled: bool = False
    step: Callable[[], Any] | None = None
    first: dict[str, float] = dataclasses.field(default_factory=dict)
    base: str | None = None  # the row whose first losses this one's are compared with
    peak: float | None = None
    build_s: float = 0.0
    error: str | None = None
    nonfinite: int = 0
    returned: bool = True  # the step returns its losses
    times: list[float] = dataclasses.field(default_factory=list)

    @property
    def s(self) -> float | None:
        return C.median(self.times) if self.times else None

    @property
    def ips(self) -> float | None:
        return self.batch / self.s if self.s else None


class Stepper:
    """Calls ``fn(batch, i)`` on the batches in turn, synchronising the device after each
    call, and counts non-finite losses into ``row``."""

    def __init__(self, fn: Callable[[Any, int], Any], batches: list, device: torch.device) -> None:
        self.fn, self.batches, self.device, self.i = fn, batches, device, 0
        self.row: Row | None = None

    def __call__(self) -> dict[str, float]:
        out = floats(self.fn(self.batches[self.i % len(self.batches)], self.i))
        self.i += 1
        sync(self.device)
        if self.row is not None and not all(math.isfinite(v) for v in out.values()):
            self.row.nonfinite += 1
        return out


# ----------------------------------------------------------------------------- builders


def cyclegan_task(config: str, overrides: dict[str, Any], spec: Spec, info: Any = None) -> Any:
    from spap.config import from_dict, merge, read_yaml
    from spap.systems.cyclegan import apply_size
    from spap.train.context import RunContext
    from spap.train.cyclegan import CycleGANTask
    from spap.train.distributed import DistInfo

    data = read_yaml(config)
    apply_size(data, spec.size)
    model = {"ngf": spec.ngf, "ndf": spec.ngf, "n_blocks": spec.n_blocks}
    data = merge(data, {"model": model, "run": {"device": str(spec.device)}})
    cfg = from_dict(CycleGANTask.config_class, merge(data, overrides))
    return CycleGANTask(cfg, RunContext(cfg.run, spec.device, info or DistInfo()))


def gan_task(config: str, overrides: dict[str, Any], spec: Spec, info: Any = None) -> Any:
    from spap.config import from_dict, merge, read_yaml
    from spap.systems.gan import apply_size
    from spap.train.context import RunContext
    from spap.train.distributed import DistInfo
    from spap.train.gan import GANTask

    data = read_yaml(config)
    apply_size(data, spec.gan_size)
    run = {"device": str(spec.device)}
    data = merge(
        data, {"model": spec.gan_width, "train": {"batch_size": spec.gan_batch}, "run": run}
    )
    cfg = from_dict(GANTask.config_class, merge(data, overrides))
    return GANTask(cfg, RunContext(cfg.run, spec.device, info or DistInfo()))


def image_batches(size: int, batch: int, n: int, device: torch.device, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "A": (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device),
            "B": (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device),
        }
        for _ in range(n)
    ]


def gan_batches(size: int, batch: int, n: int, device: torch.device) -> list:
    g = torch.Generator().manual_seed(1)
    return [
        {"image": (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device)}
        for _ in range(n)
    ]


SETTINGS: dict[str, dict[str, Any]] = {
    "fp32": {"run": {"precision": "fp32"}},
    "bf16": {"run": {"precision": "bf16"}},
    "fp16": {"run": {"precision": "fp16"}},
    "tuned": {
        "run": {"precision": "bf16", "channels_last": True},
        "train": {"batched_forwards": "always"},
    },
}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


def warm(row: Row, st: Stepper, base: int, first: bool) -> None:
    """Two untimed steps (compiling, autotuning); the first one's losses and the peak."""
    st.row = row  # non-finite losses of every step are counted from here on
    out = st()
    row.returned = bool(out)
    if first:
        row.first = out
    st()
    row.step, row.peak = st, peak_mib(st.device, base)
    reset_peak(st.device)


def time_rows(rows: list[Row], repeats: int) -> None:
    """Time every built row, interleaved (medians)."""
    live = {f"{r.table}: {r.name} / batch {r.batch}": r for r in rows if r.step and not r.error}
    if not live:
        return
    times = C.interleaved({k: r.step for k, r in live.items()}, repeats, warmup=0, progress=False)
    for k, r in live.items():
        r.times = times[k]


class CycleGANCheck:
    """Tables 1 and 2: the reference iteration and spap's variants, built one by one."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        torch.manual_seed(0)
        self.ref = RefCycleGAN(ngf=spec.ngf, ndf=spec.ngf, n_blocks=spec.n_blocks)
        self.initial = copy.deepcopy(self.ref)  # the weights every plain variant starts from
        self.data = {b: image_batches(spec.size, b, 3, spec.device, seed=b) for b in spec.batches}
        self.rows: list[Row] = []
        self.compile_s: list[float] = []
        self.cost: dict[str, tuple[float, float]] = {}  # name -> (GFLOP/iter, M parameters)

    def add_reference(self) -> None:
        spec, dev, ref = self.spec, self.spec.device, self.ref
        base = memory_mark(dev)
        t0 = time.perf_counter()
        for net in ref.networks().values():
            net.to(dev)
        ref.criterionGAN.to(dev)
        for b in spec.batches:
            row = Row("cyclegan", "reference iteration", b, base="spap fp32")
            try:
                warm(
                    row,
                    Stepper(lambda batch, i: ref.train_step(batch), self.data[b], dev),
                    base,
                    b == spec.batches[0],
                )
            except Exception as exc:
                row.error = first_line(exc)
                traceback.print_exc()
            row.build_s = time.perf_counter() - t0
            self.rows.append(row)
        note("built the reference iteration")

    def add_spap(self, setting: str, compiled: bool, spap_config: bool = False) -> None:
        spec, dev = self.spec, self.spec.device
        label = "SPAP config" if spap_config else "spap"
        name = f"{label} {setting}" + (" + compile" if compiled else "")
        base_name = f"{label} fp32"
        precision = SETTINGS[setting]["run"]["precision"]
        batches = spec.batches[:1] if spap_config else spec.batches
        table = "spap" if spap_config else "cyclegan"
        rows = [
            Row(table, name, b, precision, compiled, base=None if name == base_name else base_name)
            for b in batches
        ]
        t0 = time.perf_counter()
        try:
            over = C.merge_dicts(SETTINGS[setting], {"run": {"compile": compiled}})
            config = "cyclegan/facades_spap" if spap_config else "cyclegan/facades"
            if not spap_config:
                over = C.merge_dicts(over, {"model": {"attention": "none"}})
            base = memory_mark(dev)
            torch.manual_seed(0)  # the SPAP configs' units: the same weights in every variant
            with compile_backend(spec.compile_backend if compiled else None):
                task = cyclegan_task(config, over, spec)
                if not spap_config:
                    copy_reference_weights(self.initial, task)
                params = sum(p.numel() for net in task.nets.values() for p in net.parameters())
                for row in rows:
                    st = Stepper(task.train_step, self.data[row.batch], dev)
                    warm(row, st, base, row.batch == spec.batches[0])
                if compiled and getattr(task.ctx, "_compile_failed", False):
                    raise RuntimeError("torch.compile failed and the run fell back to eager")
                if setting == "fp32" and not compiled:  # FLOPs of one iteration (eager)
                    flops = C.count_flops(rows[0].step)
                    self.cost[label] = (flops / 1e9, params / 1e6)
        except Exception as exc:
            for row in rows:
                row.error = first_line(exc)
            traceback.print_exc()
        took = time.perf_counter() - t0
        for row in rows:
            row.build_s = took
        if compiled:
            self.compile_s.append(took)
        self.rows.extend(rows)
        note(f"built {name} ({took:.1f} s)")

    def skip(self, setting: str, why: str) -> None:
        precision = SETTINGS[setting]["run"]["precision"]
        for b in self.spec.batches:
            self.rows.append(
                Row("cyclegan", f"spap {setting} + compile", b, precision, True, error=why)
            )


class GANCheck:
    """Table 3: SNGAN baseline vs SPAP (coarse to fine), fp32 and bf16."""

    CONFIGS = {"SNGAN baseline": "gan/celebahq128_baseline", "SPAP c2f": "gan/celebahq128_spap_c2f"}

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.rows: list[Row] = []
        self.params: dict[str, float] = {}

    def build(self) -> None:
        spec, dev = self.spec, self.spec.device
        data = None
        for label, config in self.CONFIGS.items():
            for precision in spec.precisions[:2]:  # fp32, bf16
                name = f"{label} {precision}"
                row = Row(
                    "gan",
                    name,
                    spec.gan_batch,
                    precision,
                    base=None if precision == "fp32" else f"{label} fp32",
                )
                try:
                    base = memory_mark(dev)
                    torch.manual_seed(0)  # same weights in both precisions
                    task = gan_task(config, {"run": {"precision": precision}}, spec)
                    self.params[label] = sum(p.numel() for p in task.G.parameters()) + sum(
                        p.numel() for p in task.D.parameters()
                    )
                    if data is None:
                        data = gan_batches(spec.gan_size, task.batch_size, 2, dev)
                    warm(row, Stepper(task.train_step, data, dev), base, True)
                except Exception as exc:
                    row.error = first_line(exc)
                    traceback.print_exc()
                self.rows.append(row)
                note(f"built {name}")


class DistributedCheck:
    """Table 4: a 1-process process group (NCCL on CUDA, gloo on the CPU)."""

    def __init__(self, spec: Spec, cyc: CycleGANCheck) -> None:
        self.spec, self.cyc = spec, cyc
        self.rows: list[Row] = []
        self.backend = "nccl" if spec.device.type == "cuda" else "gloo"

    def run(self) -> None:
        import torch.distributed as dist

        from spap.train import distributed as D

        spec, dev = self.spec, self.spec.device
        if not dist.is_available():
            self.rows.append(
                Row("ddp", "torch.distributed", 1, error="not available in this torch")
            )
            return
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        real_active = D.active
        try:
            dist.init_process_group(
                self.backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
            )
            # one process: spap skips its all-reduce, broadcast and flag collectives (and
            # SyncBatchNorm); force them on, so that they run through the backend
            D.active = lambda: dist.is_initialized()
            info = D.DistInfo(0, 1, 0)
            self._cyclegan(info)
            self._gan(info)
            self._ddp_module()
            time_rows(self.rows, max(1, spec.repeats // 2))
        except Exception as exc:
            self.rows.append(Row("ddp", f"{self.backend} process group", 1, error=first_line(exc)))
            traceback.print_exc()
        finally:
            D.active = real_active
            with contextlib.suppress(Exception):
                dist.destroy_process_group()

    def _cyclegan(self, info: Any) -> None:
        spec, dev = self.spec, self.spec.device
        b = spec.batches[0]
        row = Row("ddp", f"spap CycleGAN fp32, {self.backend} all-reduce", b, base="spap fp32")
        try:
            base = memory_mark(dev)
            task = cyclegan_task("cyclegan/facades", {"model": {"attention": "none"}}, spec, info)
            copy_reference_weights(self.cyc.initial, task)
            warm(row, Stepper(task.train_step, self.cyc.data[b], dev), base, True)
        except Exception as exc:
            row.error = first_line(exc)
            traceback.print_exc()
        self.rows.append(row)

    def _gan(self, info: Any) -> None:
        spec, dev = self.spec, self.spec.device
        sync_bn = " + SyncBatchNorm" if dev.type == "cuda" else ""
        row = Row(
            "ddp",
            f"spap GAN baseline fp32{sync_bn}, {self.backend} all-reduce",
            spec.gan_batch,
            base="SNGAN baseline fp32",
        )
        try:
            base = memory_mark(dev)
            torch.manual_seed(0)
            task = gan_task(GANCheck.CONFIGS["SNGAN baseline"], {}, spec, info)
            if dev.type == "cuda" and not any(
                isinstance(m, nn.SyncBatchNorm) for m in task.G.modules()
            ):
                raise RuntimeError("BatchNorm was not converted to SyncBatchNorm")
            data = gan_batches(spec.gan_size, task.batch_size, 2, dev)
            warm(row, Stepper(task.train_step, data, dev), base, True)
        except Exception as exc:
            row.error = first_line(exc)
            traceback.print_exc()
        self.rows.append(row)

    def _ddp_module(self) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        spec, dev = self.spec, self.spec.device
        row = Row(
            "ddp",
            "DistributedDataParallel(reference G): forward + backward + Adam",
            spec.batches[0],
        )
        try:
            base = memory_mark(dev)
            g = copy.deepcopy(self.cyc.initial.netG_A).to(dev)
            model = DDP(g, device_ids=[dev.index] if dev.type == "cuda" else None)
            opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))

            def step(batch: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
                opt.zero_grad(set_to_none=True)
                loss = (model(batch["A"]) - batch["B"]).abs().mean()
                loss.backward()
                opt.step()
                return {"L1": loss.detach()}

            warm(row, Stepper(step, self.cyc.data[spec.batches[0]], dev), base, True)
        except Exception as exc:
            row.error = first_line(exc)
            traceback.print_exc()
        self.rows.append(row)


# ----------------------------------------------------------------------------- report


def check_losses(rows: list[Row], firsts: dict[str, dict[str, float]]) -> None:
    """Fill in each row's gap to its base row's first-iteration losses."""
    for r in rows:
        r._gap = gap(r.first, firsts[r.base]) if r.base in firsts and r.first else None  # type: ignore[attr-defined]


def loss_cell(r: Row) -> str:
    g = getattr(r, "_gap", None)
    finite = r.nonfinite == 0 and all(math.isfinite(v) for v in r.first.values())
    if not finite:
        return "NOT FINITE (MISS)"
    if not r.returned:
        return "(no losses returned)"
    if g is None:
        return "finite"
    tol = TOLERANCE.get(r.precision, TOLERANCE["fp32"])
    return f"{g:.1e} {'ok' if g <= tol else 'MISS'} (tol {tol:g})"


def fmt(v: float | None, digits: int = 3) -> str:
    return "" if v is None else f"{v:#.{digits}g}".rstrip(".")


def mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def report(spec: Spec, cyc: CycleGANCheck, gan: GANCheck, ddp: DistributedCheck) -> dict[str, Any]:
    firsts = {}
    for r in cyc.rows + gan.rows:
        if (
            r.first
            and r.base is None
            and r.batch == (spec.gan_batch if r.table == "gan" else spec.batches[0])
        ):
            firsts.setdefault(r.name, r.first)
    all_rows = cyc.rows + gan.rows + ddp.rows
    check_losses(all_rows, firsts)
    summary: dict[str, Any] = {"goals": {}}

    # table 1
    refs = {r.batch: r for r in cyc.rows if r.name == "reference iteration"}
    print(
        f"\n### CycleGAN {spec.size}x{spec.size} (9 blocks, width 64: cyclegan/facades), training iteration"
        if spec.size == 256
        else f"\n### CycleGAN {spec.size}x{spec.size} (dry run), training iteration"
    )
    headers = [
        "variant",
        "batch",
        "s/iter",
        "images/s",
        "vs reference",
        "peak MiB",
        "build s",
        "1st-iteration loss gap vs spap fp32",
    ]
    rows = []
    for r in [x for x in cyc.rows if x.table == "cyclegan"]:
        ref = refs.get(r.batch)
        ratio = r.ips / ref.ips if r.ips and ref is not None and ref.ips else None
        if r.error:
            rows.append([r.name, r.batch, r.error, "", "", "", "", ""])
            continue
        rows.append(
            [
                r.name,
                r.batch,
                fmt(r.s),
                fmt(r.ips),
                "" if ratio is None else f"{ratio:.2f}x",
                mib(r.peak),
                f"{r.build_s:.0f}",
                loss_cell(r),
            ]
        )
    print(C.table(headers, rows))
    b1 = spec.batches[0]
    spap_b1 = [
        r
        for r in cyc.rows
        if r.table == "cyclegan"
        and r.name != "reference iteration"
        and r.batch == b1
        and r.ips
        and "MISS" not in loss_cell(r)  # settings whose losses are right
    ]
    ref1 = refs.get(b1)
    if spap_b1 and ref1 is not None and ref1.ips:
        best = max(spap_b1, key=lambda r: r.ips or 0)
        ratio = (best.ips or 0) / ref1.ips
        ok = ratio >= 2.0
        print(
            f"\nGoal: spap's best setting at batch {b1} ({best.name}) {ratio:.2f}x the reference iteration's images/s (>= 2x): {C.verdict(ok)}"
        )
        summary["goals"]["best_vs_reference_b1"] = {
            "setting": best.name,
            "ratio": ratio,
            "pass": ok,
        }

    # table 2
    print(
        f"\n### SPAP units vs plain, CycleGAN {spec.size}x{spec.size}, batch {b1} (cyclegan/facades_spap vs cyclegan/facades)"
    )
    rows = []
    plain = {
        r.precision: r
        for r in cyc.rows
        if r.table == "cyclegan"
        and not r.compiled
        and r.batch == b1
        and r.name.startswith("spap ")
        and "tuned" not in r.name
    }
    fl_p, pa_p = cyc.cost.get("spap", (None, None))
    fl_s, pa_s = cyc.cost.get("SPAP config", (None, None))
    for r in [x for x in cyc.rows if x.table == "spap"]:
        base = plain.get(r.precision)
        if r.error or base is None or not base.s or not r.s:
            rows.append([r.precision, r.error or base and base.error or "", "", "", "", "", ""])
            continue
        t = r.s / base.s
        rows.append(
            [
                r.precision,
                fmt(base.s),
                fmt(r.s),
                f"{t:.2f}x",
                C.verdict(t <= 1.25),
                "" if not fl_p or not fl_s else f"{fl_s / fl_p:.2f}x",
                "" if not pa_p or not pa_s else f"{pa_s / pa_p:.2f}x",
            ]
        )
        summary["goals"][f"spap_vs_plain_{r.precision}"] = {"ratio": t, "pass": t <= 1.25}
    print(
        C.table(
            [
                "precision",
                "plain s/iter",
                "SPAP s/iter",
                "SPAP / plain",
                "<= 1.25x",
                "FLOPs ratio",
                "params ratio",
            ],
            rows,
        )
    )
    if fl_p and fl_s:
        print(
            f"plain: {fl_p:.1f} GFLOP/iter, {pa_p:.2f} M parameters; SPAP: {fl_s:.1f} GFLOP/iter, {pa_s:.2f} M parameters"
        )

    # table 3
    print(
        f"\n### GAN {spec.gan_size}x{spec.gan_size}, batch {spec.gan_batch} (gan/celebahq128_*), training step"
    )
    rows = []
    gbase = {r.precision: r for r in gan.rows if r.name.startswith("SNGAN")}
    for r in gan.rows:
        b = gbase.get(r.precision)
        t = r.s / b.s if r.s and b is not None and b.s else None
        goal = C.verdict(t <= 1.3) if t is not None and r.name.startswith("SPAP") else ""
        if r.error:
            rows.append([r.name, r.error, "", "", "", "", ""])
            continue
        rows.append(
            [
                r.name,
                fmt(r.s),
                fmt(r.ips),
                "" if t is None else f"{t:.2f}x",
                goal,
                mib(r.peak),
                loss_cell(r),
            ]
        )
        if goal:
            summary["goals"][f"gan_spap_vs_sngan_{r.precision}"] = {"ratio": t, "pass": t <= 1.3}
    print(
        C.table(
            [
                "variant",
                "s/step",
                "images/s",
                "vs SNGAN",
                "<= 1.3x",
                "peak MiB",
                "1st-step loss gap vs fp32",
            ],
            rows,
        )
    )
    if gan.params:
        print(
            "parameters (G + D): "
            + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in gan.params.items())
        )

    # table 4
    print(f"\n### Distributed: a 1-process {ddp.backend} group")
    rows = []
    for r in ddp.rows:
        if r.error:
            rows.append([r.name, r.batch, r.error, "", ""])
            continue
        rows.append([r.name, r.batch, fmt(r.s), mib(r.peak), loss_cell(r)])
    print(C.table(["step", "batch", "s/step", "peak MiB", "loss gap vs single process"], rows))

    failed = [r for r in all_rows if r.error and not r.error.startswith("skipped")]
    bad = [r for r in all_rows if not r.error and "MISS" in loss_cell(r)]
    summary["failed"] = [f"{r.name} (batch {r.batch}): {r.error}" for r in failed]
    summary["loss_misses"] = [f"{r.name} (batch {r.batch})" for r in bad]
    summary["rows"] = [
        {k: v for k, v in dataclasses.asdict(r).items() if k != "step"}
        | {"s": r.s, "ips": r.ips, "gap": getattr(r, "_gap", None)}
        for r in all_rows
    ]
    return summary


def machine(spec: Spec) -> str:
    if spec.device.type == "cuda":
        p = torch.cuda.get_device_properties(spec.device)
        return (
            f"gpu: {p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version()}, torch {torch.__version__}; " + C.machine_line()
        )
    return "dry run on the CPU (tiny sizes; timings and memory mean nothing); " + C.machine_line()


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the plumbing on the CPU at tiny sizes")
    p.add_argument("--repeats", type=int, help="timed steps per variant (default 10; dry run 1)")
    p.add_argument(
        "--budget", type=float, default=450.0, help="seconds for the whole run (default 450)"
    )
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device; use --dry-run to check the plumbing on the CPU",
            file=sys.stderr,
        )
        return 2
    spec = dry_spec(args) if args.dry_run else gpu_spec(args)
    if spec.device.type == "cuda":  # spap's default (run.cudnn_benchmark), for every variant
        torch.backends.cudnn.benchmark = True
    if args.dry_run:
        torch.set_num_threads(1)  # tiny tensors: one thread is fastest
    print(machine(spec))
    print(
        f"{spec.repeats} timed steps per variant (interleaved, medians), time budget "
        f"{spec.budget:.0f} s; cuDNN benchmark mode for every variant (spap's run.cudnn_benchmark)"
    )

    cyc = CycleGANCheck(spec)
    gan = GANCheck(spec)
    ddp = DistributedCheck(spec, cyc)
    # eager variants first: they are quick; compiled ones last, while the budget allows
    cyc.add_reference()
    for setting in (*spec.precisions, "tuned"):
        if setting == "tuned" and "bf16" not in spec.precisions:
            continue
        cyc.add_spap(setting, compiled=False)
    for setting in spec.precisions[:2]:
        cyc.add_spap(setting, compiled=False, spap_config=True)
    gan.build()
    time_rows(gan.rows, spec.repeats)
    note("timed the GAN steps")
    ddp.run()
    note("ran the distributed checks")
    reserve = 60.0 if not args.dry_run else 5.0  # the CycleGAN timing and the report
    for setting in () if args.no_compile else spec.compiled:
        if setting != "tuned" and setting not in spec.precisions:
            continue
        guess = max(cyc.compile_s) if cyc.compile_s else 0.0
        if elapsed() + guess + reserve > spec.budget:
            cyc.skip(
                setting,
                f"skipped: time budget ({elapsed():.0f} s used, a compile took {guess:.0f} s)",
            )
            continue
        cyc.add_spap(setting, compiled=True)
    time_rows(cyc.rows, spec.repeats)
    note("timed the CycleGAN iterations")

    summary = report(spec, cyc, gan, ddp)
    total = elapsed()
    summary["total_s"] = total
    print(f"\nwhole run: {total:.0f} s (goal < 480 s: {C.verdict(total < 480)})")
    if summary["failed"]:
        print("FAILED: " + "; ".join(summary["failed"]))
    if summary["loss_misses"]:
        print("losses out of tolerance: " + ", ".join(summary["loss_misses"]))
    print(machine(spec))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
    return 1 if summary["failed"] or summary["loss_misses"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
