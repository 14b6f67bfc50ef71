"""The bone mask ``predict`` reports: the network's bone output, checked against the scan's own HU.

The bone head has learned real bone from two CT series only. On anatomy it never saw, its mask reaches into the soft
tissue around a cortex and onto the CT table, and it misses marrow and thin cortex. Four rules that need nothing but
the CT take it closer to the bone (``refine_bone``):

1. the network's bone probability of at least ``CUT``: below predict's lesion threshold, since the rules below
   remove most of what a lower cut adds outside bone;
2. only inside the body: the 3D components above ``BODY_HU`` that hold bone HU alone is sure of (the trunk and each
   arm; not the table, cushions or blankets);
3. no bone below ``FLOOR_HU``, then holes of at most ``HOLE_MM2`` filled slice by slice: the rim of soft tissue
   around a cortex goes, the marrow inside a ring of cortex comes back (a size limit, since ribs, sternum and spine
   can close a ring around the whole chest);
4. the bone HU alone is sure of added (``data.bone.insertion_bone_mask``: dense cortex with what it encloses).

Measured against TotalSegmentator's masks of the two real series that have one, each segmented by the models that
never saw it, at two training seeds (``docs/experiments/bone_postprocess.py``; ``docs/real-ct-findings.md``): the
mean bone Dice rose from 0.698 and 0.587 to 0.778 and 0.730, and each rule raises it at both seeds. ``predict
--raw-bone`` reports the network's output cut at ``--threshold`` instead, as before these rules.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..data.bone import DENSE_HU, SEED_ML, fill_holes_slices, insertion_bone_mask
from ..data.volume import Volume

CUT = 0.4
BODY_HU = -300.0  # fat's lower edge: denser than this is body (the lesion sites' body outline too)
FLOOR_HU = 100.0
HOLE_MM2 = 150.0
IN_WORDS = (f"the bone output at {CUT:g}, inside the body, at least {FLOOR_HU:g} HU, holes up to {HOLE_MM2:g} mm2 "
            "filled, with the bone HU alone is sure of")  # for predict's summary
NO_SURE_BONE = (f"no bone dense enough for the bone mask's HU rules (no {SEED_ML:g} mL of {DENSE_HU:g} HU or "
                "more)")  # why refine_bone gave None


def body_mask(hu: np.ndarray, sure: np.ndarray) -> np.ndarray:
    """The 3D components of ``hu`` above ``BODY_HU`` that hold a voxel of ``sure`` bone, holes filled slice by
    slice (axial slices along the last axis)."""
    labels, n = ndi.label(hu > BODY_HU)
    keep = np.zeros(n + 1, bool)
    keep[labels[sure]] = True
    keep[0] = False
    return fill_holes_slices(keep[labels])


def refine_bone(prob: np.ndarray, vol: Volume) -> np.ndarray | None:
    """The bone mask of the network's bone probability ``prob`` on ``vol``'s grid (``vol`` in HU), by the rules
    above; None when HU alone is sure of no bone in ``vol`` (no 0.05 mL of cortex at 600 HU or more: a scan too
    coarse or too soft), where the body rule would keep nothing."""
    hu = np.ascontiguousarray(vol.array, np.float32)  # a reoriented volume is a strided view: slow to compare
    sure = insertion_bone_mask(Volume(hu, vol.affine))
    if not sure.any():
        return None
    bone = (np.ascontiguousarray(prob) >= CUT) & body_mask(hu, sure) & (hu >= FLOOR_HU)
    return fill_holes_slices(bone, HOLE_MM2 / (vol.spacing[0] * vol.spacing[1])) | sure


__all__ = ["refine_bone", "body_mask", "CUT", "BODY_HU", "FLOOR_HU", "HOLE_MM2", "IN_WORDS", "NO_SURE_BONE"]
