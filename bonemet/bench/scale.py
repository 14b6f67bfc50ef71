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
import torch.nn.functional as F

from ..devices import describe_device, resolve_device, threads_per_process
from ..models import create_model, split_outputs

# the thesis recipe: 5 folds x 60 epochs over the training slices of BM-Seg (about 1,200 per fold at 224 px)
THESIS_FOLDS, THESIS_EPOCHS, THESIS_TRAIN_SLICES = 5, 60, 1200


def bench_batch(work: Path, jobs: Sequence[int], cases: int = 6, slices: int = 48, size: int = 128,
                run: Path | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Cases per minute of ``bonemet predict --batch`` over ``cases`` phantom scans, once per number of jobs (a
    fresh output folder each time; the models are loaded once per job process, as in real use)."""
    from ..inference.batch import predict_batch
    from ..inference.predict import PredictOptions
    from .infer import write_phantom_scan, write_random_run

    scans = work / "cases"
    scans.mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        write_phantom_scan(scans / f"case{i:03d}.nii.gz", slices, size, seed=i)
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
    device's mixed precision, with the estimated time of the thesis' 5-fold recipe at each training speed."""
    from ..devices import training_precision

    dev = resolve_device(device)
    torch.manual_seed(0)
    x = torch.rand(batch_size, 3, size, size, device=dev)
    y = (torch.rand(batch_size, 1, size, size, device=dev) > 0.97).float()
    rows = []
    for mixed in (False, True):
        model = create_model(model_name, width=width, in_channels=3)
        precision = training_precision(model, mixed, dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def train_step() -> None:
            model.train()
            opt.zero_grad(set_to_none=True)
            with precision.autocast():
                lo, bo = split_outputs(model(precision.to_input(x)))
                loss = 0.7 * F.binary_cross_entropy_with_logits(lo.float(), y)
                if bo is not None:
                    loss = loss + 0.3 * F.binary_cross_entropy_with_logits(bo.float(), y)
            precision.step(loss, opt)

        def infer() -> None:
            model.eval()
            with torch.inference_mode(), precision.autocast():
                model(precision.to_input(x))

        t_train, t_infer = _seconds(train_step, reps, dev), _seconds(infer, reps, dev)
        images_s = batch_size / t_train
        recipe_h = THESIS_FOLDS * THESIS_EPOCHS * THESIS_TRAIN_SLICES / images_s / 3600
        rows.append({"device": describe_device(dev), "precision": precision.describe(),
                     "train img/s": round(images_s, 1), "infer slices/s": round(batch_size / t_infer, 1),
                     "thesis 5-fold recipe (h)": round(recipe_h, 2)})
        log(f"{rows[-1]['precision']}: {rows[-1]['train img/s']} train img/s, {rows[-1]['infer slices/s']} slices/s")
    return rows


def _seconds(fn: Callable[[], None], reps: int, device: torch.device) -> float:
    """Median seconds of ``fn`` after one warm-up, waiting for a GPU to finish its queue."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]
