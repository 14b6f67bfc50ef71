"""Where lesions may be inserted into a real CT that has no bone mask: bone from HU alone.

Not a bone segmentation. Lesion insertion needs voxels that are surely bone (a lesion is clipped to them), not all
of the bone, so the rule trades recall for precision:

1. voxels of at least ``LOW_HU``;
2. on series with fine pixels (at most ``FINE_PIXEL_MM`` in-plane), only those within ``NEAR_DENSE_MM`` of a voxel
   of at least ``DENSE_HU``: bone marrow lies near its cortex, a contrast-filled aorta does not (on coarse pixels
   partial volume leaves too few dense voxels, and this step would keep almost nothing);
3. whole connected components that hold at least ``SEED_ML`` of voxels of at least ``DENSE_HU`` (the cortex seeds
   its bone; contrast-filled vessels and organs that touch no cortex go);
4. holes filled slice by slice (the marrow inside a cortical ring);
5. on fine pixels, eroded by ``ERODE_MM`` (the partial-volume rim around cortex).

Checked against TotalSegmentator's masks of the two real series that have one (``docs/real-ct-findings.md``):
60 lesions inserted through the rule into each (10 seeds x 6), how many have their centre in TotalSegmentator's
bone and at least 70 % of their voxels in it; the other series' masks were looked at on four slices each
(``docs/experiments/insertion_sites.py``). What it misses: marrow far from any 600 HU voxel whose cortex does not
close a ring, such as vertebral bodies of low-dose or osteoporotic scans; their lesions then go to the posterior
elements, ribs, pelvis and long bones.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .volume import Volume

LOW_HU = 150.0
DENSE_HU = 600.0
SEED_ML = 0.05
NEAR_DENSE_MM = 3.0
ERODE_MM = 1.5
FINE_PIXEL_MM = 1.5


def _ball(spacing: tuple[float, ...], mm: float) -> np.ndarray:
    """A boolean ball of radius ``mm`` on a grid of ``spacing``."""
    r = [int(np.ceil(mm / s)) for s in spacing]
    grids = np.meshgrid(*[np.arange(-k, k + 1) * s for k, s in zip(r, spacing)], indexing="ij")
    return sum(g ** 2 for g in grids) <= mm ** 2 + 1e-6


def insertion_bone_mask(vol: Volume) -> np.ndarray:
    """Voxels of ``vol`` (an HU volume, axial slices along its last axis) that are surely bone; may be empty."""
    hu = np.asarray(vol.array, np.float32)
    fine = max(vol.spacing[:2]) <= FINE_PIXEL_MM
    mask = hu >= LOW_HU
    if fine:
        mask &= ndi.maximum_filter(hu, footprint=_ball(vol.spacing, NEAR_DENSE_MM)) >= DENSE_HU
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    dense_ml = ndi.sum(hu >= DENSE_HU, labels, range(1, n + 1)) * float(np.prod(vol.spacing)) / 1000.0
    keep = np.zeros(n + 1, bool)
    keep[1:] = dense_ml >= SEED_ML
    mask = keep[labels]
    for k in range(mask.shape[2]):
        mask[:, :, k] = ndi.binary_fill_holes(mask[:, :, k])
    if fine:
        mask = ndi.binary_erosion(mask, _ball(vol.spacing, ERODE_MM))
    return mask


__all__ = ["insertion_bone_mask", "LOW_HU", "DENSE_HU", "SEED_ML"]
