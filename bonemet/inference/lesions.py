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

from ..data.measure import bounding_box, largest_axial_diameter
from ..evaluation.metrics import lesions_found
from .bone import BODY_HU

DELTA_HU = 100.0
RING = 3  # voxels of surrounding bone compared with a lesion
CHUNK = 32  # slices of a lesion measured at a time: memory bounded however large a component is
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


def lesion_type(values: np.ndarray | list[np.ndarray], surrounding: float) -> str:
    """lytic / blastic / mixed from HU values (an array, or a list of arrays: one lesion's chunks) against the
    surrounding bone (see the module docstring)."""
    parts = values if isinstance(values, list) else [values]
    n = sum(v.size for v in parts)
    lytic = sum(int(np.count_nonzero(v < surrounding - DELTA_HU)) for v in parts) / n
    blastic = sum(int(np.count_nonzero(v > surrounding + DELTA_HU)) for v in parts) / n
    if lytic >= 0.15 and blastic >= 0.15:
        return "mixed"
    if lytic > blastic and lytic >= 0.3:
        return "lytic"
    if blastic > lytic and blastic >= 0.3:
        return "blastic"
    return "mixed"


def body_slice(hu_k: np.ndarray) -> np.ndarray:
    """The body of one axial slice (i, j): everything denser than fat's lower edge, holes filled."""
    return ndimage.binary_fill_holes(hu_k > BODY_HU, structure=np.ones((3, 3), bool))


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
                 min_volume_ml: float = 0.05, voxel_mm3: float | None = None, bone_margin_mm: float | None = None,
                 stats: dict | None = None, max_mean_hu: float | None = None,
                 symmetry_hu: float | None = None, min_contrast_hu: float | None = None
                 ) -> tuple[list[Lesion], np.ndarray]:
    """3D components (26-connected) of ``lesion_mask`` in canonical (i, j, k) order, largest first, and a label
    volume of the kept ones numbered by lesion id.

    Components under ``min_voxels`` (or ``min_volume_ml`` when the spacing is known) are dropped as noise.
    ``voxel_mm3``: the true voxel volume (|det| of the affine; default the product of the spacings, which is
    the same for an orthogonal grid and too large for a sheared one). ``bone_margin_mm`` (with ``bone``): a
    component that comes no closer than this to the bone mask is dropped too (a bone metastasis lies in bone; in
    pixels when the spacing is unknown); ``stats["off_bone"]`` then counts them. ``max_mean_hu`` (with HU): a
    component whose mean is at least this many HU is dropped as metal (an implant, a wire, a scanner's clipped
    maximum): bone and blastic metastases stay well below; ``stats["metal"]`` counts them. ``symmetry_hu`` (with
    HU): a component whose mirror image across the body's midline (``sagittal_midline``, within
    ``MIRROR_SHIFT_MM``) has a mean within this many HU of its own is dropped as normal, symmetric anatomy
    (``mirror_mean_hu``); ``stats["symmetric"]`` counts them. ``min_contrast_hu`` (with HU): a component whose
    mean is within this many HU of the median of the bone around it (its ``surrounding_bone_hu``) is dropped: CT
    shows no lesion there, neither lytic nor blastic (a component with no bone around it is kept);
    ``stats["faint"]`` counts them.
    """
    kept = np.zeros(lesion_mask.shape, np.int16)
    box0 = bounding_box(lesion_mask)  # components are labelled inside the mask's box only: far less memory
    if box0 is None:
        return [], kept
    labels, n = _label(lesion_mask[box0])
    if voxel_mm3 is None and spacing:
        voxel_mm3 = float(np.prod(spacing))
    voxel_ml = voxel_mm3 / 1000.0 if voxel_mm3 else None
    measure = hu is not None and spacing is not None
    origin = tuple(b.start for b in box0)
    counts = np.zeros(n + 1, np.int64)
    for k in range(labels.shape[2]):  # bincount works in int64: slice by slice, not a whole-volume copy
        counts += np.bincount(labels[:, :, k].ravel(), minlength=n + 1)
    out: list[tuple[Lesion, int]] = []
    off_bone = metal = symmetric = faint = 0
    midline = sagittal_midline(hu) if measure and symmetry_hu is not None else None
    for idx, box in enumerate(ndimage.find_objects(labels), start=1):
        count = int(counts[idx])
        if box is None or count < min_voxels or (voxel_ml and count * voxel_ml < min_volume_ml):
            continue
        if bone_margin_mm is not None and bone is not None and \
                not touches_bone(labels, idx, origin, box, bone, bone_margin_mm, spacing):
            off_bone += 1
            continue
        m = _measure(labels, idx, origin, box, prob, hu if measure else None, bone, spacing)
        own = m["hu_sum"] / count  # the component's mean HU (meaningful with ``measure``)
        if measure and max_mean_hu is not None and own >= max_mean_hu:
            metal += 1
            continue
        if measure and min_contrast_hu is not None and m["surrounding"] is not None and \
                abs(own - m["surrounding"]) < min_contrast_hu:
            faint += 1
            continue
        if midline is not None:
            mirror = mirror_mean_hu(hu, labels, idx, origin, box, midline, spacing, own)
            if mirror is not None and abs(mirror - own) < symmetry_hu:
                symmetric += 1
                continue
        centroid = tuple(int(round(v)) for v in m["center"])
        sur = m["surrounding"]
        ks = m["k0"] + np.flatnonzero(m["areas"])  # the slices it touches
        out.append((Lesion(
            id=0, voxels=count, volume_ml=round(count * voxel_ml, 3) if voxel_ml else None,
            diameter_mm=round(m["diameter"], 1) if spacing else None, area_px_max=int(m["areas"].max()),
            mean_hu=None if not measure else round(own, 1),
            max_hu=None if not measure else round(float(m["hu_max"]), 1),
            surrounding_bone_hu=sur, type=m["type"], site=rough_site(m["center"], bone, hu) if measure else NA,
            slice_start=int(ks[0]) + 1, slice_end=int(ks[-1]) + 1,
            key_slice=m["k0"] + int(np.argmax(m["areas"])), mean_probability=round(m["p_sum"] / count, 4),
            max_probability=round(float(m["p_max"]), 4), centroid_voxel=centroid), idx))  # type: ignore[arg-type]
    out.sort(key=lambda t: t[0].voxels, reverse=True)
    relabel = np.zeros(n + 1, np.int16)
    for i, (les, idx) in enumerate(out, start=1):
        les.id = i
        relabel[idx] = i
    region = kept[box0]
    for k in range(labels.shape[2]):  # slice by slice: no second full-size label array
        region[:, :, k] = relabel[labels[:, :, k]]
    if stats is not None:
        stats["off_bone"], stats["metal"], stats["symmetric"], stats["faint"] = off_bone, metal, symmetric, faint
    return [les for les, _ in out], kept


