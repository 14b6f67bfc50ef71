"""``bonemet bench seg``: training images/s and inference slices/s of each model, measured in one run."""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..models import count_parameters, create_model, split_outputs
from ..models.cost import gmacs_per_slice


def median_seconds(fn: Callable[[], None], reps: int, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``reps`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bench_models(names: Sequence[str], size: int = 224, width: int = 32, batch_size: int = 8, reps: int = 3,
                 channels: int = 3, log: Callable[[str], None] = print) -> list[dict]:
    """One row per model: params, GMAC/slice, training images/s (Adam step) in fp32 and with ``seg train --bf16``'s
    bfloat16 autocast + channels_last (measured last: it changes the model's memory format), inference slices/s."""
    from ..inference.fast import bf16_supported
    from ..training.loop import train_input, training_precision

    rows = []
    torch.manual_seed(0)
    x = torch.rand(batch_size, channels, size, size)
    y = (torch.rand(batch_size, 1, size, size) > 0.97).float()
    for name in names:
        model = create_model(name, width=width, in_channels=channels)
        gmac = gmacs_per_slice(model, channels, size)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def train_step(precision=contextlib.nullcontext(), bf16: bool = False) -> None:
            model.train()
            opt.zero_grad(set_to_none=True)
            with precision:
                lo, bo = split_outputs(model(train_input(x, bf16)))
                loss = F.binary_cross_entropy_with_logits(lo, y)
                if bo is not None:
                    loss = 0.7 * loss + 0.3 * F.binary_cross_entropy_with_logits(bo, y)
            loss.backward()
            opt.step()

        def infer() -> None:
            model.eval()
            with torch.inference_mode():
                model(x)

        t_train = median_seconds(train_step, reps)
        t_inf = median_seconds(infer, reps)
        t_bf16 = None
        if bf16_supported():  # emulated bf16 runs about 5x slower than fp32: minutes spent to show nothing
            bf16 = training_precision(model, True)
            t_bf16 = median_seconds(lambda: train_step(bf16, True), reps)
        na = "n/a (no native bf16)"
        row = {"model": name, "params (M)": round(count_parameters(model) / 1e6, 2), "GMAC/slice": round(gmac, 1),
               "train img/s": round(batch_size / t_train, 2),
               "train img/s --bf16": round(batch_size / t_bf16, 2) if t_bf16 else na,
               "bf16 speed-up": f"{t_train / t_bf16:.1f}x" if t_bf16 else na,
               "infer slices/s": round(batch_size / t_inf, 2), "infer GMAC/s": round(gmac * batch_size / t_inf, 1)}
        log(f"{name}: {row['train img/s']} train img/s ({row['train img/s --bf16']} with --bf16), "
            f"{row['infer slices/s']} slices/s")
        rows.append(row)
    return rows


def machine_line() -> str:
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}")
