"""CT volumes in Hounsfield units with their geometry.

A :class:`Volume` holds its voxels in index order ``(i, j, k)`` = (column, row, slice) and a
4x4 NIfTI-style affine from voxel index to RAS millimetres. Readers return volumes in the
canonical ``LPS`` axis order, which is the DICOM display order: ``vol.axial(k)`` is the slice as a
radiologist sees it (patient's right on the image left, anterior at the top).
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_mod
from scipy import ndimage

from ..errors import DataError
from ..fileio import atomic_path
from ..log import logger

CANONICAL_AXCODES = ("L", "P", "S")


@dataclass
class Volume:
    """A 3D image (HU for CT, labels for masks) and its voxel-to-RAS affine."""

    array: np.ndarray
    affine: np.ndarray
    source: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        """The true volume of a voxel, |det| of the affine: the product of the spacings only when the axes are
        orthogonal (not for a sheared grid)."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @property
    def axcodes(self) -> tuple[str, str, str]:
        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]

    @property
    def n_slices(self) -> int:
        return self.array.shape[2]

    def axial(self, k: int) -> np.ndarray:
        """Slice ``k`` as a 2D image (rows, columns)."""
        return self.array[:, :, k].T

    def with_array(self, array: np.ndarray, **meta: Any) -> "Volume":
        """A volume on the same grid with other voxel values (a mask, a probability map)."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} does not match volume shape {self.array.shape}")
        return replace(self, array=array, meta={**self.meta, **meta})

    def reoriented(self, axcodes: tuple[str, str, str] = CANONICAL_AXCODES, copy: bool = True) -> "Volume":
        """The same voxels with axes permuted and flipped so that they run along ``axcodes``; ``copy=False`` gives
        a strided view instead of a contiguous copy (no memory for a whole second volume)."""
        current = ornt_mod.io_orientation(self.affine)
        target = ornt_mod.axcodes2ornt(axcodes)
        transform = ornt_mod.ornt_transform(current, target)
        if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
            return self
        array = ornt_mod.apply_orientation(self.array, transform)
        if copy:
            array = np.ascontiguousarray(array)
        affine = self.affine @ ornt_mod.inv_ornt_aff(transform, self.array.shape)
        meta = dict(self.meta)
        meta.setdefault("native_affine", self.affine.tolist())
        meta.setdefault("native_shape", list(self.array.shape))
        slice_keys = [k for k in ("slice_uids", "slice_files", "slice_frames") if meta.get(k) is not None]
        if slice_keys:
            # Per-slice lists survive only when the slice axis stays the slice axis.
            out_axis, flip = int(transform[2, 0]), transform[2, 1] < 0
            for key in slice_keys:
                meta[key] = (meta[key][::-1] if flip else meta[key]) if out_axis == 2 else None
        return Volume(array=array, affine=affine, source=self.source, meta=meta)

    def to_native(self, array: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``array`` (default: this volume's) in the file's original axis order, with that affine."""
        array = self.array if array is None else array
        if "native_affine" not in self.meta:
            return array, self.affine
        native = np.asarray(self.meta["native_affine"])
        axcodes = tuple(nib.aff2axcodes(native))
        back = Volume(array, self.affine).reoriented(axcodes, copy=False)  # type: ignore[arg-type]
        return back.array, native


MAX_VOXELS_ENV = "BONEMET_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 1_500_000_000  # 6 GB as float32: well above a 1,000-slice 1024 px whole-body CT
GZIP_MAX_RATIO = 1032  # deflate never compresses more than this: a smaller file cannot hold the claimed data
NON_FINITE_FILL = -1024.0  # HU of air: what a non-finite voxel of a CT becomes
NON_FINITE_REFUSED = 0.5  # a CT with more than this share of non-finite voxels is refused


