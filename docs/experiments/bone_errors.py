"""Where the default recipe's bone output differs from TotalSegmentator's masks of the two real series that have one,
and how far 3 mm pixels alone limit the bone Dice: NOT part of bonemet.

1. The limit of the grid: each mask resampled to PIXEL_MM pixels as the model's input is (bilinear, anti-aliased),
   back to its own grid (bilinear) and cut at 0.5, against itself.
2. The reference itself: whether the mask repeats slices and how often its edges fall on every third pixel (a mask
   made on a coarser grid and resampled to this one).
3. The build's leave-one-background-out models (``BUILD/work/without-background*/seg``, or ``--models DIR`` laid out
   the same way) on their left-out series: bone Dice, precision and recall, and the HU of the pixels they get wrong.

    .venv/bin/python docs/experiments/bone_errors.py runs/default-model [--models DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from bone_threshold import REAL, SERIES
from operating_point import segment
from bonemet.data.ct import read_volume
from bonemet.data.physical import physical_shape, to_grid
from bonemet.data.volume import read_mask_like


def grid_limit(truth: np.ndarray, spacing: tuple[float, ...], pixel_mm: float) -> float:
    t = torch.from_numpy(truth.astype(np.float32)).permute(2, 0, 1)[:, None]  # (slices, 1, i, j)
    shape = tuple(t.shape[-2:])
    back = to_grid(to_grid(t, physical_shape(shape, (spacing[0], spacing[1]), pixel_mm)), shape) >= 0.5
    return float(2 * (back & (t >= 0.5)).sum() / (back.sum() + (t >= 0.5).sum()))


def main(build: Path, models: Path | None = None) -> None:
    models = models or build / "work"
    print("| series | Dice limit at 3 / 2 / 1.5 mm | slices equal to the next | edges on every third pixel % |")
    print("| --- | --- | --- | --- |")
    cases = []
    for ct, mask in SERIES:
        vol = read_volume(REAL / ct)
        truth = read_mask_like(REAL / mask, vol)
        cases.append((ct, vol, truth))
        same = sum(bool((truth[:, :, k] == truth[:, :, k + 1]).all()) for k in range(truth.shape[2] - 1))
        edges = (truth[1:] != truth[:-1]).sum(axis=(1, 2))
        phase = max(edges[p::3].sum() for p in range(3)) / max(1, edges.sum()) * 100
        limits = " / ".join(f"{grid_limit(truth, vol.spacing, mm):.3f}" for mm in (3.0, 2.0, 1.5))
        print(f"| {ct} | {limits} | {same} of {truth.shape[2] - 1} | {phase:.0f} |")
    print()
    print("| series | bone Dice | precision | recall | wrong bone: HU 10 / 50 / 90 % "
          "| missed bone: HU 10 / 50 / 90 % |")
    print("| --- | --- | --- | --- | --- | --- |")
    for i, (ct, vol, truth) in enumerate(cases):
        run = models / f"without-background{i}" / "seg"
        if not run.exists():
            continue
        case = segment(run, REAL / ct)
        bone, hu = case["bone"] >= 0.5, np.asarray(case["volume"].array)
        both = (bone & truth).sum()
        fp, fn = np.percentile(hu[bone & ~truth], [10, 50, 90]), np.percentile(hu[truth & ~bone], [10, 50, 90])
        print(f"| {ct} | {2 * both / (bone.sum() + truth.sum()):.3f} | {both / bone.sum():.3f} | "
              f"{both / truth.sum():.3f} | {' / '.join(f'{v:.0f}' for v in fp)} | "
              f"{' / '.join(f'{v:.0f}' for v in fn)} |")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    models = next((Path(sys.argv[i + 1]) for i, a in enumerate(sys.argv) if a == "--models"), None)
    main(Path(args[0]) if args else Path("runs/default-model"), models)
