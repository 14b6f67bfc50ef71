"""Slices/s of the bf16 inference paths at batches 1, 2, 4 and 8, the paths and batches taking turns.

    python docs/experiments/batch_sweep.py [size] [rounds]

hybrid-attunet++, width 32, random weights; median of ``rounds`` (default 5) interleaved rounds over 8 slices.
"""

import sys
import time

import torch

from bonemet.inference.fast import FastModel
from bonemet.models import create_model

size = int(sys.argv[1]) if len(sys.argv) > 1 else 224
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
torch.manual_seed(0)
model = create_model("hybrid-attunet++", width=32, in_channels=3).eval()
paths = {"no fusion": (("fold_bn", "channels_last", "bf16"), None),
         "fused (default)": (("fold_bn", "fuse", "channels_last", "bf16"), None),
         "fused, plain autocast": (("fold_bn", "fuse", "channels_last", "bf16"), ())}
models = {name: FastModel(model, p) if kept is None else FastModel(model, p, fp32_modules=kept)
          for name, (p, kept) in paths.items()}
x = torch.rand(8, 3, size, size)
batches = (1, 2, 4, 8)
times: dict = {(n, b): [] for n in models for b in batches}
with torch.inference_mode():
    for _ in range(rounds + 1):  # the first round warms up
        for b in batches:
            for n, m in models.items():
                t0 = time.perf_counter()
                for i in range(0, 8, b):
                    m(x[i:i + b])
                times[(n, b)].append(time.perf_counter() - t0)
print(f"| path | {' | '.join(f'batch {b}' for b in batches)} |")
print(f"| --- | {' | '.join('---' for _ in batches)} |")
for n in models:
    cells = []
    for b in batches:
        ts = sorted(times[(n, b)][1:])
        cells.append(f"{8 / ts[len(ts) // 2]:.1f}")
    print(f"| {n} | {' | '.join(cells)} |")