def max_voxels() -> int:
    """The largest volume bonemet reads (voxels), ``BONEMET_MAX_VOXELS`` in the environment or the default."""
    value = os.environ.get(MAX_VOXELS_ENV)
    if value is None:
        return DEFAULT_MAX_VOXELS
    try:
        return int(float(value))
    except ValueError:
        raise DataError(f"{MAX_VOXELS_ENV}={value!r} is not a number of voxels") from None


def _stored_bytes(path: Path, limit: int) -> int:
    """How many bytes of image data ``path`` holds, counted up to ``limit`` (gzip: decompressed, streamed, so
    that nothing of a claimed size is allocated before it is known to be there)."""
    size = path.stat().st_size
    if not path.name.endswith(".gz"):
        return size
    if 4 <= size and limit < 2**32 and size * GZIP_MAX_RATIO >= limit:
        with open(path, "rb") as fh:  # the gzip trailer: the decompressed size (modulo 2**32)
            fh.seek(-4, os.SEEK_END)
            trailer = int.from_bytes(fh.read(4), "little")
        if trailer >= limit:
            return trailer
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while total < limit:
                piece = fh.read(1 << 20)
                if not piece:
                    break
                total += len(piece)
    except (OSError, EOFError, zlib.error):
        pass  # a damaged stream holds what was read before the damage
    return total


def _check_nifti_header(img: Any, path: Path) -> None:
    """Refuse before any voxel is read: a shape beyond the limit, data shorter than the header claims, a
    zero, singular or non-finite affine. Warn for a sheared one."""
    shape = tuple(int(v) for v in img.header.get_data_shape())
    n = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if n == 0:
        raise DataError(f"the header describes an empty volume (shape {shape})", path)
    if n > max_voxels():
        raise DataError(f"the header claims {n:,} voxels (shape {shape}), more than the limit of {max_voxels():,} "
                        f"(set {MAX_VOXELS_ENV} to read larger volumes)", path)
    need = int(img.header.get_data_offset()) + n * img.header.get_data_dtype().itemsize
    have = _stored_bytes(path, need)
    if have < need:
        raise DataError(f"truncated: the header claims shape {shape} ({need:,} bytes with its offset) but the file "
                        f"holds {have:,} bytes", path)
    aff = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(aff)):
        raise DataError("the affine (voxel to world) holds NaN or infinite values: no usable geometry", path)
    if abs(np.linalg.det(aff[:3, :3])) < 1e-9:
        raise DataError("the affine (voxel to world) is zero or singular (a zero spacing or collapsed axes): no "
                        "usable geometry", path)
    shear = shear_degrees(aff)
    if shear > 0.5:
        logger.warning("%s: the voxel axes are not orthogonal (sheared by %.1f degrees); volumes use the true voxel "
                       "volume |det(affine)| = %.4g mm3, not the product of the spacings", path, shear,
                       abs(np.linalg.det(aff[:3, :3])))


def shear_degrees(affine: np.ndarray) -> float:
    """How far the voxel axes of ``affine`` are from orthogonal: the largest deviation from 90 degrees."""
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    worst = 0.0
    for a, b in ((0, 1), (0, 2), (1, 2)):
        worst = max(worst, abs(90.0 - float(np.degrees(np.arccos(np.clip(abs(cols[:, a] @ cols[:, b]), 0, 1))))))
    return worst


