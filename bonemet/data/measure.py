"""Measurements on binary masks in millimetres, shared by the phantom (the lesions it draws) and the CAD pipeline
(the lesions it finds)."""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, QhullError

__all__ = ["largest_axial_diameter"]


def bounding_box(mask: np.ndarray, pad: int | list[int] = 0) -> tuple[slice, ...] | None:
    """The smallest box that holds ``mask``'s voxels, grown by ``pad`` (one for all axes, or one per axis) on every
    side within the array; None when ``mask`` is empty."""
    pads = [pad] * mask.ndim if isinstance(pad, int) else pad
    box = []
    for d, (n, p) in enumerate(zip(mask.shape, pads)):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != d)))
        if idx.size == 0:
            return None
        box.append(slice(max(0, int(idx[0]) - p), min(n, int(idx[-1]) + p + 1)))
    return tuple(box)


def largest_axial_diameter(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Largest in-plane distance (mm) between two voxels of ``mask`` on one axial slice (i, j, k order)."""
    best = 0.0
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        pts = np.argwhere(mask[:, :, k]).astype(float) * np.asarray(spacing[:2])
        if len(pts) >= 3:
            try:
                pts = pts[ConvexHull(pts).vertices]
            except QhullError:  # collinear points: every point is a candidate
                pass
        if len(pts) >= 2:
            d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).max()
        else:
            d = 0.0
        # a voxel has a width: the diameter spans centre to centre plus one voxel
        best = max(best, d + float(min(spacing[:2])))
    return best
