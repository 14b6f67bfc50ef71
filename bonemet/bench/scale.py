"""Throughput at scale: cases per minute of a batch of scans for 1..N local jobs, and a device's training and
inference speed with the time the thesis' 5-fold recipe would take on it."""

from __future__ import annotations

import contextlib
import io
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..devices import describe_device, resolve_device, threads_per_process

# the thesis recipe: 5 folds x 60 epochs over the training slices of BM-Seg (about 1,200 per fold at 224 px)
THESIS_FOLDS, THESIS_EPOCHS, THESIS_TRAIN_SLICES = 5, 60, 1200


def bench_batch(work: Path, jobs: Sequence[int], cases: int = 6, slices: int = 48, size: int = 128,
                run: Path | None = None, log: Callable[[str], None] = print, dicom: bool = False) -> list[dict]:
    """Cases per minute of ``bonemet predict --batch`` over ``cases`` phantom scans (NIfTI files, or with ``dicom``
    DICOM series, for which ``predict`` also writes a DICOM-SEG), once per number of jobs (a fresh output folder
    each time; the models are loaded once per job process, as in real use)."""
    from ..inference.batch import predict_batch
    from ..inference.predict import PredictOptions
    from .infer import write_phantom_scan, write_random_run

    scans = work / "cases"
    scans.mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        write_phantom_scan(scans / (f"case{i:03d}" if dicom else f"case{i:03d}.nii.gz"), slices, size, seed=i,
                           dicom=dicom)
    if run is None:
        run = write_random_run(work / "run", members=1, size=64, width=4)
    rows = []
    for n in jobs:
        out = work / f"out-{n}"
        shutil.rmtree(out, ignore_errors=True)
        opts = PredictOptions(seg=run, device="cpu")
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            res = predict_batch(scans, out, opts, jobs=n)
        seconds = time.perf_counter() - t
        rows.append({"jobs": n, "torch threads per job": threads_per_process(n) if n > 1 else torch.get_num_threads(),
                     "cases": res["done"], "failed": res["failed"], "wall s": round(seconds, 1),
                     "cases per minute": round(60 * res["done"] / seconds, 2)})
        log(f"{n} job(s): {rows[-1]['cases per minute']} cases per minute")
    return rows


def bench_device(device: str = "auto", size: int = 224, width: int = 32, batch_size: int = 8, reps: int = 5,
                 model_name: str = "hybrid-attunet++", log: Callable[[str], None] = print) -> list[dict]:
    """Training images/s (Adam step) and inference slices/s of ``model_name`` on ``device`` in fp32 and in the
    device's mixed precision (``bench seg``'s measurement), with the estimated time of the thesis' 5-fold recipe
    at each training speed."""
    from ..devices import precision_for
    from .seg import bench_models

    dev = resolve_device(device)
    row = bench_models([model_name], size, width, batch_size, reps, log=log, device=dev, mixed_inference=True)[0]
    rows = []
    for mixed, train, infer in ((False, row["train img/s"], row["infer slices/s"]),
                                (True, row["train img/s --bf16"], row["infer slices/s --bf16"])):
        if isinstance(train, str):  # not measured: a CPU without native bf16
            continue
        precision = precision_for(dev, mixed)
        rows.append({"device": describe_device(dev), "precision": precision.describe(), "train img/s": train,
                     "infer slices/s": infer,
                     "thesis 5-fold recipe (h)": round(THESIS_FOLDS * THESIS_EPOCHS * THESIS_TRAIN_SLICES
                                                       / train / 3600, 1)})
    return rows


def device_paths(device: torch.device) -> list[tuple[str, ...]]:
    """The inference paths ``bench device`` times ``predict`` with: eager fp32 first (the baseline), then the
    device's default, then, on a GPU, each GPU path that it can run."""
    from ..inference.fast import default_paths, paths_problem

    chosen = [(), default_paths(device)]
    if device.type != "cpu":
        chosen += [("channels_last",), ("fold_bn", "channels_last"), ("fold_bn", "channels_last", "bf16")]
    return [p for i, p in enumerate(chosen) if p not in chosen[:i] and paths_problem(p, device) is None]


def bench_device_predict(device: str = "auto", slices: int = 300, members: int = 5, size: int = 224,
                         width: int = 32, model_name: str = "hybrid-attunet++", work: Path | None = None,
                         log: Callable[[str], None] = print) -> list[dict]:
    """Seconds per 100 slices of ``predict`` end to end (read, models, lesions, every output file) on ``device``,
    an ensemble of ``members`` random-weight models on a phantom scan of ``slices`` slices, for each path of
    ``device_paths``; each timed on a second call (the first chooses kernels), with its lesion probabilities
    against eager fp32's."""
    import tempfile

    import numpy as np

    from ..inference.predict import PredictOptions, Predictor
    from .infer import write_phantom_scan, write_random_run

    dev = resolve_device(device)
    rows, ref = [], None
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tmp = Path(tmp)
        run = write_random_run(tmp / "run", members, model_name, size, width)
        scan = write_phantom_scan(tmp / "scan.nii.gz", slices, size)
        for i, paths in enumerate(device_paths(dev)):
            predictor = Predictor(PredictOptions(seg=run, paths=paths, device=str(dev), probabilities=True))
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                predictor.predict(scan, tmp / f"warm{i}")
                t0 = time.perf_counter()
                pred = predictor.predict(scan, tmp / f"out{i}")
                seconds = time.perf_counter() - t0
            p = pred.lesion_probability.astype(np.float32)
            ref = p if ref is None else ref
            d = np.abs(p - ref)
            rows.append({"path": " + ".join(paths) or "eager fp32", "s per 100 slices": round(seconds / slices * 100, 2),
                         "scans of 300 slices per hour": round(3600 / (seconds / slices * 300), 1),
                         "max prob diff": f"{float(d.max()):.1e}",
                         "mask agreement %": round(100 * float(((p > 0.5) == (ref > 0.5)).mean()), 3)})
            log(f"predict on {describe_device(dev)}, {rows[-1]['path']}: {rows[-1]['s per 100 slices']} s per 100 slices")
    return rows
