"""The machine's compute floor: the best measured throughput of matrix products and convolutions per precision,
and per-operator profiles of a forward pass.

One matmul shape is not a peak: on a CPU with matrix units (AMX) a 2048 x 2048 bf16 matmul reached about a third of
what a 3x3 convolution of 128 channels did, and small shapes of either stay far below. The floor is therefore the
best of several matmul and convolution shapes, per precision, and a path's share of it is its achieved GFLOP/s over
the floor of the precision it computes in.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..devices import cpu_bf16_supported
from .seg import median_seconds

__all__ = ["MATMUL_SIZES", "CONV_SHAPES", "compute_floor", "path_precision", "op_profile"]

MATMUL_SIZES = (1024, 2048, 4096)
# (channels in = out, pixels per side, batch) of 3x3 convolutions: the shapes of a U-Net's levels
CONV_SHAPES = ((32, 224, 4), (64, 112, 4), (128, 56, 8), (256, 28, 16))


def _matmul(n: int, dtype: torch.dtype) -> tuple[Callable[[], object], float]:
    if dtype == torch.int8:
        a = torch.randint(-64, 64, (n, n), dtype=torch.int8)
        b = torch.randint(-64, 64, (n, n), dtype=torch.int8)
        return (lambda: torch._int_mm(a, b)), 2 * n ** 3
    a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
    return (lambda: a @ b), 2 * n ** 3


def _conv(c: int, hw: int, n: int, dtype: torch.dtype) -> tuple[Callable[[], object], float]:
    x = torch.rand(n, c, hw, hw, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.rand(c, c, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.no_grad():
            F.conv2d(x, w, padding=1)

    return run, 2 * n * c * c * 9 * hw * hw


def compute_floor(dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.int8), reps: int = 3,
                  log: Callable[[str], None] = lambda _: None, quick: bool = False) -> dict[str, dict]:
    """Per precision ("fp32", "bf16", "int8"): the best GFLOP/s (GOP/s for int8) over ``MATMUL_SIZES`` and
    ``CONV_SHAPES`` and the shape that reached it. int8 is measured on matmuls only (``torch._int_mm``; torch has no
    plain int8 convolution outside its quantized modules). A precision this build cannot run is left out, and so is
    bf16 on a CPU without native bfloat16 (emulated, it is no floor, and its large shapes take minutes). ``quick``
    measures the smallest matmul and the last convolution shape only (an int8 matmul of 4096 took 80 s on a CPU
    without VNNI)."""
    floor: dict[str, dict] = {}
    for dtype in dtypes:
        name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.int8: "int8"}[dtype]
        if dtype == torch.bfloat16 and not cpu_bf16_supported():
            log("compute floor bf16: not measured (this CPU has no native bfloat16)")
            continue
        sizes, shapes = (MATMUL_SIZES[:1], CONV_SHAPES[-1:]) if quick else (MATMUL_SIZES, CONV_SHAPES)
        cases = [(f"matmul {n}", *_matmul(n, dtype)) for n in sizes]
        if dtype != torch.int8:
            cases += [(f"conv3x3 {c}ch {hw}px x{n}", *_conv(c, hw, n, dtype)) for c, hw, n in shapes]
        best = (0.0, "")
        for label, fn, flop in cases:
            try:
                t = median_seconds(fn, reps)
            except RuntimeError as e:  # e.g. an int8 matmul this build has no CPU kernel for
                log(f"{name} {label}: not measured ({str(e).splitlines()[0]})")
                continue
            best = max(best, (flop / t / 1e9, label))
        if best[0]:
            floor[name] = {"GFLOP/s": round(best[0], 1), "shape": best[1]}
            log(f"compute floor {name}: {best[0]:.0f} GFLOP/s ({best[1]})")
    return floor


def path_precision(paths: tuple[str, ...]) -> str:
    """The precision an inference path's convolutions compute in."""
    return "int8" if "int8" in paths else "bf16" if "bf16" in paths else "fp32"


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 sent to /dev/null for the block: the profiler's C++ library writes start / stop lines and
    a GPU-count error on a machine without a GPU straight to it, past Python's logging."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def op_profile(fn: Callable[[], object], top: int = 8) -> list[dict]:
    """The ``top`` operators of one call of ``fn`` by their own CPU time (``torch.profiler``): name, ms, share of
    the pass, calls. Work done outside torch (ONNX Runtime) does not show."""
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"operator": e.key, "ms": round(e.self_cpu_time_total / 1e3, 1),
             "share %": round(100 * e.self_cpu_time_total / total, 1), "calls": e.count} for e in events[:top]]
