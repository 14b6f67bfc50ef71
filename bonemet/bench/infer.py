"""``bonemet bench infer``: inference paths of one segmentation model against eager fp32 at batch 1,
measured in one run, with their answers checked against the baseline's."""

from __future__ import annotations

import contextlib
import io
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..inference.fast import (BF16_FP32_MODULES, FastModel, bf16_supported, default_paths, needs_calibration,
                              openvino_available, ort_available)
from ..inference.fusion import fusion_available
from ..models import create_model, split_outputs
from ..models.cost import gmacs_per_slice
from .peak import compute_floor, op_profile, path_precision


def _probs(model: torch.nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    return _all_probs(model, x, batch)[0]


def path_variants(batch: int, compile_: bool = True, log: Callable[[str], None] = print
                  ) -> list[tuple[str, tuple[str, ...], int, tuple[str, ...]]]:
    """(row name, paths, batch, modules kept fp32 by bf16) of every path this machine can run, the eager fp32
    batch-1 baseline first; the default bf16 path also as plain autocast (nothing kept), to show what keeping them
    costs and buys."""
    chosen = [(), ("channels_last",), ("fold_bn",), ("fold_bn", "channels_last")]
    if fusion_available():
        chosen.append(("fold_bn", "fuse", "channels_last"))
    if bf16_supported():
        chosen.append(("fold_bn", "channels_last", "bf16"))
        if fusion_available():
            chosen.append(("fold_bn", "fuse", "channels_last", "bf16"))
    if ort_available():
        chosen += [("fold_bn", "onnx"), ("fold_bn", "int8")]
    else:
        log("ONNX Runtime not installed: the onnx and int8 paths are left out (pip install onnxruntime)")
    if openvino_available():
        chosen += [("fold_bn", "openvino")] + ([("fold_bn", "openvino", "bf16")] if bf16_supported() else [])
    else:
        log("OpenVINO not installed: the openvino paths are left out (pip install openvino)")
    if compile_:
        chosen.append(("fold_bn", "channels_last", "compile"))
        if bf16_supported():
            chosen.append(("fold_bn", "channels_last", "bf16", "compile"))
    variants: list[tuple[str, tuple[str, ...], int, tuple[str, ...]]] = [("eager fp32, batch 1 (baseline)", (), 1, ())]
    for paths in chosen:
        name = (" + ".join(paths) or "eager fp32") + f", batch {batch}"
        if paths == default_paths():
            name += " (default)"
        variants.append((name, paths, batch, BF16_FP32_MODULES))
        if "bf16" in paths and paths == default_paths():
            variants.append((" + ".join(paths) + f", plain autocast, batch {batch}", paths, batch, ()))
    return variants


def _answers(p: torch.Tensor, ref: torch.Tensor) -> dict:
    d = (p - ref).abs()
    return {"max prob diff": f"{float(d.max()):.1e}",
            "pixels within 0.02 %": round(100 * float((d <= 0.02).float().mean()), 3),
            "mask agreement %": round(100 * float(((p > 0.5) == (ref > 0.5)).float().mean()), 3)}


def bench_paths(model_name: str = "hybrid-attunet++", size: int = 224, width: int = 32, slices: int = 8,
                batch: int = 8, reps: int = 2, compile_: bool = True, profile: int = 0,
                log: Callable[[str], None] = print) -> tuple[list[dict], dict]:
    """Rows: path, slices/s, ratio to the baseline, GFLOP/s and its share of the compute floor of the path's
    precision (``peak.compute_floor``), answers against the baseline's (random weights: see ``check_paths`` for a
    trained model), first-pass seconds (export, quantization, compilation included); plus machine facts, with
    ``facts["profiles"]``: the top ``profile`` operators of each path (``peak.op_profile``) when ``profile`` > 0."""
    torch.manual_seed(0)
    model = create_model(model_name, width=width, in_channels=3).eval()
    for m in model.modules():  # trained-like BN statistics, so that folding has something to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(slices, 3, size, size)
    gmac = gmacs_per_slice(model, 3, size)
    base_p = _probs(model, x, 1)
    ready = []
    for name, paths, b, kept in path_variants(batch, compile_, log):
        t0 = time.perf_counter()
        m = (FastModel(model, paths, calibration=x if needs_calibration(paths) else None, fp32_modules=kept)
             if paths else model)
        p = _probs(m, x, b)  # also the warm-up: export, compilation, oneDNN kernel choice
        ready.append((name, paths, m, b, p, time.perf_counter() - t0))
    # passes interleaved (one of each path per round): a slow spell of a shared machine then slows every path
    # of that round instead of one path's every pass, and the ratios hold better than the absolute figures
    times: list[list[float]] = [[] for _ in ready]
    for _ in range(reps):
        for i, (_, _, m, b, _, _) in enumerate(ready):
            t0 = time.perf_counter()
            _probs(m, x, b)
            times[i].append(time.perf_counter() - t0)
    # --quick (one repetition, as for the paths): the floor on the smallest shapes only
    floor = compute_floor(reps=3 if reps > 1 else 1, log=log, quick=reps == 1)
    profiles = {name: op_profile(lambda: _probs(m, x, b), profile) for name, paths, m, b, _, _ in ready
                if profile and not {"onnx", "int8", "openvino"} & set(paths)}  # run outside torch: not seen
    rows, base_t = [], None
    for (name, paths, _, _, p, setup), ts in zip(ready, times):
        t = sorted(ts)[len(ts) // 2]
        base_t = base_t or t
        sps = slices / t
        peak = floor.get(path_precision(paths), {}).get("GFLOP/s")
        rows.append({"path": name, "slices/s": round(sps, 2), "speed-up": f"{base_t / t:.1f}x",
                     "GFLOP/s": round(2 * gmac * sps, 1),
                     "share of peak %": round(100 * 2 * gmac * sps / peak, 1) if peak else "n/a",
                     **_answers(p, base_p), "first pass s": round(setup, 1)})
        log(f"{name}: {sps:.2f} slices/s (first pass {setup:.1f} s)")
    facts = {"model": model_name, "width": width, "size": size, "GMAC/slice": round(gmac, 1), "floor": floor,
             "profiles": profiles, "peak RSS MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    return rows, facts


def check_paths(run: Path, slices: int = 16, batch: int = 4, compile_: bool = False,
                log: Callable[[str], None] = print) -> tuple[list[dict], str]:
    """Each path's answers against eager fp32 on a trained ``run``, on ``slices`` slices spread over its held-out
    test patients (all its patients when it has none): the worst member alone, and the members' average, which is
    what ``predict`` returns; lesion and, for two-headed models, bone probabilities. int8 is calibrated as
    ``predict`` would (the stored graph, else the run's training slices). Returns the rows and a line saying what
    was checked."""
    from ..data.bmseg import load_bmseg
    from ..runs.seg import load_member, load_run
    from ..inference.quantize import calibration_input, calibration_pool, stored_int8

    cfg, split = load_run(run)
    members = [load_member(cfg, run, k) for k in range(len(split["folds"]))]
    test = set(split.get("test_patients", []))
    pool = [s for s in load_bmseg(cfg.data).slices if not test or s.patient in test]
    x, picked = calibration_input(pool, cfg, slices)
    refs = [_all_probs(m, x, 1) for m in members]
    calib: torch.Tensor | None = None  # read once, only if a member has no stored int8 graph
    rows = []
    for name, paths, b, kept in path_variants(batch, compile_, log)[1:]:
        outs = []
        for k, model in enumerate(members):
            graph = stored_int8(run, k) if needs_calibration(paths) else None
            if needs_calibration(paths) and not graph and calib is None:
                calib = calibration_input(calibration_pool(run, None), cfg)[0]
            outs.append(_all_probs(FastModel(model, paths, calibration=calib, int8_onnx=graph, fp32_modules=kept),
                                   x, b))
        rows.append({"path": name, **_scoped_answers(outs, refs)})
        log(f"{name}: answers checked on {len(picked)} slices, {len(members)} member(s)")
    what = (f"{len(members)} member(s) of {run} ({cfg.model}, width {cfg.width}, {cfg.size} px), {len(picked)} "
            f"slices of {len({s.patient for s in picked})} {'test ' if test else ''}patient(s)")
    return rows, what


def _scoped_answers(outs: list[list[torch.Tensor]], refs: list[list[torch.Tensor]]) -> dict:
    """Largest probability difference of the worst member and of the members' average, per output (lesion, bone),
    and the lesion pixels within 0.02 and lesion masks equal, for the average."""
    from ..runs.seg import average

    row: dict = {}
    heads = ("lesion", "bone")[:len(refs[0])]
    pairs = lambda ps: [(p[0].numpy(), p[1].numpy() if len(p) > 1 else None) for p in ps]  # noqa: E731
    ensembles = average(pairs(outs)), average(pairs(refs))
    for h, head in enumerate(heads):
        worst = max(float((o[h] - r[h]).abs().max()) for o, r in zip(outs, refs))
        row[f"{head} max diff, worst member"] = f"{worst:.1e}"
        same = _answers(*(torch.from_numpy(e[h]) for e in ensembles))
        row[f"{head} max diff, ensemble"] = same["max prob diff"]
        if head == "lesion":
            row["lesion within 0.02 %, ensemble"] = same["pixels within 0.02 %"]
            row["lesion masks equal %, ensemble"] = same["mask agreement %"]
    return row


def _all_probs(model: torch.nn.Module, x: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """Every output's probabilities (lesion, and bone for two-headed models)."""
    outs: list[list[torch.Tensor]] = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            outs.append([torch.sigmoid(o) for o in split_outputs(model(x[i:i + batch])) if o is not None])
    return [torch.cat(parts) for parts in zip(*outs)]


def write_random_run(run: Path, members: int = 5, model_name: str = "hybrid-attunet++", size: int = 224,
                     width: int = 32) -> Path:
    """A segmentation run folder of ``members`` random-weight models, shaped like a trained one, so that
    ``predict`` can be timed on the issue's configuration without a GPU-sized training run."""
    from dataclasses import asdict

    from ..fileio import write_json
    from ..runs.checkpoint import save_checkpoint
    from ..runs.seg import SegConfig

    cfg = SegConfig(data="(random weights for bench)", model=model_name, folds=members, size=size, width=width,
                    preprocessing={"window": "bone", "size": size, "channels": 3, "intensity": "pixel / 255"})
    for k in range(members):
        torch.manual_seed(k)
        model = create_model(model_name, width=width, in_channels=3)
        (run / f"fold{k}").mkdir(parents=True, exist_ok=True)
        save_checkpoint(run / f"fold{k}" / "last.pt", model=model.state_dict())
        write_json(run / f"fold{k}" / "done.json", {"fold": k, "checkpoint": "last.pt"})
    write_json(run / "config.json", asdict(cfg))
    write_json(run / "splits.json", {"folds": [{} for _ in range(members)], "test_patients": []})
    return run


def write_phantom_scan(path: Path, slices: int, size: int = 224, seed: int = 0, dicom: bool = False) -> Path:
    """A metastatic phantom CT of ``slices`` slices at ``size`` px, for timing ``predict``: a NIfTI file, or with
    ``dicom`` a folder holding it as a DICOM series (one file per slice, as scanners write it)."""
    from ..data.export import write_dicom_series
    from ..data.volume import save_nifti
    from ..phantom.synth import make_patient

    ct = make_patient(0, seed, "metastatic", size=size, n_slices=slices).ct
    if dicom:
        write_dicom_series(ct, path, f"BENCH{seed:03d}")
        return path
    return save_nifti(ct.array, ct.affine, path)


def time_predict(run: Path, scan: Path, out: Path, slices: int, paths: tuple[str, ...], batch: int) -> float:
    """Seconds per 100 slices of ``bonemet predict`` end to end (read, models, lesions, every output file)."""
    from ..inference.predict import PredictOptions, predict

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        predict(scan, out, PredictOptions(seg=run, batch_size=batch, paths=paths))
    return (time.perf_counter() - t0) / slices * 100


def _train_child(model_name: str, size: int, width: int, batch: int, reps: int, threads: int) -> dict:
    from .seg import bench_models

    torch.set_num_threads(threads)
    row = bench_models([model_name], size, width, batch, reps, log=lambda _: None)[0]
    row["peak RSS MB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def train_speed(model_name: str = "hybrid-attunet++", size: int = 224, width: int = 32, batch: int = 8,
                reps: int = 2) -> dict:
    """Training images/s (Adam step, eager fp32 and --bf16) and the peak memory of training, measured in a
    fresh process so that the peak is training's own and not the inference paths'."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_train_child, (model_name, size, width, batch, reps, torch.get_num_threads()))
