"""How much of the bone is as dense as a blastic lesion, on real CT and on the phantom: NOT part of bonemet.

Every axial slice is taken to the default model's 3 mm pixels as ``predict`` does (``bonemet.data.physical.to_grid``:
bilinear, anti-aliased), and of its voxels of 150 HU or more (bone, cortex and marrow) the share at 700, 900 and
1200 HU or more is printed: the six real series of the default recipe, and phantom patients as the recipe draws them
(256 px, seed 11; 48 slices, or 62 with ``--thighs``, the same spacing) without and with thighs. Inserted blastic
lesions are 500-1200 HU.

    .venv/bin/python docs/experiments/dense_bone.py [PATIENTS]      # about 30 s; 4 phantom patients by default
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from bonemet.data.ct import read_volume
from bonemet.data.physical import physical_shape, to_grid
from bonemet.markdown import markdown_table
from bonemet.phantom.anatomy import slices_with_thighs
from bonemet.phantom.synth import make_patient
from insertion_sites import MASKED, OTHERS, SHARED

LEVELS = (700, 900, 1200)
BONE_HU = 150.0


def at_3mm(hu: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """An (i, j, k) HU volume with its axial slices at 3 mm pixels."""
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(hu, 2, 0), dtype=np.float32))[:, None]
    return to_grid(t, physical_shape(hu.shape[:2], spacing, 3.0))[:, 0].numpy()


def row(name: str, hu: np.ndarray, spacing: tuple[float, float]) -> dict:
    a = at_3mm(hu, spacing)
    bone = a[a >= BONE_HU]
    return {"scan": name, "pixel mm": round(float(spacing[0]), 2), "voxels of 150 HU or more at 3 mm": bone.size,
            **{f">= {v} HU %": round(100.0 * float(np.mean(bone >= v)), 1) for v in LEVELS}}


def main(patients: int) -> None:
    rows = []
    for name in [m[0] for m in MASKED] + OTHERS:
        vol = read_volume(SHARED / name)
        rows.append(row(name, vol.array, vol.spacing[:2]))
    for thighs in (False, True):
        for i in range(patients):
            slices = slices_with_thighs(48) if thighs else 48
            p = make_patient(i, 11, "healthy", size=256, n_slices=slices, thighs=thighs)
            rows.append(row(f"phantom P{i:03d}{' with thighs' if thighs else ''}", p.ct.array.astype(np.float32),
                            p.ct.spacing[:2]))
    print(markdown_table(rows))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
