"""What ``bonemet predict`` reads: a DICOM series, a NIfTI volume or a folder of PNG / JPEG slices.

A CT scan (DICOM / NIfTI) is a :class:`~bonemet.data.volume.Volume` in HU, canonical LPS order, so that
axial slices are what a radiologist sees and what the training slices were. A folder of images has
no HU and no spacing: measurements that need them are reported as not available.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.classification import slice_sort_key
from ..data.export import windowed_slice
from ..data.images import is_image_file, read_image
from ..data.dicom import is_dicomdir
from ..data.ct import read_volume
from ..data.volume import Volume, volume_from_array
from ..errors import DataError
from ..log import logger


@dataclass
class Scan:
    """One scan to analyse: ``volume`` (HU) for CT input, ``images`` for a folder of slices."""

    source: Path
    kind: str  # dicom | nifti | images
    volume: Volume | None = None
    images: list[Path] = field(default_factory=list)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_slices(self) -> int:
        return self.volume.n_slices if self.volume is not None else len(self.images)

    @property
    def has_hu(self) -> bool:
        return self.volume is not None

    @property
    def slice_shape(self) -> tuple[int, int]:
        """(rows, columns) of an axial slice."""
        if self.volume is not None:
            return self.volume.axial(0).shape
        return self.image(0).shape[:2]

    def image(self, k: int) -> np.ndarray:
        """Slice ``k`` of an image folder as stored (uint8)."""
        if k not in self._cache:
            self._cache = {k: read_image(self.images[k])}  # one slice at a time: scans are large
        return self._cache[k]

    def model_slice(self, k: int, window: str | None) -> np.ndarray:
        """Slice ``k`` as the models saw their training slices: windowed uint8 for CT, the file for images."""
        if self.volume is not None:
            return windowed_slice(self.volume, k, window)
        return self.image(k)

    def display_slice(self, k: int) -> np.ndarray:
        """Slice ``k`` in [0, 1] for figures (bone window for CT)."""
        img = self.model_slice(k, "bone").astype(np.float32) / 255.0
        return img.mean(-1) if img.ndim == 3 else img

    def slice_label(self, k: int) -> str:
        if self.volume is None:
            return self.images[k].name
        return f"slice {k + 1}/{self.n_slices}"


def read_scan(path: str | Path, series_uid: str | None = None) -> Scan:
    """Read ``path``: a DICOM series folder (or a DICOMDIR; ``series_uid`` picks one of several series), a NIfTI
    file, or a folder of PNG / JPEG slices (natural name order)."""
    path = Path(path)
    if not path.exists():
        raise DataError("not found", path)
    if path.is_file() and is_dicomdir(path):
        return Scan(path, "dicom", volume=read_volume(path, series_uid=series_uid))
    if path.is_dir() and series_uid is not None:
        return Scan(path, "dicom", volume=read_volume(path, series_uid=series_uid))
    if path.is_dir():
        files = [p for p in path.iterdir() if not p.name.startswith(".")]
        if not files:
            raise DataError("empty folder: expected a DICOM series or PNG / JPEG slices", path)
        images = sorted((p for p in files if is_image_file(p)), key=slice_sort_key)
        if images and len(images) >= len([p for p in files if p.is_file()]) / 2:
            others = [p for p in files if p.is_file() and not is_image_file(p)]
            if others:
                logger.warning("%s: %d non-image file(s) ignored (e.g. %s)", path, len(others), others[0].name)
            shapes = {}
            for p in images:  # decode every slice once: a damaged file is named now, not mid-run
                shapes.setdefault(read_image(p).shape[:2], p)
            if len(shapes) > 1:
                (s1, p1), (s2, p2) = list(shapes.items())[:2]
                raise DataError(f"slices of different sizes: {p1.name} is {s1}, {p2.name} is {s2}", path)
            return Scan(path, "images", images=images)
        vol = read_volume(path)
        return Scan(path, "dicom", volume=vol)
    vol = read_volume(path)
    return Scan(path, "nifti", volume=vol)


def as_scan(input, affine: np.ndarray | None = None, series_uid: str | None = None) -> Scan:
    """A scan from a path (as :func:`read_scan`), a nibabel image, or a 3D HU array with its voxel-to-RAS affine;
    each checked as a CT (``data.volume.usable_ct``)."""
    if isinstance(input, (str, Path)):
        if affine is not None:
            raise DataError("an affine goes with an array, not with a file (the file has its own)", input)
        return read_scan(input, series_uid)
    if hasattr(input, "affine") and hasattr(input, "dataobj"):  # a nibabel image
        name = getattr(input, "get_filename", lambda: None)() or "<nibabel image>"
        return Scan(Path(name), "nifti", volume=volume_from_array(np.asanyarray(input.dataobj),
                                                                  input.affine if affine is None else affine, name))
    if isinstance(input, np.ndarray):
        if affine is None:
            raise DataError("an array needs its 4x4 voxel-to-RAS affine (affine=...)", "<array>")
        return Scan(Path("<array>"), "nifti", volume=volume_from_array(input, affine))
    raise DataError(f"cannot read a scan from a {type(input).__name__} (a path, a nibabel image or an array)",
                    "<input>")
