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

from ..errors import DataError, first_line
from ..log import logger
from .volume import Volume, hu_dtype

CT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1",  # CT, Enhanced CT
                  "1.2.840.10008.5.1.4.1.1.2.2"}  # Legacy Converted Enhanced CT
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _list_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _is_ct(ds: pydicom.Dataset) -> bool:
    return ds.get("Modality") == "CT" or str(ds.get("SOPClassUID", "")) in CT_SOP_CLASSES


DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage


def is_dicomdir(path: Path) -> bool:
    """Whether ``path`` is a DICOMDIR (the index of a DICOM medium), by name or by its SOP class."""
    if path.name.upper() == "DICOMDIR":
        return True
    if not _has_dicom_magic(path):
        return False
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:
        return False
    return str(meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS


def _has_dicom_magic(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM Part 10 file (128-byte preamble, then 'DICM')."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def scan_series(folder: str | Path, damaged: list[str] | None = None
                ) -> tuple[dict[str, list[tuple[Path, pydicom.Dataset]]], list[Path]]:
    """Group the DICOM files of ``folder`` (recursively) by series; also return non-DICOM files. Files that start
    like DICOM but cannot be parsed are damaged, not foreign: they go to ``damaged`` (name and why)."""
    folder = Path(folder)
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    other: list[Path] = []
    for f in _list_files(folder):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, AttributeError, TypeError) as exc:
            if damaged is not None and _has_dicom_magic(f):
                damaged.append(f"{f.name} (damaged DICOM header: {type(exc).__name__})")
            else:
                other.append(f)
            continue
        meta = getattr(ds, "file_meta", None)
        if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS:
            continue  # the medium's index: the images it lists are read from the folders themselves
        if "SOPClassUID" not in ds and "Modality" not in ds:
            if damaged is not None and _has_dicom_magic(f):  # a DICOM file whose data set ends early
                damaged.append(f"{f.name} (damaged DICOM header: no SOP class or modality in it)")
            else:
                other.append(f)
            continue
        series[str(ds.get("SeriesInstanceUID", "unknown"))].append((f, ds))
    return dict(series), other


def _describe(series: dict[str, list[tuple[Path, pydicom.Dataset]]]) -> str:
    parts = []
    for uid, items in series.items():
        ds = items[0][1]
        parts.append(f"{ds.get('Modality', '?')} series {uid or '(no UID)'} '{ds.get('SeriesDescription', '')}' "
                     f"({len(items)} files)")
    return ", ".join(parts)


class _Unreadable(Exception):
    """A file of the series that cannot give a slice (its reason is the message)."""


