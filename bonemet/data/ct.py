"""Reading a CT scan in HU whatever its format: a DICOM series folder (or its DICOMDIR) or a NIfTI file. It sits
above both readers: ``dicom`` builds on ``volume``'s ``Volume``, and ``volume`` does not reach back up."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .dicom import is_dicomdir, read_dicom_series
from .volume import Volume, read_nifti, usable_ct


def read_volume(path: str | Path, canonical: bool = True, series_uid: str | None = None) -> Volume:
    """Read a CT volume in HU from a DICOM series folder (or its DICOMDIR; ``series_uid`` picks a series) or a
    NIfTI file (``volume.usable_ct``: non-finite voxels set to air, a label mask given as the CT refused)."""
    path = Path(path)
    if path.is_file() and is_dicomdir(path):
        path = path.parent  # the files a DICOMDIR indexes sit in the folders below it
    if path.is_dir():
        return usable_ct(read_dicom_series(path, series_uid=series_uid, canonical=canonical))
    if series_uid is not None:
        raise DataError("--series-uid applies to a DICOM folder, not to this file", path)
    if path.name.endswith((".nii", ".nii.gz")):
        return usable_ct(read_nifti(path, canonical=canonical, dtype=None))
    if not path.exists():
        raise DataError("not found", path)
    raise DataError("expected a DICOM series folder or a NIfTI file (.nii, .nii.gz)", path)
