"""CT volumes in Hounsfield units with their geometry.

A :class:`Volume` holds its voxels in index order ``(i, j, k)`` = (column, row, slice) and a
4x4 NIfTI-style affine from voxel index to RAS millimetres. Readers return volumes in the
canonical ``LPS`` axis order, which is the DICOM display order: ``vol.axial(k)`` is the slice as a
radiologist sees it (patient's right on the image left, anterior at the top).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_mod
from scipy import ndimage

from ..errors import DataError
from ..fileio import atomic_path

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

    def reoriented(self, axcodes: tuple[str, str, str] = CANONICAL_AXCODES) -> "Volume":
        """The same voxels with axes permuted and flipped so that they run along ``axcodes``."""
        current = ornt_mod.io_orientation(self.affine)
        target = ornt_mod.axcodes2ornt(axcodes)
        transform = ornt_mod.ornt_transform(current, target)
        if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
            return self
        array = np.ascontiguousarray(ornt_mod.apply_orientation(self.array, transform))
        affine = self.affine @ ornt_mod.inv_ornt_aff(transform, self.array.shape)
        meta = dict(self.meta)
        meta.setdefault("native_affine", self.affine.tolist())
        meta.setdefault("native_shape", list(self.array.shape))
        slice_keys = [k for k in ("slice_uids", "slice_files") if k in meta]
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
        back = Volume(array, self.affine).reoriented(tuple(nib.aff2axcodes(native)))  # type: ignore[arg-type]
        return back.array, native


def read_nifti(path: str | Path, canonical: bool = True, dtype: Any = np.float32) -> Volume:
    """Read a 3D NIfTI file (a 4D file with one volume is accepted)."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path)
    try:
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for damaged files
        raise DataError(f"not a readable NIfTI file ({type(exc).__name__}: {exc})", path) from None
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(f"expected a 3D volume, found shape {array.shape}", path)
    vol = Volume(array=array.astype(dtype, copy=False), affine=img.affine.astype(np.float64), source=path,
                 meta={"format": "nifti"})
    return vol.reoriented() if canonical else vol


def read_volume(path: str | Path, canonical: bool = True) -> Volume:
    """Read a CT volume in HU from a DICOM series folder or a NIfTI file."""
    path = Path(path)
    if path.is_dir():
        from .dicom import read_dicom_series

        return read_dicom_series(path, canonical=canonical)
    if path.name.endswith((".nii", ".nii.gz")):
        return read_nifti(path, canonical=canonical)
    if not path.exists():
        raise DataError("not found", path)
    raise DataError("expected a DICOM series folder or a NIfTI file (.nii, .nii.gz)", path)


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


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path, dtype: Any = None) -> Path:
    """Write ``array`` with ``affine`` as NIfTI, atomically."""
    path = Path(path)
    data = array if dtype is None else array.astype(dtype)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
