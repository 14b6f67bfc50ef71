"""Physical scale: an axial slice resampled to a fixed pixel size in millimetres, and the square field of view
around the body that a model sees at that scale.

The thesis resizes each slice's whole field of view to the model's size, so a bone is smaller in pixels on a
500 mm field of view than on a 350 mm one, and its size in pixels says nothing about its size in the patient.
At physical scale every pixel is ``pixel_mm`` wide whatever the scanner's field of view: training cuts a square
of ``size`` pixels centred on the body out of the resampled slice, and prediction tiles the body with such
squares (``inference.runners``) and maps the probabilities back to the slice's own grid.

Neighbouring slices as context (``context_mm``): the model's three input channels are the slice about that
many millimetres below, the slice, and the slice as far above, each in grey, so that it sees whether a
structure goes on along the scan (a vertebral endplate, a femoral cortex) or ends (a focal lesion), whatever
the scan's slice spacing.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
import torch.nn.functional as F

BODY_THRESHOLD = 0.05  # a pixel is body when any channel of its windowed image in [0, 1] is above this


def physical_shape(shape: tuple[int, int], spacing: tuple[float, float], pixel_mm: float) -> tuple[int, int]:
    """(rows, columns) of a slice of ``shape`` with pixel ``spacing`` (row, column mm) at ``pixel_mm`` pixels."""
    return tuple(max(1, round(n * s / pixel_mm)) for n, s in zip(shape, spacing))  # type: ignore[return-value]


def to_grid(t: torch.Tensor, shape: tuple[int, int], mask: bool = False) -> torch.Tensor:
    """A (C, H, W) or (N, C, H, W) image (bilinear, anti-aliased when shrinking) or {0, 1} mask (nearest)
    resampled to ``shape``, pixel centres aligned (the field of view is kept)."""
    if tuple(t.shape[-2:]) == tuple(shape):
        return t
    x = t[None] if t.ndim == 3 else t
    if mask:
        y = F.interpolate(x, size=shape, mode="nearest-exact")
    else:
        y = F.interpolate(x, size=shape, mode="bilinear", align_corners=False, antialias=True)
    return y[0] if t.ndim == 3 else y


def body_box(t: torch.Tensor, threshold: float = BODY_THRESHOLD) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right), ends excluded, of the pixels of a (C, H, W) image above ``threshold`` in any
    channel; None when there are none."""
    body = t.amax(0) > threshold
    rows, cols = torch.where(body.any(1))[0], torch.where(body.any(0))[0]
    if len(rows) == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def cut(t: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """The (..., height, width) window of ``t`` whose corner is (top, left), zero where it passes the edge."""
    h, w = t.shape[-2:]
    out = t.new_zeros(*t.shape[:-2], height, width)
    r0, c0, r1, c1 = max(top, 0), max(left, 0), min(top + height, h), min(left + width, w)
    if r1 > r0 and c1 > c0:
        out[..., r0 - top:r1 - top, c0 - left:c1 - left] = t[..., r0:r1, c0:c1]
    return out


def centred_field(box: tuple[int, int, int, int] | None, shape: tuple[int, int], size: int) -> tuple[int, int]:
    """The corner (top, left) of the ``size`` x ``size`` field centred on ``box`` (on the slice when no body)."""
    top, bottom, left, right = box if box is not None else (0, shape[0], 0, shape[1])
    return (top + bottom) // 2 - size // 2, (left + right) // 2 - size // 2


def region_around(box: tuple[int, int, int, int] | None, shape: tuple[int, int], size: int
                  ) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the region a prediction tiles: ``box`` (the whole slice when None) grown
    about its centre to at least ``size`` along each axis."""
    top, bottom, left, right = box if box is not None else (0, shape[0], 0, shape[1])
    height, width = max(size, bottom - top), max(size, right - left)
    return (top + bottom - height) // 2, (left + right - width) // 2, height, width


def union_box(boxes: list[tuple[int, int, int, int] | None]) -> tuple[int, int, int, int] | None:
    """The smallest box holding every box (None when there is none)."""
    found = [b for b in boxes if b is not None]
    if not found:
        return None
    return min(b[0] for b in found), max(b[1] for b in found), min(b[2] for b in found), max(b[3] for b in found)


def physical_field(t: torch.Tensor, spacing: tuple[float, float], pixel_mm: float, size: int,
                   masks: tuple[torch.Tensor, ...] = ()) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """A training sample at physical scale: the (C, H, W) image resampled to ``pixel_mm`` pixels, then the
    ``size`` x ``size`` field centred on its body (zero outside the slice); ``masks`` (1, H, W) the same way."""
    shape = physical_shape(tuple(t.shape[-2:]), spacing, pixel_mm)
    image = to_grid(t, shape)
    top, left = centred_field(body_box(image), shape, size)
    return (cut(image, top, left, size, size),
            tuple(cut(to_grid(m, shape, mask=True), top, left, size, size) for m in masks))


def context_step(context_mm: float, slice_mm: float) -> int:
    """Slices between a slice and its neighbour about ``context_mm`` away along the scan (at least one)."""
    return max(1, round(context_mm / slice_mm))


def context_neighbours(k: int, indices: Sequence[int], step: int) -> tuple[int, int, int]:
    """Slice ``k`` and its neighbours ``step`` slices below and above, among a series' slice ``indices``
    (sorted): past either end the end slice (a scan's first slice is its own neighbour below), and where the
    series has a gap the slice nearest the one wanted."""

    def nearest(j: int) -> int:
        i = bisect.bisect_left(indices, j)
        near = [indices[n] for n in (i - 1, i) if 0 <= n < len(indices)]
        return min(near, key=lambda x: (abs(x - j), abs(x - k)))

    return nearest(k - step), k, nearest(k + step)
