"""The default CPU path against OpenVINO's CPU runtime on the same network: NOT part of bonemet.

OpenVINO (``pip install openvino``) compiles a whole graph for the CPU: concatenations written in place by their
producers, element-wise operations fused into the convolutions, bf16 on AMX where the CPU has it. Here it runs
the ONNX graph that ``predict --fast fold_bn,onnx`` gives ONNX Runtime (``inference.fast.export_onnx`` of the
BN-folded model), in fp32 and with bf16 as its inference precision, against bonemet's default path and eager fp32
(hybrid-attunet++, width 32, 224 px, random weights, batch 2, the paths taking turns, median of 5 rounds of two
passes), and the answers are compared with eager fp32 (largest probability difference, masks at 0.5).

    python docs/experiments/openvino_path.py [--floor GFLOPS]     # about 3 min

``--check RUN [SLICES]``: the answers on a trained run instead, as ``bonemet bench infer --check-run`` checks its
paths (``SLICES`` slices of its test patients, 32 by default): the largest probability difference from eager fp32
of the worst member and of the members' average, and the lesion masks at 0.5, for the default path and OpenVINO.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from bonemet.inference.fast import FastModel, default_paths, export_onnx, fold_batchnorm
from bonemet.models import create_model

GFLOP = 2 * 40.8  # per slice at 224 px, width 32 (40.8 GMAC: ``bonemet seg models``)
BATCH = 2


KEEP_FP32 = ("/enc.0/", "/enc.1/", "/gates.", "/heads.")  # the default path's fp32 islands (fast.BF16_FP32_MODULES)


def openvino(onnx: bytes, precision: str, shape: tuple[int, ...] = (BATCH, 3, 224, 224), keep: tuple = ()):
    """The ONNX graph compiled by OpenVINO for the CPU, one stream, torch's thread count; the operations whose
    names start with one of ``keep`` marked to stay in fp32 (``disable_fp16_compression``, which the CPU plugin
    also honours for bf16)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(onnx, b"")
    model.reshape({"image": list(shape)})
    for op in model.get_ops():
        if op.get_friendly_name().startswith(keep or ("\0",)):
            op.get_rt_info()["disable_fp16_compression_0"] = ""
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
              "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    kinds = [(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
             for op in compiled.get_runtime_model().get_ops()]
    convs = [p for t, p in kinds if t == "Convolution"]
    print(f"  {precision}, {len(keep)} fp32 island pattern(s): convolutions by precision "
          f"{ {p: convs.count(p) for p in sorted(set(convs))} }")

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        request.infer({"image": x.numpy()})
        return tuple(torch.from_numpy(np.array(request.get_output_tensor(i).data)) for i in range(2))

    return run


def main(floor: float | None) -> None:
    torch.manual_seed(0)
    model = create_model("hybrid-attunet++", width=32).eval()
    x = torch.rand(BATCH, 3, 224, 224)
    fast = FastModel(model, default_paths())
    onnx = export_onnx(fold_batchnorm(model))
    paths = {"eager fp32": lambda: model(x), "default (fold_bn, fuse, channels_last, bf16)": lambda: fast(x)}
    for precision, keep, label in (("f32", (), "f32"), ("bf16", (), "bf16"),
                                   ("bf16", KEEP_FP32, "bf16, islands marked fp32 (not honoured)")):
        t = time.perf_counter()
        run = openvino(onnx, precision, keep=keep)
        print(f"OpenVINO {label}: compiled in {time.perf_counter() - t:.1f} s")
        paths[f"OpenVINO, {label}"] = lambda run=run: run(x)
    with torch.inference_mode():
        ref = [torch.sigmoid(o.float()) for o in paths["eager fp32"]()]
        answers = {}
        for name, f in paths.items():
            got = [torch.sigmoid(o.float()) for o in f()]
            answers[name] = [(float((r - g).abs().max()), 100 * float(((r >= 0.5) == (g >= 0.5)).float().mean()))
                             for r, g in zip(ref, got)]
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(5):
            for name, f in paths.items():
                t = time.perf_counter()
                f()
                f()
                times[name].append((time.perf_counter() - t) / (2 * BATCH))  # per slice
    print("| path | slices/s | GFLOP/s |" + (" share of the bf16 floor % |" if floor else "")
          + " largest difference lesion / bone | masks equal % lesion / bone |")
    print("| --- | --- | --- |" + (" --- |" if floor else "") + " --- | --- |")
    for name, ts in times.items():
        per_slice = sorted(ts)[len(ts) // 2]
        share = f" {100 * GFLOP / per_slice / floor:.1f} |" if floor else ""
        (dl, ml), (db, mb) = answers[name]
        print(f"| {name} | {1 / per_slice:.2f} | {GFLOP / per_slice:.0f} |{share} {dl:.1e} / {db:.1e} | "
              f"{ml:.3f} / {mb:.3f} |")


def check(run: Path, slices: int) -> None:
    from bonemet.bench.infer import _all_probs, _scoped_answers
    from bonemet.data.bmseg import load_bmseg
    from bonemet.inference.quantize import calibration_input
    from bonemet.runs.seg import load_member, load_run

    cfg, split = load_run(run)
    members = [load_member(cfg, run, k) for k in range(len(split["folds"]))]
    test = set(split.get("test_patients", []))
    x, picked = calibration_input([s for s in load_bmseg(cfg.data).slices if not test or s.patient in test], cfg,
                                  slices)
    refs = [_all_probs(m, x, 1) for m in members]
    default = [_all_probs(FastModel(m, default_paths()), x, 2) for m in members]
    rows = [("default", default)]
    for keep, label in (((), "OpenVINO bf16"), (KEEP_FP32, "OpenVINO bf16, islands marked fp32 (not honoured)")):
        ov = []
        for m in members:
            run_ov = openvino(export_onnx(fold_batchnorm(m)), "bf16", (1, *x.shape[1:]), keep)
            ov.append([torch.cat(p) for p in zip(*([torch.sigmoid(o) for o in run_ov(x[i:i + 1])]
                                                    for i in range(len(x))))])
        rows.append((label, ov))
    print(f"{len(members)} member(s) of {run} ({cfg.model}, width {cfg.width}, {cfg.size} px), {len(picked)} slices")
    for name, outs in rows:
        print(name, _scoped_answers(outs, refs))


if __name__ == "__main__":
    if "--check" in sys.argv:
        i = sys.argv.index("--check")
        check(Path(sys.argv[i + 1]), int(sys.argv[i + 2]) if len(sys.argv) > i + 2 else 32)
        sys.exit()
    main(next((float(sys.argv[i + 1]) for i, a in enumerate(sys.argv) if a == "--floor"), None))