def functional(ds: pydicom.Dataset, per_frame: pydicom.Dataset | None, sequence: str, attribute: str):
    """An attribute of an enhanced (multi-frame) file from its per-frame group, else its shared group."""
    for group in (per_frame, (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
        if group is not None and sequence in group and len(group[sequence].value):
            item = group[sequence].value[0]
            if attribute in item:
                return item[attribute].value
    return None


def _frames(path: Path, header: pydicom.Dataset):
    """The slices of one file: (position, orientation, pixel spacing, raw pixels, slope, intercept, SOP Instance
    UID, frame number or None). A single-frame CT gives one; an enhanced (multi-frame) CT gives every frame, its
    geometry and rescale taken from the per-frame and shared functional groups."""
    frames = int(header.get("NumberOfFrames", 1) or 1)
    meta = getattr(header, "file_meta", None)
    uid = str(header.get("SOPInstanceUID") or (meta.get("MediaStorageSOPInstanceUID", "") if meta else ""))
    if frames == 1 and "PerFrameFunctionalGroupsSequence" not in header:
        if "ImagePositionPatient" not in header:
            raise _Unreadable("no ImagePositionPatient")
        ds = pydicom.dcmread(path)
        yield (np.asarray(ds.ImagePositionPatient, float),
               np.asarray(ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float),
               [float(v) for v in ds.get("PixelSpacing", [1.0, 1.0])], ds.pixel_array,
               float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0), uid, None)
        return
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    per = ds.get("PerFrameFunctionalGroupsSequence") or [None] * len(pixels)
    if len(per) != len(pixels):
        raise _Unreadable(f"{len(pixels)} frames but {len(per)} per-frame descriptions")
    for f, group in enumerate(per):
        pos = functional(ds, group, "PlanePositionSequence", "ImagePositionPatient")
        iop = functional(ds, group, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = functional(ds, group, "PixelMeasuresSequence", "PixelSpacing")
        if pos is None or iop is None or spacing is None:
            raise _Unreadable(f"frame {f + 1} has no plane position, orientation or pixel spacing")
        slope = functional(ds, group, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = functional(ds, group, "PixelValueTransformationSequence", "RescaleIntercept")
        slope = ds.get("RescaleSlope", 1) if slope is None else slope
        intercept = ds.get("RescaleIntercept", 0) if intercept is None else intercept
        yield (np.asarray(pos, float), np.asarray(iop, float), [float(v) for v in spacing], pixels[f],
               float(slope or 1), float(intercept or 0), uid, f + 1)


def _hu_volume(slices: list[tuple]) -> np.ndarray:
    """The series in HU, (columns, rows, slices), filled slice by slice from the stored pixels, in the dtype of
    :func:`~bonemet.data.volume.hu_dtype` (int16 when every slice rescales by a slope of 1 and a whole intercept)."""
    integral = all(np.issubdtype(sl[1].dtype, np.integer) and sl[5] == 1.0 and float(sl[6]).is_integer()
                   for sl in slices)
    lo = hi = 0
    if integral:
        lo = min(int(sl[1].min()) + int(sl[6]) for sl in slices)
        hi = max(int(sl[1].max()) + int(sl[6]) for sl in slices)
    dtype = hu_dtype(integral, lo, hi)
    integral = dtype is np.int16
    array = np.empty((*slices[0][1].T.shape, len(slices)), dtype)
    for k, sl in enumerate(slices):
        array[:, :, k] = (sl[1].astype(np.int32) + int(sl[6])).T if integral else (sl[1] * sl[5] + sl[6]).T
    return array


def _slice_name(sl: tuple) -> str:
    return sl[2].name if sl[4] is None else f"{sl[2].name} frame {sl[4]}"


def read_dicom_series(folder: str | Path, series_uid: str | None = None, canonical: bool = True) -> Volume:
    """Read the CT series of ``folder`` (or the one with ``series_uid``) as a volume in HU.

    Unreadable slices are reported by name; the read fails when they leave a gap in the series.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder", folder)
    damaged: list[str] = []
    series, other = scan_series(folder, damaged)
    if not series:
        if damaged:
            raise DataError(f"{len(damaged)} DICOM file(s), all damaged (e.g. {damaged[0]})", folder)
        what = "empty folder" if not other else f"no DICOM file among its {len(other)} files"
        raise DataError(f"{what}: expected a DICOM CT series", folder)
    if series_uid is not None:
        if series_uid not in series:
            raise DataError(f"no series with UID {series_uid} (found {_describe(series)})", folder)
        chosen = series_uid
        if not _is_ct(series[chosen][0][1]):
            raise DataError(f"series {series_uid} is not CT (found {_describe(series)})", folder)
    else:
        ct = {uid: items for uid, items in series.items() if _is_ct(items[0][1])}
        if not ct:
            raise DataError(f"no CT series (found {_describe(series)})", folder)
        chosen = max(ct, key=lambda uid: len(ct[uid]))
        if len(series) > 1:
            desc = series[chosen][0][1].get("SeriesDescription", "")
            logger.warning("%s: %d series found (%s); reading CT series %s '%s' (%d files); --series-uid picks "
                           "another", folder, len(series), _describe(series), chosen, desc, len(series[chosen]))
    items = series[chosen]
    first = items[0][1]
    slices = []  # (position, stored pixels, file, SOP Instance UID, frame number or None, slope, intercept)
    unreadable: list[str] = list(damaged)
    iop = ps = None
    for path, header in items:
        try:
            frames = list(_frames(path, header))
        except _Unreadable as exc:
            unreadable.append(f"{path.name} ({exc})")
            continue
        except (NotImplementedError, RuntimeError) as exc:  # no decoder for its transfer syntax
            unreadable.append(f"{path.name} ({type(exc).__name__}: {first_line(exc)})")
            continue
        except Exception as exc:  # truncated or damaged pixel data raise from deep inside pydicom / numpy
            unreadable.append(f"{path.name} (damaged DICOM pixel data: {type(exc).__name__}: {first_line(exc)})")
            continue
        for pos, frame_iop, frame_ps, pixels, slope, intercept, uid, frame in frames:
            if iop is None:
                iop, ps = frame_iop, frame_ps
            if not np.allclose(frame_iop, iop, atol=1e-3):
                unreadable.append(f"{path.name}{'' if frame is None else f' frame {frame}'} (orientation differs "
                                  "from the rest of the series)")
                continue
            slices.append((pos, pixels, path, uid, frame, slope, intercept))
    for msg in unreadable:
        logger.warning("%s: skipped unreadable slice %s", folder, msg)
    if other:
        logger.warning("%s: %d non-DICOM file(s) ignored (e.g. %s)", folder, len(other), other[0].name)
    if not slices:
        raise DataError(f"no readable CT slice ({len(unreadable)} unreadable)", folder)
    shapes = {s[1].shape for s in slices}
    if len(shapes) > 1:
        raise DataError(f"slices of one series have different sizes {sorted(shapes)}", folder)
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    slices.sort(key=lambda s: float(s[0] @ normal))
    dists = np.array([float(s[0] @ normal) for s in slices])
    if len(slices) > 1:
        steps = np.diff(dists)
        if np.any(steps < 1e-3):
            dup = [_slice_name(slices[i + 1]) for i in np.flatnonzero(steps < 1e-3)]
            raise DataError(f"several slices at the same position (e.g. {dup[0]})", folder)
        step = float(np.median(steps))
        gaps = np.flatnonzero(np.abs(steps - step) > 0.1 * step + 0.01)
        if gaps.size:
            g = gaps[0]
            why = f"; unreadable: {', '.join(unreadable)}" if unreadable else ""
            raise DataError(
                f"slice spacing is not uniform: gap between {_slice_name(slices[g])} and {_slice_name(slices[g + 1])} "
                f"({steps[g]:.2f} mm, expected {step:.2f} mm){why}", folder)
        k_vec = (slices[-1][0] - slices[0][0]) / (len(slices) - 1)
    else:
        thickness = float(first.get("SliceThickness", 1) or 1)
        k_vec = normal * thickness
    tilt = np.degrees(np.arccos(np.clip(abs(k_vec @ normal) / np.linalg.norm(k_vec), -1, 1)))
    if tilt > 0.5:
        logger.warning("%s: slices are sheared by %.1f degrees (gantry tilt); the affine keeps the shear", folder, tilt)

    lps = np.eye(4)
    lps[:3, 0] = row_cos * ps[1]  # i runs along a row: column spacing
    lps[:3, 1] = col_cos * ps[0]  # j runs down a column: row spacing
    lps[:3, 2] = k_vec
    lps[:3, 3] = slices[0][0]
    array = _hu_volume(slices)
    meta = {
        "format": "dicom",
        "series_uid": chosen,
        "study_uid": str(first.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "series_description": str(first.get("SeriesDescription", "")),
        "slice_uids": [s[3] for s in slices],
        "slice_files": [str(s[2]) for s in slices],
        "slice_frames": [s[4] for s in slices] if slices[0][4] is not None else None,
        "multiframe": slices[0][4] is not None,
        "skipped_files": unreadable,
        "ignored_non_dicom": [str(p) for p in other],
        "gantry_tilt_deg": float(tilt),
        "shear_deg": float(tilt),
        "patient": {k: str(first.get(k, "")) for k in ("PatientName", "PatientID", "PatientBirthDate",
                                                       "PatientSex", "PatientAge", "StudyDate")},
    }
    vol = Volume(array=array, affine=LPS_TO_RAS @ lps, source=folder, meta=meta)
    return vol.reoriented() if canonical else vol
