"""Bone from HU alone, for a real CT that has no bone mask: where lesions may be inserted, and partial bone labels.

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

from .measure import bounding_box
from .volume import Volume

# a partial bone label: what a PNG bone mask holds where the rule is sure of bone, sure of no bone, or neither
NOT_BONE, UNKNOWN_BONE, BONE = 0, 128, 255
FAR_MM = 5.0  # farther than this from any voxel of at least LOW_HU (and outside every ring it closes): no bone

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


def dilate(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``mask`` dilated by a symmetric ``footprint`` (odd sides), nothing taken from outside the array: as
    ``ndimage.binary_dilation``, by one shifted OR per footprint voxel, within the box of ``mask``'s voxels."""
    out = np.zeros_like(mask, dtype=bool)
    half = [s // 2 for s in footprint.shape]
    box = bounding_box(mask, half)
    if box is None:
        return out
    src, dst = mask[box], out[box]
    for off in np.argwhere(footprint) - half:
        s = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(off, src.shape))
        d = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(off, src.shape))
        dst[d] |= src[s]
    return out


def fill_holes_slices(mask: np.ndarray, max_pixels: float | None = None) -> np.ndarray:
    """``mask`` with the holes of each axial slice (last axis) filled: as ``ndimage.binary_fill_holes`` slice by
    slice (the background 4-connected within its slice), in one labelling; with ``max_pixels`` only the holes of at
    most that many pixels. Holes lie inside the box of ``mask`` grown by one pixel, whose rim is background joined
    to the slice's border (or is that border), so only that box is labelled."""
    out = mask.copy()
    box = bounding_box(mask, [1, 1, 0])
    if box is None:
        return out
    structure = np.zeros((3, 3, 3), bool)
    structure[:, :, 1] = ndi.generate_binary_structure(2, 1)
    labels, n = ndi.label(~mask[box], structure)
    hole = np.ones(n + 1, bool)
    hole[np.unique(np.concatenate([labels[0].ravel(), labels[-1].ravel(),
                                   labels[:, 0].ravel(), labels[:, -1].ravel()]))] = False
    if max_pixels is not None:
        hole &= np.bincount(labels.ravel(), minlength=n + 1) <= max_pixels
    hole[0] = False  # the mask's own voxels
    out[box] |= hole[labels]
    return out


def insertion_bone_mask(vol: Volume) -> np.ndarray:
    """Voxels of ``vol`` (an HU volume, axial slices along its last axis) that are surely bone; may be empty."""
    hu = np.ascontiguousarray(vol.array, np.float32)  # a reoriented volume is a strided view: slow to compare
    fine = max(vol.spacing[:2]) <= FINE_PIXEL_MM
    mask = hu >= LOW_HU
    if fine:
        mask &= dilate(hu >= DENSE_HU, _ball(vol.spacing, NEAR_DENSE_MM))
    box = bounding_box(mask)
    if box is None:
        return mask
    labels, n = ndi.label(mask[box])
    dense_ml = np.bincount(labels[hu[box] >= DENSE_HU], minlength=n + 1)[1:] * float(np.prod(vol.spacing)) / 1000.0
    keep = np.zeros(n + 1, bool)
    keep[1:] = dense_ml >= SEED_ML
    mask = np.zeros_like(mask)
    mask[box] = keep[labels]
    mask = fill_holes_slices(mask)
    if fine:
        mask = ndi.binary_erosion(mask, _ball(vol.spacing, ERODE_MM))
    return mask


def partial_bone_labels(vol: Volume) -> np.ndarray:
    """A partial bone label of ``vol`` (uint8, its shape): ``BONE`` where ``insertion_bone_mask`` is sure of
    bone, ``NOT_BONE`` where no voxel of at least ``LOW_HU`` lies within ``FAR_MM`` and no ring of such voxels
    encloses the voxel in its slice (marrow inside a cortex is never called "no bone"), ``UNKNOWN_BONE`` elsewhere
    (the edges of bone, marrow the sure rule leaves out, contrast-filled vessels, cartilage, the table).

    Training leaves the unknown pixels out of the bone term (``training.seg.seg_loss``), so a series without a
    bone mask can still teach the bone head where its bones surely are and surely are not. Checked against
    TotalSegmentator's masks of the two real series that have one (``docs/real-ct-findings.md``)."""
    hu = np.asarray(vol.array, np.float32)
    near = fill_holes_slices(dilate(hu >= LOW_HU, _ball(vol.spacing, FAR_MM)))
    labels = np.full(hu.shape, UNKNOWN_BONE, np.uint8)
    labels[~near] = NOT_BONE
    labels[insertion_bone_mask(vol)] = BONE
    return labels


def partial_label_map(label: np.ndarray, unknown: float | None = None) -> np.ndarray:
    """A partial bone label as read from its image (uint8, (H, W) or (H, W, 3)): its sure bone (bool), or with
    ``unknown`` a float32 map of 1 (bone), 0 (no bone) and ``unknown``. Values are split half-way between the
    three levels, so that a resized or re-encoded label keeps its meaning."""
    arr = label.max(axis=2) if label.ndim == 3 else label
    bone = arr >= (UNKNOWN_BONE + BONE) // 2
    if unknown is None:
        return bone
    out = np.full(arr.shape, unknown, np.float32)
    out[arr < (NOT_BONE + UNKNOWN_BONE) // 2] = 0.0
    out[bone] = 1.0
    return out


__all__ = ["insertion_bone_mask", "dilate", "fill_holes_slices", "partial_bone_labels", "partial_label_map", "LOW_HU",
           "DENSE_HU", "SEED_ML", "NOT_BONE", "UNKNOWN_BONE", "BONE", "FAR_MM"]
