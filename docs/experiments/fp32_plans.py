"""Which modules the bf16 path keeps in fp32: speed and answers of candidate plans: NOT part of bonemet.

Each plan is a ``fp32_modules`` argument of ``FastModel`` on the default path (fold_bn, fuse, channels_last, bf16);
kept encoder levels hand their outputs on in fp32 (``BF16_FP32_OUTPUTS``).

* ``speed``: Hybrid-AttUnet++ at width 32, 224 px, random weights, batch 2 (predict's batch there); the plans take
  turns, median of 5 rounds of two passes; share of ``--floor`` GFLOP/s (the bf16 compute floor that
  ``bonemet bench infer`` measures).
* ``RUN [N]``: each member of a trained run and their average, on N of its test slices (all its slices when it has
  no test patients), against eager fp32 with folded BN in channels_last: the largest difference of any member, its
  99.99th percentile, the share of pixels within 0.02, and the ensemble's largest difference and lesion masks.

    python docs/experiments/fp32_plans.py speed [--floor 3893]
    python docs/experiments/fp32_plans.py runs/demo/seg 128
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from bonemet.data.bmseg import load_bmseg
from bonemet.inference.fast import FastModel, default_paths
from bonemet.inference.quantize import calibration_input
from bonemet.models import create_model, split_outputs
from bonemet.runs.seg import load_member, load_run

PLANS = {
    "encoder, gates, heads (the default until 2026-12-04)": ("enc.*", "gates.*", "heads.*", "head"),
    "encoder levels 0-2, gates, heads": ("enc.0", "enc.1", "enc.2", "gates.*", "heads.*", "head"),
    "encoder levels 0-1, gates, heads (the default)": ("enc.0", "enc.1", "gates.*", "heads.*", "head"),
    "encoder levels 0-1, full-resolution gates, heads": ("enc.0", "enc.1", "gates.0_*", "heads.*", "head"),
    "encoder level 0, full-resolution gates, heads": ("enc.0", "gates.0_*", "heads.*", "head"),
    "nothing (plain autocast)": (),
}


def speed(floor: float) -> None:
    torch.manual_seed(0)
    model = create_model("hybrid-attunet++", width=32).eval()
    x = torch.rand(2, 3, 224, 224)
    fast = {name: FastModel(model, default_paths(), fp32_modules=plan) for name, plan in PLANS.items()}
    gflop = 2 * 40.8  # per slice: 40.8 GMAC (``bonemet seg models``)
    times: dict[str, list[float]] = {name: [] for name in PLANS}
    with torch.inference_mode():
        for fm in fast.values():
            fm(x)
        for _ in range(5):
            for name, fm in fast.items():
                t = time.perf_counter()
                fm(x)
                fm(x)
                times[name].append((time.perf_counter() - t) / 4)  # per slice
    print("| plan | slices/s | GFLOP/s | share of the bf16 floor % |\n| --- | --- | --- | --- |")
    for name, ts in times.items():
        per_slice = sorted(ts)[len(ts) // 2]
        print(f"| {name} | {1 / per_slice:.2f} | {gflop / per_slice:.0f} | {100 * gflop / per_slice / floor:.1f} |")


def answers(run: Path, n: int) -> None:
    cfg, split = load_run(run)
    test = set(split.get("test_patients", []))
    pool = [s for s in load_bmseg(cfg.data).slices if s.patient in test or not test]
    x, picked = calibration_input(pool, cfg, n)
    members = [load_member(cfg, run, k) for k in range(cfg.folds)]
    print(f"{run}: {len(members)} members, {len(picked)} slices of {len({s.patient for s in picked})} patients")

    def probs(fm: FastModel) -> list[torch.Tensor]:
        outs = []
        with torch.inference_mode():
            for i in range(0, len(x), 4):
                outs.append([torch.sigmoid(t) for t in split_outputs(fm(x[i:i + 4])) if t is not None])
        return [torch.cat(p) for p in zip(*outs)]

    refs = [probs(FastModel(m, ("fold_bn", "channels_last"))) for m in members]
    heads = range(len(refs[0]))
    ens_ref = [sum(r[h] for r in refs) / len(refs) for h in heads]
    print("| plan | largest difference, lesion / bone | 99.99th percentile | lesion pixels within 0.02 % "
          "| ensemble: largest difference | ensemble: lesion masks equal % |\n| --- | --- | --- | --- | --- | --- |")
    for name, plan in PLANS.items():
        ps = [probs(FastModel(m, default_paths(), fp32_modules=plan)) for m in members]
        diffs = [[(p[h] - r[h]).abs().flatten() for p, r in zip(ps, refs)] for h in heads]
        largest = " / ".join(f"{max(float(d.max()) for d in dh):.4f}" for dh in diffs)
        pct = " / ".join(f"{max(float(d.kthvalue(int(0.9999 * d.numel())).values) for d in dh):.4f}" for dh in diffs)
        within = min(float((d <= 0.02).float().mean()) for d in diffs[0])
        ens = [sum(p[h] for p in ps) / len(ps) for h in heads]
        ens_diff = " / ".join(f"{float((e - r).abs().max()):.4f}" for e, r in zip(ens, ens_ref))
        masks = float(((ens[0] >= 0.5) == (ens_ref[0] >= 0.5)).float().mean())
        print(f"| {name} | {largest} | {pct} | {100 * within:.3f} | {ens_diff} | {100 * masks:.4f} |", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] == "speed":
        speed(float(args[args.index("--floor") + 1]) if "--floor" in args else 3893.0)
    else:
        answers(Path(args[0]), int(args[1]) if len(args) > 1 else 128)
