"""Inserting bone metastases (and benign look-alikes) into any CT volume in HU.

Everything here is a function of (HU volume, bone mask, spacing, rng), so the same code makes the
phantom's lesions and semi-synthetic lesions in real CT. A lesion is an irregular ellipsoid clipped
to the bone mask, so lesion voxels are always bone voxels:

* lytic: bone (trabecular and, where reached, cortex) replaced by soft tissue, -50..100 HU;
* blastic: sclerotic bone, 500..1200 HU;
* mixed: a mottled mixture of both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..data.measure import bounding_box, largest_axial_diameter

LESION_TYPES = ("lytic", "blastic", "mixed")
SITES = {1: "spine", 2: "rib", 3: "pelvis", 4: "long bone", 5: "other"}
SITE_WEIGHTS = {"spine": 0.5, "pelvis": 0.2, "rib": 0.15, "long bone": 0.1, "other": 0.05}


@dataclass
class LesionInfo:
    """One inserted lesion, measured on the voxels it finally occupies."""

    lesion_id: int
    kind: str  # lytic / blastic / mixed, or a mimic: bone_island
    site: str
    diameter_mm: float  # largest axial diameter
    volume_ml: float
    slice_start: int
    slice_end: int
    mean_hu: float
    surrounding_bone_hu: float
    center_voxel: tuple[int, int, int]

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["center_voxel"] = " ".join(str(int(v)) for v in self.center_voxel)
        return row


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance, spatially smooth noise."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    std = field.std()
    return field / std if std > 0 else field


def _pick_center(candidates: np.ndarray, depth: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """A voxel among ``candidates`` (N, 3), favouring deep ones (vertebral bodies over cortex)."""
    w = depth[tuple(candidates.T)] + 0.5
    idx = rng.choice(len(candidates), p=w / w.sum())
    return tuple(int(v) for v in candidates[idx])  # type: ignore[return-value]


def _blob(shape: tuple[int, int, int], center: tuple[int, int, int], spacing: tuple[float, float, float],
          diameter: float, rng: np.random.Generator) -> tuple[tuple[slice, ...], np.ndarray]:
    """An irregular ellipsoid of about ``diameter`` mm around ``center``: (box, normalised radius in box)."""
    radii = diameter / 2 * rng.uniform(0.75, 1.0, size=3)
    half = [int(np.ceil(1.4 * r / s)) + 1 for r, s in zip(radii, spacing)]
    box = tuple(slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(center, half, shape))
    grids = np.meshgrid(*[(np.arange(b.start, b.stop) - c) * s for b, c, s in zip(box, center, spacing)],
                        indexing="ij")
    rot = np.linalg.qr(rng.standard_normal((3, 3)))[0]  # random orientation
    coords = np.stack(grids, -1) @ rot
    rr = np.sqrt(sum((coords[..., a] / radii[a]) ** 2 for a in range(3)))
    box_shape = rr.shape
    sigma = max(1.0, min(box_shape) / 4)
    rr = rr + 0.18 * _smooth_noise(box_shape, rng, sigma)  # irregular margin
    return box, rr


def insert_lesion(hu: np.ndarray, bone: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator,
                  kind: str, center: tuple[int, int, int], diameter: float,
                  texture_sigma: float = 12.0, forbidden: np.ndarray | None = None) -> np.ndarray:
    """Write one lesion into ``hu`` in place; return its boolean mask (a subset of ``bone``).

    ``forbidden`` voxels (earlier lesions) are left alone so that lesions never merge.
    """
    box, rr = _blob(hu.shape, center, spacing, diameter, rng)
    sub_bone = bone[box]
    region = (rr < 1.0) & sub_bone
    if forbidden is not None:
        region &= ~forbidden[box]
    if not region.any():
        region = np.zeros_like(sub_bone)
        local = tuple(c - b.start for c, b in zip(center, box))
        region[local] = bool(sub_bone[local])
    weight = np.clip((1.0 - rr) / 0.25, 0.0, 1.0) ** 0.7  # a soft transition over the margin
    weight = np.where(region, np.maximum(weight, 0.6), 0.0).astype(np.float32)
    shape = rr.shape
    tex = texture_sigma * rng.standard_normal(shape).astype(np.float32)
    if kind == "lytic":
        target = rng.uniform(-20, 80) + 15 * _smooth_noise(shape, rng, 1.0) + tex
        target = np.clip(target, -60, 110)
    elif kind == "blastic":
        target = rng.uniform(550, 1100) + 90 * _smooth_noise(shape, rng, 1.0) + 3 * tex
        target = np.clip(target, 450, 1300)
    elif kind == "mixed":
        lytic = np.clip(rng.uniform(0, 80) + tex, -50, 110)
        blastic = np.clip(rng.uniform(550, 1000) + 3 * tex, 450, 1300)
        mottle = _smooth_noise(shape, rng, 1.2) > rng.uniform(-0.3, 0.3)
        target = np.where(mottle, blastic, lytic)
    elif kind == "bone_island":
        target = rng.uniform(900, 1400) + tex
        weight = region.astype(np.float32)  # sharply marginated
    else:
        raise ValueError(f"unknown lesion kind '{kind}'")
    sub = hu[box]
    sub[...] = np.where(region, (1 - weight) * sub + weight * target, sub)
    mask = np.zeros(hu.shape, bool)
    mask[box] = region
    return mask


def bone_depth_mm(bone: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) from each bone voxel to the nearest non-bone voxel.

    Computed on the bone's bounding box grown by one voxel where the volume allows: every voxel outside the box
    is non-bone, and the box's outer layer is closer to a bone voxel than anything beyond it, so the answer is
    the whole volume's (a real CT's bone fills a fraction of its field)."""
    bone = np.asarray(bone, bool)
    depth = np.zeros(bone.shape, np.float32)
    box = bounding_box(bone, 1)
    if box is not None:
        depth[box] = ndimage.distance_transform_edt(bone[box], sampling=spacing)
    return depth


