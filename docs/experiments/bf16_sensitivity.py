"""Where the bf16 path's error comes from, on a trained segmentation run: NOT part of bonemet.

For each member asked for, on N slices of the run's test patients (``test``) or of its other patients
(``train``), against eager fp32 with BN folded and channels_last:

1. each module alone in bf16, everything else fp32 (its isolated error, lesion and bone), with its share of the
   multiply-adds at width 32, 224 px;
2. plans: modules kept in fp32 under bf16 autocast (``keep_fp32``, the product's own wrapper), and whose output is
   handed on in fp32.

This is how ``BF16_FP32_MODULES`` / ``BF16_FP32_OUTPUTS`` in ``bonemet/inference/fast.py`` were chosen (README,
"Fast inference"). Run from the repository root, for example:

    python docs/experiments/bf16_sensitivity.py runs/exp/bmt3 0,1,2 test 16
    python docs/experiments/bf16_sensitivity.py runs/exp/bmt3 0,1,2 test 200 plans   # the plans alone (faster)
"""
import copy
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bonemet.data.bmseg import load_bmseg
from bonemet.runs.seg import load_member, load_run
from bonemet.inference.fast import fold_batchnorm, keep_fp32
from bonemet.inference.quantize import calibration_input
from bonemet.models import create_model, split_outputs

PLANS = {  # name: (modules kept fp32, of which those handing on fp32)
    "plain autocast": ((), ()),
    "enc.0-1 (the default before 2026-12-03)": (("enc.0", "enc.1"), ()),
    "enc": (("enc.*",), ()),
    "enc, gates, heads": (("enc.*", "gates.*", "heads.*"), ()),
    "enc, gates, heads; enc hands on fp32 (the default)": (("enc.*", "gates.*", "heads.*"), ("enc.*",)),
    "the default + nodes 0_1": (("enc.*", "gates.*", "heads.*", "nodes.0_1.*"), ("enc.*",)),
    "the default + row-0 nodes": (("enc.*", "gates.*", "heads.*", "nodes.0_*"), ("enc.*",)),
}


class _BF16(nn.Module):
    """``module`` alone under bf16 autocast inside an fp32 model; hands on fp32."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *xs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.module(*xs).float()


def blocks(model):
    names = [f"enc.{i}" for i in range(len(model.enc))]
    names += [f"nodes.{k}.{d}" for k, ml in model.nodes.items() for d in range(len(ml))]
    names += [f"gates.{k}.{d}" for k, ml in model.gates.items() for d in range(len(ml))]
    return names + [f"heads.{d}" for d in range(len(model.heads))]


def shares(cfg, names):
    m = create_model(cfg.model, width=32, in_channels=cfg.channels).eval()
    with torch.no_grad(), FlopCounterMode(display=False, depth=10) as c:
        m(torch.zeros(1, cfg.channels, 224, 224))
    fl = c.get_flop_counts()
    root = type(m).__name__
    return {n: sum(fl.get(f"{root}.{n}", {}).values()) / sum(fl["Global"].values()) for n in names}


def probs(model, x, autocast):
    outs = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for i in range(0, len(x), 4):
            batch = x[i:i + 4].contiguous(memory_format=torch.channels_last)
            outs.append([torch.sigmoid(t.float()) for t in split_outputs(model(batch)) if t is not None])
    return [torch.cat(p) for p in zip(*outs)]


def err(p, ref):
    return " ".join(f"{h} {float((a - b).abs().max()):.4f}" for h, a, b in zip(("lesion", "bone"), p, ref))


def main(run: Path, members: list[int], which: str, n: int, modules: bool = True) -> None:
    cfg, split = load_run(run)
    test = set(split.get("test_patients", []))
    pool = [s for s in load_bmseg(cfg.data).slices if (s.patient in test) == (which == "test")]
    x, picked = calibration_input(pool, cfg, n)
    print(f"{run}: {len(picked)} {which} slices of {len({s.patient for s in picked})} patients")
    for k in members:
        model = fold_batchnorm(load_member(cfg, run, k)).to(memory_format=torch.channels_last)
        names = blocks(model)
        share = shares(cfg, names)
        ref = probs(model, x, False)
        print(f"\nmember {k}, each module alone in bf16 (share of the multiply-adds at width 32, 224 px):")
        for name in names if modules else []:
            alone = copy.deepcopy(model)
            parent, _, child = name.rpartition(".")
            alone.get_submodule(parent)._modules[child] = _BF16(alone.get_submodule(name))
            print(f"  {name:14s} {100 * share[name]:5.2f} %  {err(probs(alone, x, False), ref)}")
        print(f"member {k}, plans:")
        for plan, (kept, handed) in PLANS.items():
            m = copy.deepcopy(model)
            keep_fp32(m, kept, handed)
            fp32 = sum(v for nm, v in share.items() if any(nm == p or nm.startswith(p.rstrip("*")) for p in kept))
            print(f"  {plan:52s} fp32 {100 * fp32:5.1f} %  {err(probs(m, x, True), ref)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), [int(k) for k in sys.argv[2].split(",")], sys.argv[3] if len(sys.argv) > 3 else "test",
         int(sys.argv[4]) if len(sys.argv) > 4 else 16, modules=sys.argv[5:6] != ["plans"])
