"""The inference paths on CPUs without AMX, emulated on a CPU that has it: oneDNN limited to an older instruction set
(``ONEDNN_MAX_CPU_ISA``) and ATen's own kernels too for AVX2 (``ATEN_CPU_CAPABILITY``), each point in a fresh
process, against another checkout of bonemet (the code before a change) on the same machine and minutes.

Each point: hybrid-attunet++, width 32, 224 px, random weights (seed 0), 8 slices, the best of 3 passes, slices/s.
An emulation, not the real CPUs: the same cores, caches and memory, with the vector instructions of the older ones.

    git worktree add /tmp/before <commit>
    .venv/bin/python docs/experiments/without_amx.py /tmp/before
    .venv/bin/python docs/experiments/without_amx.py /tmp/before --native   # on a real CPU without AMX

``--native`` runs the points on the CPU as it is, with no instruction set limited: on a real CPU without AMX
(AVX-512 BF16 or AVX2), the old and the new default against each other, and the fp32 paths beside them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
ISAS = {"AVX2 (no bf16)": ("AVX2", "avx2"), "AVX-512 BF16, no AMX": ("AVX512_CORE_BF16", "default")}
POINTS = {  # ISA: (code, paths, batch)
    "AVX2 (no bf16)": [("before", "", 1), ("now", "", 1), ("before", "fold_bn,channels_last", 8),
                       ("now", "fold_bn,channels_last", 8), ("now", "fold_bn,fuse,channels_last", 2),
                       ("now", "fold_bn,fuse,channels_last", 4), ("now", "fold_bn,fuse,channels_last", 8)],
    "AVX-512 BF16, no AMX": [("before", "fold_bn,channels_last,bf16", 8), ("now", "fold_bn,channels_last,bf16", 8),
                             ("now", "fold_bn,fuse,channels_last,bf16", 2),
                             ("now", "fold_bn,fuse,channels_last,bf16", 4),
                             ("now", "fold_bn,fuse,channels_last,bf16", 8), ("before", "fold_bn,channels_last", 8),
                             ("now", "fold_bn,fuse,channels_last", 2)],
}
NATIVE = [("before", "", 1), ("now", "", 1), ("before", "channels_last", 8), ("now", "channels_last", 2),
          ("before", "fold_bn,channels_last", 8), ("now", "fold_bn,channels_last", 8),
          ("now", "fold_bn,channels_last", 2), ("now", "fold_bn,fuse,channels_last", 2),
          ("before", "fold_bn,channels_last,bf16", 8), ("now", "fold_bn,channels_last,bf16", 8),
          ("now", "fold_bn,fuse,channels_last,bf16", 2), ("now", "fold_bn,fuse,channels_last,bf16", 4)]


def point(code: str, paths: tuple[str, ...], batch: int) -> float:
    sys.path.insert(0, code)
    import torch

    from bonemet.inference.fast import FastModel
    from bonemet.models import create_model

    torch.manual_seed(0)
    model = create_model("hybrid-attunet++", width=32).eval()
    x = torch.rand(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    fm = FastModel(model, paths).eval() if paths else model
    with torch.inference_mode():
        times = []
        for rep in range(4):
            t = time.perf_counter()
            for i in range(0, 8, batch):
                fm(x[i:i + batch])
            if rep:  # the first pass prepares (weights cast, kernels chosen)
                times.append(time.perf_counter() - t)
    return 8 / min(times)


def main(before: str, native: bool) -> None:
    codes = {"before": before, "now": str(HERE)}
    isas = {"native": (None, None)} if native else ISAS
    rows = []
    for rep in range(2):
        for isa, (onednn, aten) in isas.items():
            env = {**os.environ, "ONEDNN_MAX_CPU_ISA": onednn, "ATEN_CPU_CAPABILITY": aten} if onednn else os.environ
            for code, paths, batch in (NATIVE if native else POINTS[isa]):
                out = subprocess.run([sys.executable, __file__, "--point", codes[code], paths, str(batch)], env=env,
                                     capture_output=True, text=True, check=True).stdout
                rows.append({"ISA": isa, "code": code, "path": paths.replace(",", " + ") or "eager", "batch": batch,
                             "slices/s": json.loads(out.strip().splitlines()[-1])})
                print(rows[-1], flush=True)
    print("\n| ISA | code | path | batch | slices/s (two runs) |\n| --- | --- | --- | --- | --- |")
    keys = list(dict.fromkeys((r["ISA"], r["code"], r["path"], r["batch"]) for r in rows))
    for key in keys:
        runs = [f"{r['slices/s']:.2f}" for r in rows if (r["ISA"], r["code"], r["path"], r["batch"]) == key]
        print(f"| {' | '.join(map(str, key))} | {' / '.join(runs)} |")


if __name__ == "__main__":
    if sys.argv[1] == "--point":
        print(json.dumps(point(sys.argv[2], tuple(p for p in sys.argv[3].split(",") if p), int(sys.argv[4]))))
    else:
        main(sys.argv[1], "--native" in sys.argv[2:])
