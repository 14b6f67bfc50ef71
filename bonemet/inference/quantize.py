"""Int8 members stored in a segmentation run (``bonemet seg quantize``), for the ``int8`` inference path.

Quantizing a member costs about as much as predicting a few dozen slices (calibration runs the fp32 graph with
every activation as an output), so ``predict`` should not redo it for every scan. ``quantize_run`` calibrates
each member once on slices of the run's own training patients (never its test patients) and writes

    RUN/fold<k>/int8.onnx   the quantized graph (ONNX, data, not code)
    RUN/fold<k>/int8.json   the checkpoint's SHA-256, the calibration slices, the ONNX Runtime version

``stored_int8`` returns the graph only while it belongs to the member's current checkpoint; without one,
``predict`` calibrates on the scan itself (and says so).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..data.bmseg import SegSlice, load_bmseg
from ..errors import BonemetError
from ..fileio import atomic_path, read_json, sha256, write_json
from ..runs.checkpoint import finished_checkpoint
from ..runs.seg import seg_dataset
from .fast import CALIBRATION_SLICES, calibration_indices, quantize_int8

INT8_FILE, INT8_META = "int8.onnx", "int8.json"


def member_checkpoint(run: Path, k: int) -> Path:
    """The checkpoint file fold ``k`` of ``run`` predicts with (named by its done.json)."""
    return finished_checkpoint(run / f"fold{k}", f"fold {k}")


def stored_int8(run: str | Path, k: int) -> bytes | None:
    """Member ``k``'s stored int8 graph, or None when there is none or it was made from another checkpoint."""
    fold = Path(run) / f"fold{k}"
    meta, graph = fold / INT8_META, fold / INT8_FILE
    if not (meta.exists() and graph.exists()):
        return None
    if read_json(meta, "int8 graph description").get("checkpoint sha256") != sha256(member_checkpoint(Path(run), k)):
        return None
    return graph.read_bytes()


def calibration_input(slices: list[SegSlice], cfg, n: int = CALIBRATION_SLICES) -> tuple[torch.Tensor, list[SegSlice]]:
    """The model input of ``n`` of ``slices`` spread evenly over them in name order (patients, then slices),
    preprocessed as the run ``cfg`` trained; and those slices."""
    pool = sorted(slices, key=lambda s: s.name)
    picked = [pool[i] for i in calibration_indices(len(pool), n)]
    ds = seg_dataset(cfg, picked)
    return torch.stack([ds[i]["image"] for i in range(len(ds))]), picked


def calibration_pool(run: Path, data: str | Path | None) -> list[SegSlice]:
    """The training patients' slices of ``run`` (every slice of ``data`` when given)."""
    from ..runs.seg import load_run

    cfg, split = load_run(run)
    root = Path(data) if data is not None else Path(cfg.data)
    if not root.exists():
        raise BonemetError("the run's training data is not here: give --data ROOT (a BM-Seg root of similar "
                           "scans) for the calibration slices", root)
    test = set(split.get("test_patients", [])) if data is None else set()
    pool = [s for s in load_bmseg(root).slices if s.patient not in test]
    if not pool:
        raise BonemetError("no slices to calibrate on", root)
    return pool


def quantize_run(run: str | Path, data: str | Path | None = None, n: int = CALIBRATION_SLICES,
                 log=print) -> list[Path]:
    """Quantize every member of ``run`` to int8 on ``n`` calibration slices; returns the written graphs."""
    from ..runs.seg import load_member, load_run

    run = Path(run)
    cfg, split = load_run(run)
    if cfg.model == "sequential":
        raise BonemetError("the int8 path does not support the sequential model", run)
    x, slices = calibration_input(calibration_pool(run, data), cfg, n)
    written = []
    for k in range(len(split["folds"])):
        t0 = time.perf_counter()
        written.append(store_int8(run, k, load_member(cfg, run, k), x, [s.name for s in slices]))
        log(f"fold {k}: int8 graph written ({written[-1].stat().st_size / 1e6:.1f} MB, "
            f"{time.perf_counter() - t0:.1f} s)")
    return written


def store_int8(run: Path, k: int, model: torch.nn.Module, x: torch.Tensor, names: list[str]) -> Path:
    """Quantize member ``k`` (``model``) on the inputs ``x`` (slices ``names``) and write its graph and record."""
    t0 = time.perf_counter()
    ckpt = member_checkpoint(run, k)
    graph = quantize_int8(model, x)
    fold = run / f"fold{k}"
    with atomic_path(fold / INT8_FILE) as tmp:
        tmp.write_bytes(graph)
    write_json(fold / INT8_META, {"checkpoint": ckpt.name, "checkpoint sha256": sha256(ckpt),
                                  "calibration slices": names, "onnxruntime": _ort_version(),
                                  "seconds": round(time.perf_counter() - t0, 1)})
    return fold / INT8_FILE


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