MIRROR_DENSE_HU = 200.0  # voxels this dense (bone) place the body's midline
MIRROR_SHIFT_MM = 3.0  # how far a mirror image may sit from the exact mirror position, along each in-plane axis


def sagittal_midline(hu: np.ndarray) -> int:
    """Twice the column (first canonical axis, the patient's right to left) about which the scan's voxels of at least
    ``MIRROR_DENSE_HU`` are most symmetric: the column ``c2 / 2`` that maximises the overlap of their count per
    column with its own mirror image (searched over the middle half of the scan). A column ``i`` mirrors to
    ``c2 - i``."""
    n = hu.shape[0]
    profile = np.zeros(n)
    for k in range(hu.shape[2]):  # slice by slice: no full-size boolean copy
        profile += (hu[:, :, k] >= MIRROR_DENSE_HU).sum(axis=1)
    overlap = np.convolve(profile, profile)  # overlap[c2] = sum_i profile[i] * profile[c2 - i]
    lo, hi = n // 2, min(len(overlap), 3 * n // 2)
    return lo + int(np.argmax(overlap[lo:hi]))


def mirror_mean_hu(hu: np.ndarray, labels: np.ndarray, idx: int, origin: tuple[int, ...], box: tuple[slice, ...],
                   midline: int, spacing: tuple[float, float, float], own: float) -> float | None:
    """The mean HU of component ``idx``'s mirror image across the column ``midline / 2``: of the shifts of up to
    ``MIRROR_SHIFT_MM`` along each in-plane axis (patients lie a little turned, their sides are not exact copies),
    the one whose mean is closest to ``own`` (the component's own mean). Voxels of the component itself, and those
    that fall outside the scan, are left out; None when they are more than half of its voxels (a component across
    the midline, which has no other side to compare with)."""
    ii, jj, kk = np.nonzero(labels[box] == idx)
    ii, jj, kk = (a + b.start + o for a, b, o in zip((ii, jj, kk), box, origin))
    lk = kk - origin[2]  # the slices do not move
    ri, rj = (min(8, int(round(MIRROR_SHIFT_MM / s))) for s in spacing[:2])
    best = None
    for di in range(-ri, ri + 1):
        for dj in range(-rj, rj + 1):
            mi, mj = midline - ii + di, jj + dj
            ok = (mi >= 0) & (mi < hu.shape[0]) & (mj >= 0) & (mj < hu.shape[1])
            li, lj = mi - origin[0], mj - origin[1]
            inside = ok & (li >= 0) & (li < labels.shape[0]) & (lj >= 0) & (lj < labels.shape[1])
            self_hit = np.zeros_like(ok)
            self_hit[inside] = labels[li[inside], lj[inside], lk[inside]] == idx
            ok &= ~self_hit
            if ok.sum() * 2 < len(ii):
                continue
            mean = float(hu[mi[ok], mj[ok], kk[ok]].mean())
            if best is None or abs(mean - own) < abs(best - own):
                best = mean
    return best