def read_nifti(path: str | Path, canonical: bool = True, dtype: Any = np.float32) -> Volume:
    """Read a 3D NIfTI file (a 4D file with one volume is accepted); the header is checked before the data.
    ``dtype=None``: int16 when the stored values are whole numbers that fit it, else float32 (see
    :func:`stored_values`)."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for damaged files
        raise DataError(f"not a readable NIfTI file ({type(exc).__name__}: {exc})", path) from None
    _check_nifti_header(img, path)
    try:
        raw = img.dataobj.get_unscaled() if hasattr(img.dataobj, "get_unscaled") else np.asanyarray(img.dataobj)
        slope, inter = (float(getattr(img.dataobj, a, d)) for a, d in (("slope", 1.0), ("inter", 0.0)))
    except Exception as exc:
        raise DataError(f"not a readable NIfTI file ({type(exc).__name__}: {exc})", path) from None
    if raw.ndim == 4 and raw.shape[3] == 1:
        raw = raw[..., 0]
    if raw.ndim != 3:
        raise DataError(f"expected a 3D volume, found shape {raw.shape}", path)
    affine = img.affine.astype(np.float64)
    vol = Volume(array=raw, affine=affine, source=path, meta={"format": "nifti", "shear_deg": shear_degrees(affine)})
    if canonical:
        vol = vol.reoriented(copy=False)  # a view: the one copy below lays the voxels out in canonical order
    vol.array = stored_values(vol.array, slope, inter, dtype)
    return vol


def hu_dtype(integral: bool, lo: int = 0, hi: int = 0) -> type:
    """The dtype a CT is held in: int16 when its values are whole numbers within int16's range (every CT stored
    as integers with a whole intercept: half the memory of float32), float32 otherwise."""
    return np.int16 if integral and -32768 <= lo and hi <= 32767 else np.float32


def stored_values(raw: np.ndarray, slope: float = 1.0, inter: float = 0.0, dtype: Any = None) -> np.ndarray:
    """``raw * slope + inter`` as one new C-ordered array of ``dtype``; ``dtype=None`` keeps a CT compact: int16
    when the values are whole numbers that fit it (every CT stored as integers with an integer intercept, half
    the memory of float32), float32 otherwise."""
    integral = np.issubdtype(raw.dtype, np.integer) and slope == 1.0 and float(inter).is_integer()
    if dtype is None:
        lo = hi = 0
        if integral and raw.size:
            lo, hi = int(raw.min()) + int(inter), int(raw.max()) + int(inter)
        dtype = hu_dtype(integral, lo, hi)
    out = np.empty(raw.shape, dtype)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN in a mask: counted by the caller that needs it
        for k in range(raw.shape[2]):  # slice by slice: no full-size temporary beside the result
            piece = np.asarray(raw[:, :, k])
            if slope != 1.0 or inter != 0.0:
                piece = piece * slope + inter if not integral else piece.astype(np.int32) + int(inter)
            out[:, :, k] = piece
    return out


LABEL_LEVELS = 16  # a volume with no more distinct values than this is a label mask: a CT has hundreds
LABEL_SAMPLE = 1 << 20  # voxels looked at for that count, evenly strided
LOWEST_CT_HU = -100.0  # a body CT in HU has fat (about -100 HU) or air (-1000) below this; a CT without is not in HU


def usable_ct(vol: Volume) -> Volume:
    """A CT whose non-finite voxels (NaN, +-inf) are set to air (-1024 HU) and counted in ``meta``; a CT that is
    mostly non-finite is refused, and so is a volume of a handful of distinct values (a bone or lesion mask or a
    blank image given where the CT goes: a model run on it would answer as if it were anatomy), and so is a volume
    with nothing below ``LOWEST_CT_HU`` (values not in HU: a rescale intercept or slope lost in a conversion, or
    another modality)."""
    if np.issubdtype(vol.array.dtype, np.floating):  # integers are always finite
        _set_non_finite_to_air(vol)
    flat = vol.array.reshape(-1)
    levels = np.unique(flat[:: max(1, flat.size // LABEL_SAMPLE)])
    if len(levels) <= LABEL_LEVELS:
        shown = ", ".join(f"{v:g}" for v in levels[:6]) + (", ..." if len(levels) > 6 else "")
        raise DataError(f"only {len(levels)} distinct value(s) ({shown}): a label mask or a blank image, "
                        "not a CT in HU", vol.source)
    if levels[0] > LOWEST_CT_HU:
        raise DataError(f"no value below {LOWEST_CT_HU:g} (the lowest is {levels[0]:g}): no air and no fat, so not a "
                        "CT in HU (a rescale intercept or slope lost in a conversion, or another modality)", vol.source)
    return vol


def _set_non_finite_to_air(vol: Volume) -> None:
    bad = ~np.isfinite(vol.array)
    n = int(np.count_nonzero(bad))
    if n == 0:
        return
    share = n / vol.array.size
    if share > NON_FINITE_REFUSED:
        raise DataError(f"{share:.0%} of the voxels are not finite numbers (NaN or infinite): not a usable CT",
                        vol.source)
    vol.array[bad] = NON_FINITE_FILL
    vol.meta["non_finite_voxels"] = n
    logger.warning("%s: %d voxel(s) (%.2g %%) were NaN or infinite; set to %g HU (air)", vol.source, n, 100 * share,
                   NON_FINITE_FILL)


def volume_from_array(array: np.ndarray, affine: np.ndarray, source: str = "<array>") -> Volume:
    """A CT volume from a 3D array of HU and its 4x4 voxel-to-RAS affine (checked as a NIfTI header would be),
    in canonical order, checked as a CT read from a file is (``usable_ct``)."""
    array = np.asanyarray(array)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(f"expected a 3D volume, found shape {array.shape}", source)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError("the affine must be a finite 4x4 matrix with a non-singular 3x3 part", source)
    dtype = array.dtype if array.dtype in (np.int16, np.float32) else np.float32
    vol = Volume(array=array, affine=affine, source=Path(source), meta={"format": "array",
                                                                        "shear_deg": shear_degrees(affine)})
    vol = vol.reoriented(copy=False)
    vol.array = np.ascontiguousarray(vol.array, dtype=dtype)
    return usable_ct(vol)


def resample_like(moving: Volume, reference: Volume, order: int = 0) -> np.ndarray:
    """``moving``'s voxels on ``reference``'s grid, through both affines (nearest by default).

    Exact for grids that differ by axis flips and permutations, which is how a NIfTI mask meets
    the DICOM series it was drawn on.
    """
    to_moving = np.linalg.inv(moving.affine) @ reference.affine
    out = ndimage.affine_transform(
        moving.array.astype(np.float32 if order else moving.array.dtype, copy=False),
        to_moving[:3, :3], offset=to_moving[:3, 3], output_shape=reference.shape,
        order=order, mode="constant", cval=0,
    )
    return out


def read_mask_like(path: str | Path, reference: Volume, allow_empty: bool = False) -> np.ndarray:
    """Read a NIfTI mask and put it on ``reference``'s voxel grid; returns a boolean array.

    ``allow_empty`` accepts an all-zero mask (a lesion truth for a healthy patient) once its grid is
    seen to cover the image.
    """
    mask = read_nifti(path, canonical=False, dtype=np.uint8)
    if not mask.array.any():
        if not allow_empty:
            raise DataError("mask is empty (no voxel above 0)", path)
        cover = resample_like(replace(mask, array=np.ones_like(mask.array)), reference).mean()
        if cover < 0.5:
            raise DataError(f"mask grid does not line up with the image {reference.source}: it covers only "
                            f"{cover:.0%} of it through the two affines", path)
        return np.zeros(reference.shape, bool)
    aligned = resample_like(mask, reference) > 0
    kept = aligned.sum() / max(1, (mask.array > 0).sum()) * np.prod(reference.spacing) / np.prod(mask.spacing)
    if not aligned.any() or kept < 0.5:
        raise DataError(
            f"mask does not line up with the image {reference.source}: only {kept:.0%} of it falls inside "
            "the image through the two affines", path)
    return aligned


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path, dtype: Any = None,
               slope: float | None = None) -> Path:
    """Write ``array`` with ``affine`` as NIfTI, atomically; ``slope`` is stored as the header's scaling
    (readers see ``value * slope``), so that probabilities can be stored as 8-bit levels."""
    path = Path(path)
    data = array if dtype is None else array.astype(dtype)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
