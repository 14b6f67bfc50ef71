"""Lesions as 3D connected components of the predicted mask: size, density, type and rough site.

Type (lytic / blastic / mixed) compares the lesion's voxels with the bone around it: a voxel is lytic
when it is more than ``DELTA_HU`` below the surrounding bone's median, blastic when more than ``DELTA_HU``
above. Site is a coarse guess from where the lesion sits in its slice (pelvis: a wide bony ring in the lower
part of the scan with no lung; spine: near the body's midline behind its centre; rib: near the body
outline); it is a hint for the reader, never a diagnosis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ..phantom.lesions import largest_axial_diameter

DELTA_HU = 100.0
RING = 3  # voxels of surrounding bone compared with a lesion
NA = "n/a"


@dataclass
class Lesion:
    """One 3D lesion component. Fields that need HU or spacing are None for image-folder input."""

    id: int
    voxels: int
    volume_ml: float | None
    diameter_mm: float | None
    area_px_max: int
    mean_hu: float | None
    max_hu: float | None
    surrounding_bone_hu: float | None
    type: str
    site: str
    slice_start: int  # 1-based, as viewers number slices
    slice_end: int
    key_slice: int  # 0-based index of the slice with the largest area
    mean_probability: float
    max_probability: float
    centroid_voxel: tuple[int, int, int]

    def as_row(self) -> dict:
        row = asdict(self)
        row["centroid_voxel"] = " ".join(str(v) for v in self.centroid_voxel)
        return {k: (NA if v is None else v) for k, v in row.items()}


def lesion_type(values: np.ndarray, surrounding: float) -> str:
    """lytic / blastic / mixed from HU values against the surrounding bone (see the module docstring)."""
    lytic = float(np.mean(values < surrounding - DELTA_HU))
    blastic = float(np.mean(values > surrounding + DELTA_HU))
    if lytic >= 0.15 and blastic >= 0.15:
        return "mixed"
    if lytic > blastic and lytic >= 0.3:
        return "lytic"
    if blastic > lytic and blastic >= 0.3:
        return "blastic"
    return "mixed"


def body_slice(hu_k: np.ndarray) -> np.ndarray:
    """The body of one axial slice (i, j): everything denser than fat's lower edge, holes filled."""
    return ndimage.binary_fill_holes(hu_k > -300, structure=np.ones((3, 3), bool))


def rough_site(center: tuple[float, float, float], bone: np.ndarray | None, hu: np.ndarray) -> str:
    """spine / rib / pelvis / other from a lesion's centre (arrays in canonical (i, j, k) order); ``bone`` None:
    bone is taken as above 150 HU. Only the centre's slice is looked at."""
    ci, cj, ck = center
    k = int(round(ck))
    hu_k = hu[:, :, k]
    body_k = body_slice(hu_k)
    if not body_k.any():
        return "other"
    bi, bj = ndimage.center_of_mass(body_k)
    width = np.ptp(np.flatnonzero(body_k.any(1))) + 1
    depth = np.ptp(np.flatnonzero(body_k.any(0))) + 1
    dist_edge = ndimage.distance_transform_edt(body_k)[int(round(ci)), int(round(cj))]
    bone_k = bone[:, :, k] if bone is not None else hu_k > 150
    bone_width = np.ptp(np.flatnonzero(bone_k.any(1))) + 1 if bone_k.any() else 0
    lungs = float(np.mean(hu_k[body_k] < -400))
    # pelvis: a wide bony ring in the lower part of the scan, with no lung in the slice
    if k < 0.4 * hu.shape[2] and bone_width > 0.6 * width and lungs < 0.02:
        return "pelvis"
    # canonical LPS: i runs to the patient's left, j to posterior; the spine sits midline, behind the centre
    if abs(ci - bi) < 0.15 * width and cj > bj:
        return "spine"
    if dist_edge < 0.2 * min(width, depth):
        return "rib"
    return "other"


