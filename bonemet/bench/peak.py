"""The machine's compute floor: the best measured throughput of matrix products and convolutions per precision,
and per-operator profiles of a forward pass.

One matmul shape is not a peak: on a CPU with matrix units (AMX) a 2048 x 2048 bf16 matmul reached about a third of
what a 3x3 convolution of 128 channels did, and small shapes of either stay far below. The floor is therefore the
best of several matmul and convolution shapes, per precision, and a path's share of it is its achieved GFLOP/s over
the floor of the precision it computes in. int8 is measured in torch and, where it is installed, in ONNX Runtime,
which runs the int8 path: on a CPU without VNNI torch's int8 matmul reached 2 GOP/s and ONNX Runtime's 340.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from ..devices import cpu_bf16_supported
from ..inference.fast import load_ort, ort_available
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


def _ort_runtime(graph):
    """``graph`` loaded into ONNX Runtime as the int8 path loads its graphs."""
    from onnx import helper

    return load_ort(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def _ort_int8_matmul(n: int) -> tuple[Callable[[], object], float]:
    """uint8 activations times a constant int8 weight (``MatMulInteger``), as the int8 path's layers run."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.integers(-64, 64, (n, n), dtype=np.int8), "B")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "matmul",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])], [b])
    runtime, a = _ort_runtime(graph), {"A": rng.integers(0, 255, (n, n), dtype=np.uint8)}
    return (lambda: runtime.run(None, a)), 2 * n ** 3


def _ort_int8_conv(c: int, hw: int, n: int) -> tuple[Callable[[], object], float]:
    """A 3x3 ``QLinearConv``: uint8 activations, int8 weights, the form ONNX Runtime fuses a quantized convolution
    into."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    consts = {"W": rng.integers(-64, 64, (c, c, 3, 3), dtype=np.int8), "xs": np.float32(0.02), "xz": np.uint8(128),
              "ws": np.float32(0.01), "wz": np.int8(0), "ys": np.float32(0.5), "yz": np.uint8(128)}
    node = helper.make_node("QLinearConv", ["X", "xs", "xz", "W", "ws", "wz", "ys", "yz"], ["Y"], pads=[1, 1, 1, 1],
                            kernel_shape=[3, 3])
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("X", TensorProto.UINT8, [n, c, hw, hw])],
                              [helper.make_tensor_value_info("Y", TensorProto.UINT8, [n, c, hw, hw])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    runtime, x = _ort_runtime(graph), {"X": rng.integers(0, 255, (n, c, hw, hw), dtype=np.uint8)}
    return (lambda: runtime.run(None, x)), 2 * n * c * c * 9 * hw * hw


def compute_floor(dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.int8), reps: int = 3,
                  log: Callable[[str], None] = lambda _: None, quick: bool = False) -> dict[str, dict]:
    """Per precision ("fp32", "bf16", "int8"): the best GFLOP/s (GOP/s for int8) over ``MATMUL_SIZES`` and
    ``CONV_SHAPES`` and the shape that reached it. int8 is measured on torch's matmuls (``torch._int_mm``; torch has
    no plain int8 convolution outside its quantized modules) and, with ONNX Runtime installed, first on its int8
    matmuls and convolutions (uint8 activations, int8 weights, as ``seg quantize`` makes them). A precision this
    build cannot run is left out, and so is bf16 on a CPU without native bfloat16 (emulated, it is no floor, and its
    large shapes take minutes). Larger torch matmuls are left out once one runs below a tenth of the best so far: no
    fast kernel (an int8 matmul of 4096 took 80 s on a CPU without VNNI). ``quick`` measures the smallest matmul and
    the last convolution shape only."""
    floor: dict[str, dict] = {}
    for dtype in dtypes:
        name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.int8: "int8"}[dtype]
        if dtype == torch.bfloat16 and not cpu_bf16_supported():
            log("compute floor bf16: not measured (this CPU has no native bfloat16)")
            continue
        sizes, shapes = (MATMUL_SIZES[:1], CONV_SHAPES[-1:]) if quick else (MATMUL_SIZES, CONV_SHAPES)
        # (label, what makes the timed call and its FLOP, whether it is one of torch's matmuls)
        cases: list[tuple[str, Callable[[], tuple[Callable[[], object], float]], bool]] = []
        if dtype == torch.int8 and ort_available():
            cases += [(f"matmul {n}, ONNX Runtime", partial(_ort_int8_matmul, n), False) for n in sizes]
            cases += [(f"conv3x3 {c}ch {hw}px x{n}, ONNX Runtime", partial(_ort_int8_conv, c, hw, n), False)
                      for c, hw, n in shapes]
        cases += [(f"matmul {n}", partial(_matmul, n, dtype), True) for n in sizes]
        if dtype != torch.int8:
            cases += [(f"conv3x3 {c}ch {hw}px x{n}", partial(_conv, c, hw, n, dtype), False) for c, hw, n in shapes]
        best, slow_matmul = (0.0, ""), ""
        for label, make, torch_matmul in cases:
            if slow_matmul and torch_matmul:
                log(f"{name} {label}: not measured ({slow_matmul})")
                continue
            fn, flop = make()
            try:
                t = median_seconds(fn, reps)
            except RuntimeError as e:  # e.g. an int8 matmul this build has no CPU kernel for
                log(f"{name} {label}: not measured ({str(e).splitlines()[0]})")
                continue
            rate = flop / t / 1e9
            if torch_matmul and rate < best[0] / 10:
                slow_matmul = f"{label} ran at {rate:.1f}, under a tenth of the best so far"
            best = max(best, (rate, label))
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