def touches_bone(labels: np.ndarray, idx: int, origin: tuple[int, ...], box: tuple[slice, ...], bone: np.ndarray,
                 margin_mm: float, spacing: tuple[float, float, float] | None) -> bool:
    """Whether component ``idx`` of ``labels`` (placed at ``origin``; ``box`` its box there) comes within
    ``margin_mm`` of ``bone``: the Euclidean distance in mm, computed in the component's box grown by the margin."""
    sp = tuple(spacing) if spacing else (1.0, 1.0, 1.0)
    g = [slice(b.start + o, b.stop + o) for b, o in zip(box, origin)]
    pad = [int(np.ceil(max(0.0, margin_mm) / s)) for s in sp]
    region = tuple(slice(max(0, s.start - p), min(dim, s.stop + p)) for s, p, dim in zip(g, pad, bone.shape))
    near = np.asarray(bone[region], bool)
    if not near.any():
        return False
    comp = np.zeros(near.shape, bool)
    comp[tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(g, region))] = labels[box] == idx
    if (comp & near).any():
        return True
    if margin_mm <= 0:
        return False
    return bool((ndimage.distance_transform_edt(~near, sampling=sp)[comp] <= margin_mm).any())


def _measure(labels: np.ndarray, idx: int, origin: tuple[int, ...], box: tuple[slice, ...], prob: np.ndarray,
             hu: np.ndarray | None, bone: np.ndarray | None, spacing: tuple[float, float, float] | None) -> dict:
    """Size, density, surrounding bone and probabilities of component ``idx`` of ``labels`` (which start at
    ``origin`` of the volume; ``box``: its box in ``labels``), taken ``CHUNK`` slices at a time. The 3-voxel ring
    around it is dilated over each chunk with ``RING`` slices either side, so it is the whole lesion's ring."""
    shape = prob.shape
    g = [slice(b.start + o, b.stop + o) for b, o in zip(box, origin)]  # the component's box in the volume
    pi, pj = (slice(max(0, s.start - RING), min(dim, s.stop + RING)) for s, dim in zip(g[:2], shape))
    areas = np.zeros(g[2].stop - g[2].start, np.int64)
    acc = {"hu_sum": 0.0, "hu_max": -np.inf, "p_sum": 0.0, "p_max": -np.inf, "diameter": 0.0}
    sums = np.zeros(3)
    vals, ring_bone, ring_dense = [], [], []
    for c0 in range(g[2].start, g[2].stop, CHUNK):
        c1 = min(c0 + CHUNK, g[2].stop)
        h0, h1 = max(0, c0 - RING), min(shape[2], c1 + RING)
        region = (pi, pj, slice(h0, h1))
        local = np.zeros((pi.stop - pi.start, pj.stop - pj.start, h1 - h0), bool)
        src = [slice(max(r.start, o), min(r.stop, o + n)) for r, o, n in zip(region, origin, labels.shape)]
        if all(s.start < s.stop for s in src):
            local[tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(src, region))] = \
                labels[tuple(slice(s.start - o, s.stop - o) for s, o in zip(src, origin))] == idx
        mid = slice(c0 - h0, c1 - h0)
        here = local[:, :, mid]
        areas[c0 - g[2].start:c1 - g[2].start] = here.sum(axis=(0, 1))
        for axis, start in enumerate((pi.start, pj.start, c0)):
            line = here.sum(axis=tuple(a for a in range(3) if a != axis))
            sums[axis] += float(line @ (np.arange(line.size) + start))
        p = prob[region][:, :, mid][here]
        acc["p_sum"] += float(p.sum(dtype=np.float64))
        acc["p_max"] = max(acc["p_max"], float(p.max()))
        if spacing:
            acc["diameter"] = max(acc["diameter"], largest_axial_diameter(here, spacing))
        if hu is None:
            continue
        hu_here = hu[region][:, :, mid]
        v = hu_here[here]
        vals.append(v)
        acc["hu_sum"] += float(v.sum(dtype=np.float64))
        acc["hu_max"] = max(acc["hu_max"], float(v.max()))
        ring = (ndimage.binary_dilation(local, iterations=RING) & ~local)[:, :, mid]
        if bone is not None:
            ring_bone.append(hu_here[ring & bone[region][:, :, mid]])
        ring_dense.append(hu_here[ring & (hu_here > 150)])
    count = int(areas.sum())
    result = {**acc, "areas": areas, "k0": g[2].start, "center": tuple(sums / count), "surrounding": None,
              "type": NA}
    if hu is not None:
        # the ring keeps its bone voxels (the predicted bone mask; dense voxels when it touches none)
        ring = ring_bone if sum(r.size for r in ring_bone) else ring_dense
        if sum(r.size for r in ring):
            result["surrounding"] = sur = round(float(np.median(np.concatenate(ring))), 1)
            result["type"] = lesion_type(vals, sur)
    return result


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components, in uint16 while they fit (half of int32's memory), int32 beyond."""
    try:
        labels = np.empty(mask.shape, np.uint16)
        n = ndimage.label(mask, np.ones((3, 3, 3), bool), output=labels)
    except RuntimeError:  # more components than uint16 holds
        labels, n = ndimage.label(mask, np.ones((3, 3, 3), bool))
    return labels, int(n)


def match_truth(found: list[Lesion], kept: np.ndarray, truth: np.ndarray) -> dict:
    """Lesion-level recall against a truth mask: a true lesion (a 3D component of ``truth``) is ``found`` when a
    kept component overlaps it, and ``found_localised`` when one that overlaps it has at least ``LOCALISED_SHARE``
    of its voxels in true lesions (``evaluation.metrics.lesions_found``); ``false_positive_lesions`` overlap no true
    lesion, ``off_target_lesions`` have less than that share in true lesions (the false positives and the
    components that only touch a lesion)."""
    tlab, nt = ndimage.label(truth, np.ones((3, 3, 3), bool))
    hit, hit_localised, off_target = lesions_found(kept, tlab, {les.id: les.voxels for les in found})
    touched = set(np.unique(kept[tlab > 0]).tolist()) - {0}
    fp = len([les for les in found if les.id not in touched])
    return {"true_lesions": int(nt), "found": len(hit), "lesion_recall": float(len(hit) / nt) if nt else None,
            "found_localised": len(hit_localised),
            "localised_recall": float(len(hit_localised) / nt) if nt else None,
            "false_positive_lesions": fp, "off_target_lesions": len(off_target), "predicted_lesions": len(found)}
