"""Reading a CT series from a folder of DICOM files with pydicom.

Slices are ordered by their position along the slice normal, never by file name. A folder may hold
several series: the CT series with the most slices is read, and the choice is logged.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import DataError
from ..log import logger
from .volume import Volume

CT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}  # CT, Enhanced CT
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _list_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _is_ct(ds: pydicom.Dataset) -> bool:
    return ds.get("Modality") == "CT" or str(ds.get("SOPClassUID", "")) in CT_SOP_CLASSES


def scan_series(folder: str | Path) -> tuple[dict[str, list[tuple[Path, pydicom.Dataset]]], list[Path]]:
    """Group the DICOM files of ``folder`` (recursively) by series; also return non-DICOM files."""
    folder = Path(folder)
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    other: list[Path] = []
    for f in _list_files(folder):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, AttributeError, TypeError):
            other.append(f)
            continue
        if "SOPClassUID" not in ds and "Modality" not in ds:
            other.append(f)
            continue
        series[str(ds.get("SeriesInstanceUID", "unknown"))].append((f, ds))
    return dict(series), other


def _describe(series: dict[str, list[tuple[Path, pydicom.Dataset]]]) -> str:
    parts = []
    for uid, items in series.items():
        ds = items[0][1]
        parts.append(f"{ds.get('Modality', '?')} series '{ds.get('SeriesDescription', '')}' ({len(items)} files)")
    return ", ".join(parts)


def read_dicom_series(folder: str | Path, series_uid: str | None = None, canonical: bool = True) -> Volume:
    """Read the CT series of ``folder`` (or the one with ``series_uid``) as a volume in HU.

    Unreadable slices are reported by name; the read fails when they leave a gap in the series.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder", folder)
    series, other = scan_series(folder)
    if not series:
        what = "empty folder" if not other else f"no DICOM file among its {len(other)} files"
        raise DataError(f"{what}: expected a DICOM CT series", folder)
    if series_uid is not None:
        if series_uid not in series:
            raise DataError(f"no series with UID {series_uid}", folder)
        chosen = series_uid
    else:
        ct = {uid: items for uid, items in series.items() if _is_ct(items[0][1])}
        if not ct:
            raise DataError(f"no CT series (found {_describe(series)})", folder)
        chosen = max(ct, key=lambda uid: len(ct[uid]))
        if len(series) > 1:
            desc = series[chosen][0][1].get("SeriesDescription", "")
            logger.warning("%s: %d series found (%s); reading CT series %s '%s' (%d files)", folder, len(series),
                           _describe(series), chosen, desc, len(series[chosen]))
    items = series[chosen]
    first = items[0][1]
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise DataError("multi-frame (enhanced) CT is not supported yet: export the series as single-frame files",
                        items[0][0])
    iop = np.asarray(first.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=float)
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)

    slices = []
    unreadable: list[str] = []
    for path, header in items:
        if "ImagePositionPatient" not in header:
            unreadable.append(f"{path.name} (no ImagePositionPatient)")
            continue
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception as exc:  # truncated files raise from deep inside pydicom / numpy
            unreadable.append(f"{path.name} ({type(exc).__name__}: {exc})")
            continue
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), iop, atol=1e-3):
            unreadable.append(f"{path.name} (orientation differs from the rest of the series)")
            continue
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        hu = pixels.astype(np.float32) * slope + intercept
        pos = np.asarray(ds.ImagePositionPatient, dtype=float)
        uid = str(ds.get("SOPInstanceUID") or getattr(ds, "file_meta", {}).get("MediaStorageSOPInstanceUID", ""))
        slices.append((float(pos @ normal), pos, hu, path, uid))
    for msg in unreadable:
        logger.warning("%s: skipped unreadable slice %s", folder, msg)
    if not slices:
        raise DataError(f"no readable CT slice ({len(unreadable)} unreadable)", folder)
    shapes = {s[2].shape for s in slices}
    if len(shapes) > 1:
        raise DataError(f"slices of one series have different sizes {sorted(shapes)}", folder)
    slices.sort(key=lambda s: s[0])
    dists = np.array([s[0] for s in slices])
    if len(slices) > 1:
        steps = np.diff(dists)
        if np.any(steps < 1e-3):
            dup = [slices[i + 1][3].name for i in np.flatnonzero(steps < 1e-3)]
            raise DataError(f"several slices at the same position (e.g. {dup[0]})", folder)
        step = float(np.median(steps))
        gaps = np.flatnonzero(np.abs(steps - step) > 0.1 * step + 0.01)
        if gaps.size:
            g = gaps[0]
            why = f"; unreadable: {', '.join(unreadable)}" if unreadable else ""
            raise DataError(
                f"slice spacing is not uniform: gap between {slices[g][3].name} and {slices[g + 1][3].name} "
                f"({steps[g]:.2f} mm, expected {step:.2f} mm){why}", folder)
        k_vec = (slices[-1][1] - slices[0][1]) / (len(slices) - 1)
    else:
        thickness = float(first.get("SliceThickness", 1) or 1)
        k_vec = normal * thickness
    tilt = np.degrees(np.arccos(np.clip(abs(k_vec @ normal) / np.linalg.norm(k_vec), -1, 1)))
    if tilt > 0.5:
        logger.warning("%s: slices are sheared by %.1f degrees (gantry tilt); the affine keeps the shear", folder, tilt)

    ps = [float(v) for v in first.get("PixelSpacing", [1.0, 1.0])]
    lps = np.eye(4)
    lps[:3, 0] = row_cos * ps[1]  # i runs along a row: column spacing
    lps[:3, 1] = col_cos * ps[0]  # j runs down a column: row spacing
    lps[:3, 2] = k_vec
    lps[:3, 3] = slices[0][1]
    array = np.stack([s[2].T for s in slices], axis=2)
    meta = {
        "format": "dicom",
        "series_uid": chosen,
        "study_uid": str(first.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "series_description": str(first.get("SeriesDescription", "")),
        "slice_uids": [s[4] for s in slices],
        "slice_files": [str(s[3]) for s in slices],
        "skipped_files": unreadable,
        "ignored_non_dicom": [str(p) for p in other],
        "gantry_tilt_deg": float(tilt),
        "patient": {k: str(first.get(k, "")) for k in ("PatientName", "PatientID", "PatientBirthDate",
                                                       "PatientSex", "PatientAge", "StudyDate")},
    }
    vol = Volume(array=array, affine=LPS_TO_RAS @ lps, source=folder, meta=meta)
    return vol.reoriented() if canonical else vol
