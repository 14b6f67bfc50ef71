"""``bonemet bench seg``: training images/s and inference slices/s of each model, measured in one run."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..models import count_parameters, create_model, split_outputs
from ..models.cost import gmacs_per_slice


def median_seconds(fn: Callable[[], None], reps: int, warmup: int = 1, device: torch.device | None = None) -> float:
    """Median seconds of ``fn`` over ``reps`` runs after ``warmup`` runs (waiting for a GPU's queue to empty)."""
    dev = device or torch.device("cpu")
    for _ in range(warmup):
        fn()
    sync(dev)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def sync(device: torch.device) -> None:
    """Wait for a GPU's queue to empty (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_phases(step: Callable[[], tuple[float, ...]], reps: int, warmup: int = 1) -> tuple[float, ...]:
    """Per-phase medians of ``step``'s own timings (seconds of each phase) over ``reps`` calls after ``warmup``."""
    for _ in range(warmup):
        step()
    runs = [step() for _ in range(reps)]
    return tuple(sorted(r[k] for r in runs)[len(runs) // 2] for k in range(len(runs[0])))


def bench_models(names: Sequence[str], size: int = 224, width: int = 32, batch_size: int = 8, reps: int = 3,
                 channels: int = 3, log: Callable[[str], None] = print, device: str | torch.device = "cpu",
                 mixed_inference: bool = False) -> list[dict]:
    """One row per model: params, GMAC/slice, training images/s (Adam step) and the milliseconds of its forward,
    backward and optimiser phases (medians of each) in fp32 and with ``seg train --bf16``'s
    mixed precision on ``device`` (on a CPU: bfloat16 autocast + channels_last, measured only where the CPU has
    native bf16, last, since it changes the model's memory format), inference slices/s (``mixed_inference``: also
    under the mixed-precision autocast)."""
    from ..devices import Precision, cpu_bf16_supported, resolve_device, training_precision

    dev = resolve_device(device)
    rows = []
    torch.manual_seed(0)
    x = torch.rand(batch_size, channels, size, size, device=dev)
    y = (torch.rand(batch_size, 1, size, size, device=dev) > 0.97).float()
    for name in names:
        model = create_model(name, width=width, in_channels=channels)
        gmac = gmacs_per_slice(model, channels, size)
        fp32 = training_precision(model, False, dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def train_step(precision: Precision) -> tuple[float, float, float]:
            """One Adam step; seconds of its forward pass (with the loss), backward pass and optimiser step."""
            model.train()
            opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            with precision.autocast():
                lo, bo = split_outputs(model(precision.to_input(x)))
                loss = F.binary_cross_entropy_with_logits(lo.float(), y)
                if bo is not None:
                    loss = 0.7 * loss + 0.3 * F.binary_cross_entropy_with_logits(bo.float(), y)
            t1 = time.perf_counter()
            precision.backward(loss)
            sync(dev)
            t2 = time.perf_counter()
            precision.update(opt)
            sync(dev)
            return t1 - t0, t2 - t1, time.perf_counter() - t2

        def infer(precision: Precision) -> None:
            model.eval()
            with torch.inference_mode(), precision.autocast():
                model(precision.to_input(x))

        phases = step_phases(lambda: train_step(fp32), reps)
        t_train = sum(phases)
        t_inf = median_seconds(lambda: infer(fp32), reps, device=dev)
        t_mixed = t_inf_mixed = mixed_phases = None
        if dev.type != "cpu" or cpu_bf16_supported():  # emulated bf16 runs about 5x slower than fp32: minutes
            mixed = training_precision(model, True, dev)  # spent to show nothing
            mixed_phases = step_phases(lambda: train_step(mixed), reps)
            t_mixed = sum(mixed_phases)
            if mixed_inference:
                t_inf_mixed = median_seconds(lambda: infer(mixed), reps, device=dev)
        na = "n/a (no native bf16)"
        row = {"model": name, "params (M)": round(count_parameters(model) / 1e6, 2), "GMAC/slice": round(gmac, 1),
               "train img/s": round(batch_size / t_train, 2),
               "train img/s --bf16": round(batch_size / t_mixed, 2) if t_mixed else na,
               "bf16 speed-up": f"{t_train / t_mixed:.1f}x" if t_mixed else na,
               "step ms fwd / bwd / opt": " / ".join(f"{1e3 * t:.0f}" for t in phases),
               "step ms fwd / bwd / opt --bf16": " / ".join(f"{1e3 * t:.0f}" for t in mixed_phases)
               if mixed_phases else na,
               "infer slices/s": round(batch_size / t_inf, 2), "infer GMAC/s": round(gmac * batch_size / t_inf, 1)}
        if mixed_inference:
            row["infer slices/s --bf16"] = round(batch_size / t_inf_mixed, 2) if t_inf_mixed else na
        log(f"{name}: {row['train img/s']} train img/s ({row['train img/s --bf16']} with --bf16), "
            f"{row['infer slices/s']} slices/s")
        rows.append(row)
    return rows


def cpu_name() -> str:
    """The CPU's model name as ``lscpu`` gives it, with its matrix or bf16 units named (AMX, AVX-512 BF16)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    units = "AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else ""
    return f"{name} ({units})" if units else name


def machine_line() -> str:
    return f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
