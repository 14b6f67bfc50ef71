"""``bonemet bench infer``: inference paths of one segmentation model against eager fp32 at batch 1,
measured in one run, with their answers checked against the baseline's."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import torch

from ..inference.fast import FastModel, bf16_supported
from ..models import create_model, split_outputs
from ..models.cost import gmacs_per_slice
from .seg import _timeit


def peak_gflops(n: int = 2048, dtype: torch.dtype = torch.float32, reps: int = 3) -> float:
    """The machine's measured matmul throughput (GFLOP/s): the compute floor for convolutions."""
    a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
    t = _timeit(lambda: a @ b, reps)
    return 2 * n ** 3 / t / 1e9


def _probs(model: torch.nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            out.append(torch.sigmoid(split_outputs(model(x[i:i + batch]))[0]))
    return torch.cat(out)


def bench_paths(model_name: str = "hybrid-attunet++", size: int = 224, width: int = 32, slices: int = 8,
                batch: int = 8, reps: int = 2, log: Callable[[str], None] = print) -> tuple[list[dict], dict]:
    """Rows: path, slices/s, ratio to the baseline, max |prob diff|, mask agreement; plus machine facts."""
    torch.manual_seed(0)
    model = create_model(model_name, width=width, in_channels=3).eval()
    for m in model.modules():  # trained-like BN statistics, so that folding has something to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(slices, 3, size, size)
    gmac = gmacs_per_slice(model, 3, size)
    from ..inference.fast import default_paths

    chosen = [(), ("channels_last",), ("fold_bn",), ("fold_bn", "channels_last")]
    if bf16_supported():
        chosen.append(("fold_bn", "channels_last", "bf16"))
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is not None:
        chosen.append(("fold_bn", "onnx"))
    else:
        log("ONNX Runtime not installed: the onnx path is left out (pip install 'bonemet[fast]')")
    variants: list[tuple[str, torch.nn.Module, int]] = [("eager fp32, batch 1 (baseline)", model, 1)]
    for paths in chosen:
        name = (" + ".join(paths) or "eager fp32") + f", batch {batch}"
        if paths == default_paths():
            name += " (default)"
        variants.append((name, FastModel(model, paths) if paths else model, batch))
    base_p = _probs(model, x, 1)
    rows, base_t = [], None
    for name, m, b in variants:
        t = _timeit(lambda: _probs(m, x, b), reps)
        p = _probs(m, x, b)
        base_t = base_t or t
        sps = slices / t
        rows.append({"path": name, "slices/s": round(sps, 2), "speed-up": f"{base_t / t:.1f}x",
                     "GFLOP/s": round(2 * gmac * sps, 1), "max prob diff": f"{float((p - base_p).abs().max()):.1e}",
                     "mask agreement %": round(100 * float(((p > 0.5) == (base_p > 0.5)).float().mean()), 3)})
        log(f"{name}: {sps:.2f} slices/s")
    facts = {"model": model_name, "width": width, "size": size, "GMAC/slice": round(gmac, 1),
             "peak fp32 GFLOP/s (matmul)": round(peak_gflops(), 1),
             "peak bf16 GFLOP/s (matmul)": round(peak_gflops(dtype=torch.bfloat16), 1) if bf16_supported() else None,
             "peak RSS MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    return rows, facts


def time_ensemble_predict(members: int = 5, size: int = 224, width: int = 32, slices: int = 8,
                          paths: tuple[str, ...] = ("fold_bn", "channels_last"), batch: int = 8) -> float:
    """Seconds per 100 slices for an ensemble of ``members`` hybrid models (model time only)."""
    torch.manual_seed(0)
    ms = [FastModel(create_model("hybrid-attunet++", width=width, in_channels=3).eval(), paths) if paths else
          create_model("hybrid-attunet++", width=width, in_channels=3).eval() for _ in range(members)]
    x = torch.rand(slices, 3, size, size)
    t0 = time.perf_counter()
    for m in ms:
        _probs(m, x, batch)
    return (time.perf_counter() - t0) / slices * 100