def insert_lesions(
    hu: np.ndarray,
    bone: np.ndarray,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    n: int,
    types: tuple[str, ...] | list[str] | None = None,
    site_map: np.ndarray | None = None,
    diameter_range: tuple[float, float] = (3.0, 40.0),
    texture_sigma: float = 12.0,
) -> tuple[np.ndarray, np.ndarray, list[LesionInfo]]:
    """Insert ``n`` metastases into a copy of ``hu``.

    Returns the new HU volume (float32), a label volume (0 = no lesion, i = lesion i) and the lesion
    list. ``types`` gives one type per lesion (default: drawn). ``site_map`` (labels of
    :data:`SITES`) steers lesions towards the spine first, then pelvis, ribs and long bones; without
    it (real CT), centres are drawn over the whole bone mask, favouring thick bone.
    """
    bone = np.asarray(bone, bool)
    if not bone.any():
        raise ValueError("the bone mask is empty: no place for a lesion")
    out = hu.astype(np.float32, copy=True)
    labels = np.zeros(hu.shape, np.int16)
    depth = bone_depth_mm(bone, spacing)
    infos: list[LesionInfo] = []
    lo, hi = diameter_range
    for i in range(n):
        kind = types[i] if types is not None else str(rng.choice(LESION_TYPES, p=[0.45, 0.3, 0.25]))
        site = "bone"
        cand_mask = bone & (labels == 0)
        if site_map is not None:
            present = {name: w for lab, name in SITES.items() if (w := SITE_WEIGHTS[name]) and
                       (site_map == lab).any()}
            names = list(present)
            p = np.asarray([present[s] for s in names])
            site = str(rng.choice(names, p=p / p.sum()))
            lab = next(k for k, v in SITES.items() if v == site)
            cand_mask = cand_mask & (site_map == lab)
        candidates = np.argwhere(cand_mask)
        if len(candidates) == 0:
            continue
        center = _pick_center(candidates, depth, rng)
        # log-uniform sizes: many small lesions, a few large ones. The blob is clipped to the bone mask, so a
        # large one fills a thin bone's cross-section (as "full bone" lesions in BM-Seg do)
        diameter = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        mask = insert_lesion(out, bone, spacing, rng, kind, center, diameter, texture_sigma, forbidden=labels > 0)
        if not mask.any():
            continue
        lesion_id = len(infos) + 1
        labels[mask] = lesion_id
        infos.append(_measure(lesion_id, kind, site, mask, out, bone & (labels == 0), spacing, center))
    return out, labels, infos


def _measure(lesion_id: int, kind: str, site: str, mask: np.ndarray, hu: np.ndarray, healthy_bone: np.ndarray,
             spacing: tuple[float, float, float], center: tuple[int, int, int]) -> LesionInfo:
    # insertion changes only the lesion's own voxels, so the ring around it still holds the old bone
    ring = ndimage.binary_dilation(mask, iterations=3) & healthy_bone & ~mask
    ks = np.flatnonzero(mask.any(axis=(0, 1)))
    return LesionInfo(
        lesion_id=lesion_id, kind=kind, site=site,
        diameter_mm=round(float(largest_axial_diameter(mask, spacing)), 1),
        volume_ml=round(float(mask.sum() * np.prod(spacing) / 1000.0), 3),
        slice_start=int(ks.min()), slice_end=int(ks.max()),
        mean_hu=round(float(hu[mask].mean()), 1),
        surrounding_bone_hu=round(float(hu[ring].mean()) if ring.any() else float("nan"), 1),
        center_voxel=center,
    )


def insert_bone_islands(hu: np.ndarray, bone: np.ndarray, spacing: tuple[float, float, float],
                        rng: np.random.Generator, n: int, avoid: np.ndarray | None = None,
                        site_map: np.ndarray | None = None) -> tuple[np.ndarray, list[LesionInfo]]:
    """Benign bone islands (enostoses): small (2-12 mm), very dense, sharp. Modifies ``hu`` in place.

    They are not metastases: they stay out of the lesion mask and teach models the blastic look-alike.
    """
    depth = bone_depth_mm(bone, spacing)
    allowed = bone & (depth >= 2.0)
    if avoid is not None:
        allowed &= ~ndimage.binary_dilation(avoid, iterations=2)
    candidates = np.argwhere(allowed)
    mask_all = np.zeros(hu.shape, bool)
    infos: list[LesionInfo] = []
    for _ in range(n):
        if len(candidates) == 0:
            break
        center = _pick_center(candidates, depth, rng)
        diameter = float(rng.uniform(2.0, 12.0))
        mask = insert_lesion(hu, bone & allowed, spacing, rng, "bone_island", center, diameter, 15.0,
                             forbidden=mask_all)
        if not mask.any():
            continue
        mask_all |= mask
        site = SITES.get(int(site_map[center]), "bone") if site_map is not None else "bone"
        infos.append(_measure(len(infos) + 1, "bone_island", site, mask, hu, bone & ~mask_all, spacing, center))
    return mask_all, infos
