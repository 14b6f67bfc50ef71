"""How far a bone mask made from HU alone gets against TotalSegmentator's masks of the two real series that have
one (``../shared/data/real_ct``): a bone mask is what lesion insertion into real CT needs, and only two of the
real series come with one.

Rule tried: voxels of at least LOW HU, kept as whole connected components when a component holds at least 0.05 mL
of voxels of at least HIGH HU (hysteresis: the cortex seeds its bone), holes then filled slice by slice (marrow).

    .venv/bin/python docs/experiments/bone_threshold.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from bonemet.data.ct import read_volume
from bonemet.data.volume import read_mask_like

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real_ct"
SERIES = [("chest_abdomen_dicom", "chest_abdomen_dicom_bone_mask.nii.gz"),
          ("abdomen_3mm_ct.nii.gz", "abdomen_3mm_bone_mask.nii.gz")]


def bone_from_hu(vol, low: float, high: float, seed_ml: float = 0.05) -> np.ndarray:
    hu = vol.array
    mask = hu >= low
    labels, n = ndi.label(mask)
    seeds_ml = ndi.sum((hu >= high) & mask, labels, range(1, n + 1)) * np.prod(vol.spacing) / 1000
    keep = np.zeros(n + 1, bool)
    keep[1:] = seeds_ml >= seed_ml
    mask = keep[labels]
    for k in range(mask.shape[2]):
        mask[:, :, k] = ndi.binary_fill_holes(mask[:, :, k])
    return mask


def main() -> None:
    cases = []
    for ct, bone in SERIES:
        vol = read_volume(REAL / ct)
        cases.append((ct, vol, read_mask_like(REAL / bone, vol)))
    print("| LOW HU | HIGH HU | " + " | ".join(f"{c}: Dice / precision / recall" for c, _, _ in cases) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in cases) + " |")
    for low in (120, 150, 180):
        for high in (400, 600, 800):
            cells = []
            for _, vol, truth in cases:
                m = bone_from_hu(vol, low, high)
                both = (m & truth).sum()
                cells.append(f"{2 * both / (m.sum() + truth.sum()):.3f} / {both / max(1, m.sum()):.3f} / "
                             f"{both / truth.sum():.3f}")
            print(f"| {low} | {high} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