def find_lesions(lesion_mask: np.ndarray, prob: np.ndarray, hu: np.ndarray | None, bone: np.ndarray | None,
                 spacing: tuple[float, float, float] | None, min_voxels: int = 10,
                 min_volume_ml: float = 0.05, voxel_mm3: float | None = None) -> tuple[list[Lesion], np.ndarray]:
    """3D components (26-connected) of ``lesion_mask`` in canonical (i, j, k) order, largest first, and a label
    volume of the kept ones numbered by lesion id.

    Components under ``min_voxels`` (or ``min_volume_ml`` when the spacing is known) are dropped as noise.
    ``voxel_mm3``: the true voxel volume (|det| of the affine; default the product of the spacings, which is
    the same for an orthogonal grid and too large for a sheared one).
    """
    kept = np.zeros(lesion_mask.shape, np.int16)
    box0 = _bounding_box(lesion_mask)  # components are labelled inside the mask's box only: far less memory
    if box0 is None:
        return [], kept
    labels, n = _label(lesion_mask[box0])
    if voxel_mm3 is None and spacing:
        voxel_mm3 = float(np.prod(spacing))
    voxel_ml = voxel_mm3 / 1000.0 if voxel_mm3 else None
    measure = hu is not None and spacing is not None
    origin = np.array([b.start for b in box0])
    out: list[tuple[Lesion, int]] = []
    for idx, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        comp = labels[box] == idx
        count = int(comp.sum())
        if count < min_voxels or (voxel_ml and count * voxel_ml < min_volume_ml):
            continue
        # everything is measured in the component's box (whole-volume indices), padded for the 3-voxel ring
        box = tuple(slice(b.start + o, b.stop + o) for b, o in zip(box, origin))
        pbox = tuple(slice(max(0, b.start - RING), min(dim, b.stop + RING)) for b, dim in zip(box, kept.shape))
        local = np.zeros(tuple(b.stop - b.start for b in pbox), bool)
        inner = tuple(slice(b.start - p.start, b.stop - p.start) for b, p in zip(box, pbox))
        local[inner] = comp
        offset = np.array([b.start for b in pbox])
        areas = comp.sum(axis=(0, 1))
        ks = np.flatnonzero(areas) + box[2].start
        p = prob[pbox][local]
        center = np.array(ndimage.center_of_mass(local)) + offset
        centroid = tuple(int(round(v)) for v in center)
        mean_hu = max_hu = sur = None
        kind, site = NA, NA
        if measure:
            hu_box = hu[pbox]
            vals = hu_box[local]
            mean_hu, max_hu = round(float(vals.mean(dtype=np.float64)), 1), round(float(vals.max()), 1)
            ring = ndimage.binary_dilation(local, iterations=RING) & ~local
            bone_box = bone[pbox] if bone is not None else None
            ring &= bone_box if bone_box is not None and (ring & bone_box).any() else (hu_box > 150)
            if ring.any():
                sur = round(float(np.median(hu_box[ring])), 1)
                kind = lesion_type(vals, sur)
            site = rough_site(tuple(center), bone, hu)
        out.append((Lesion(
            id=0, voxels=count, volume_ml=round(count * voxel_ml, 3) if voxel_ml else None,
            diameter_mm=round(largest_axial_diameter(comp, spacing), 1) if spacing else None,
            area_px_max=int(areas.max()), mean_hu=mean_hu, max_hu=max_hu, surrounding_bone_hu=sur, type=kind,
            site=site, slice_start=int(ks.min()) + 1, slice_end=int(ks.max()) + 1,
            key_slice=int(np.argmax(areas)) + box[2].start, mean_probability=round(float(p.mean(dtype=np.float64)), 4),
            max_probability=round(float(p.max()), 4), centroid_voxel=centroid), idx))  # type: ignore[arg-type]
    out.sort(key=lambda t: t[0].voxels, reverse=True)
    relabel = np.zeros(n + 1, np.int16)
    for i, (les, idx) in enumerate(out, start=1):
        les.id = i
        relabel[idx] = i
    region = kept[box0]
    for k in range(labels.shape[2]):  # slice by slice: no second full-size label array
        region[:, :, k] = relabel[labels[:, :, k]]
    return [les for les, _ in out], kept


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The smallest box holding every set voxel of ``mask``, or None when none is set."""
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components, in uint16 while they fit (half of int32's memory), int32 beyond."""
    try:
        labels = np.empty(mask.shape, np.uint16)
        n = ndimage.label(mask, np.ones((3, 3, 3), bool), output=labels)
    except RuntimeError:  # more components than uint16 holds
        labels, n = ndimage.label(mask, np.ones((3, 3, 3), bool))
    return labels, int(n)


def match_truth(found: list[Lesion], kept: np.ndarray, truth: np.ndarray) -> dict:
    """Lesion-level recall against a truth mask: a true lesion is found when a kept component overlaps it."""
    tlab, nt = ndimage.label(truth, np.ones((3, 3, 3), bool))
    hit = np.unique(tlab[(kept > 0) & (tlab > 0)])
    touched = set(np.unique(kept[tlab > 0]).tolist()) - {0}
    fp = len([les for les in found if les.id not in touched])
    return {"true_lesions": int(nt), "found": int(len(hit)), "lesion_recall": float(len(hit) / nt) if nt else None,
            "false_positive_lesions": fp, "predicted_lesions": len(found)}
