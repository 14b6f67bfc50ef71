"""Reading a CT scan in HU whatever its format: a DICOM series folder (or its DICOMDIR) or a NIfTI file. It sits
above both readers: ``dicom`` builds on ``volume``'s ``Volume``, and ``volume`` does not reach back up."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .dicom import is_dicomdir, read_dicom_series
from .volume import Volume, finite_ct, read_nifti


LABEL_LEVELS = 16  # a volume with no more distinct values than this is a label mask: a CT has hundreds
SAMPLE = 1 << 20  # voxels looked at for that count, evenly strided


def not_a_label_mask(vol: Volume) -> Volume:
    """``vol``, refused when it holds a handful of distinct values (a bone or lesion mask or a blank image passed
    where the CT goes): a model run on it would answer as if it were anatomy."""
    flat = vol.array.reshape(-1)
    levels = np.unique(flat[:: max(1, flat.size // SAMPLE)])
    if len(levels) <= LABEL_LEVELS:
        shown = ", ".join(f"{v:g}" for v in levels[:6]) + (", ..." if len(levels) > 6 else "")
        raise DataError(f"only {len(levels)} distinct value(s) ({shown}): a label mask or a blank image, "
                        "not a CT in HU", vol.source)
    return vol


def read_volume(path: str | Path, canonical: bool = True, series_uid: str | None = None) -> Volume:
    """Read a CT volume in HU from a DICOM series folder (or its DICOMDIR; ``series_uid`` picks a series) or a
    NIfTI file; a label mask given as the CT is refused (``not_a_label_mask``)."""
    path = Path(path)
    if path.is_file() and is_dicomdir(path):
        path = path.parent  # the files a DICOMDIR indexes sit in the folders below it
    if path.is_dir():
        return not_a_label_mask(finite_ct(read_dicom_series(path, series_uid=series_uid, canonical=canonical)))
    if series_uid is not None:
        raise DataError("--series-uid applies to a DICOM folder, not to this file", path)
    if path.name.endswith((".nii", ".nii.gz")):
        return not_a_label_mask(finite_ct(read_nifti(path, canonical=canonical, dtype=None)))
    if not path.exists():
        raise DataError("not found", path)
    raise DataError("expected a DICOM series folder or a NIfTI file (.nii, .nii.gz)", path)
