"""Writers shared by the phantom and ``bonemet data convert``: DICOM series, BM-Seg and classification slices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ..fileio import atomic_path
from .images import write_image
from .dicom import LPS_TO_RAS
from .volume import Volume
from .windows import apply_window, to_uint8



def slice_name(patient: str, k: int) -> str:
    """File stem of slice ``k`` of ``patient`` in exported slice folders."""
    return f"{patient}_s{k:04d}"


def windowed_slice(vol: Volume, k: int, window: str) -> np.ndarray:
    """Axial slice ``k`` windowed to uint8: (H, W) grey, or (H, W, 3) for the multi window."""
    return to_uint8(apply_window(vol.axial(k), window))


PATIENTS_CSV_FIELDS = ["file", "patient", "slice", "row_mm", "col_mm", "slice_mm"]


def write_bmseg_slices(root: Path, patient: str, vol: Volume, lesion: np.ndarray | None, bone: np.ndarray | None,
                       window: str = "bone", slices: Sequence[int] | None = None, ext: str = "png",
                       bone_partial: bool = False) -> list[dict]:
    """Write a volume's axial slices in the BM-Seg layout under ``root``; return ``patients.csv`` rows (columns
    ``PATIENTS_CSV_FIELDS``: with each slice's pixel spacing, which physical scale needs, and the slice spacing,
    which neighbouring slices as context need). ``bone_partial``:
    ``bone`` is a partial label (``data.bone.partial_bone_labels``), written as it is, and each row has the
    column ``bone`` = ``partial``."""
    rows = []
    row_mm, col_mm = (f"{vol.spacing[1]:.4f}", f"{vol.spacing[0]:.4f}")  # axial(k) rows run along j, columns along i
    ks = range(vol.n_slices) if slices is None else slices
    for k in ks:
        name = f"{slice_name(patient, k)}.{ext}"
        write_image(root / "image" / name, windowed_slice(vol, k, window))
        if lesion is not None:
            write_image(root / "lesion mask" / name, lesion[:, :, k].T > 0)
        if bone is not None:
            write_image(root / "bone mask" / name, bone[:, :, k].T if bone_partial else bone[:, :, k].T > 0)
        rows.append({"file": name, "patient": patient, "slice": k, "row_mm": row_mm, "col_mm": col_mm,
                     "slice_mm": f"{vol.spacing[2]:.4f}",
                     **({"bone": "partial"} if bone is not None and bone_partial else {})})
    return rows


def write_classification_slices(root: Path, patient: str, vol: Volume, lesion: np.ndarray | None,
                                window: str = "bone", ext: str = "png") -> int:
    """Write a volume's slices in the thesis' classification layout; returns the number written.

    A patient with any lesion voxel goes to ``Abnormal/<patient>/{normal,metastatic}``, else to
    ``Normal/<patient>``.
    """
    metastatic = lesion is not None and bool((lesion > 0).any())
    for k in range(vol.n_slices):
        if metastatic:
            sub = "metastatic" if (lesion[:, :, k] > 0).any() else "normal"
            folder = root / "Abnormal" / patient / sub
        else:
            folder = root / "Normal" / patient
        write_image(folder / f"{slice_name(patient, k)}.{ext}", windowed_slice(vol, k, window))
    return vol.n_slices


def write_dicom_series(vol: Volume, folder: Path, patient_id: str, patient_meta: dict | None = None,
                       uid_seed: str | None = None, description: str = "bonemet phantom") -> list[Path]:
    """Write an HU volume as a single-frame CT series (one file per slice, named by SOP Instance UID).

    Pixels are stored unsigned with RescaleIntercept -1024, as scanners do, so readers must apply
    slope and intercept. ``uid_seed`` makes the UIDs, and so the files, reproducible.
    """
    meta = patient_meta or {}
    seed = uid_seed or patient_id

    def uid(tag: str) -> str:
        return generate_uid(entropy_srcs=[seed, tag])

    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame")
    lps = LPS_TO_RAS @ vol.affine  # the same flip both ways
    sp = vol.spacing
    row_cos, col_cos = lps[:3, 0] / sp[0], lps[:3, 1] / sp[1]
    stored = np.clip(np.rint(vol.array) + 1024, 0, 65535).astype(np.uint16)
    date = meta.get("study_date", "20250101")
    paths = []
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(vol.n_slices):
        sop_uid = uid(f"slice{k}")
        fm = FileMetaDataset()
        fm.MediaStorageSOPClassUID = CTImageStorage
        fm.MediaStorageSOPInstanceUID = sop_uid
        fm.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=fm, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.Modality = "CT"
        ds.PatientName = f"Phantom^{patient_id}"
        ds.PatientID = patient_id
        ds.PatientSex = meta.get("sex", "O")
        if "age" in meta:
            ds.PatientAge = f"{int(meta['age']):03d}Y"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate = ds.SeriesDate = date
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, vol.n_slices - k
        ds.SeriesDescription = description
        ds.Manufacturer = "bonemet"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.ImageOrientationPatient = [float(v) for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [float(v) for v in (lps @ np.array([0, 0, k, 1.0]))[:3]]
        ds.PixelSpacing = [float(sp[1]), float(sp[0])]
        ds.SliceThickness = float(sp[2])
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 400, 1800
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = folder / f"CT.{sop_uid}.dcm"
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths

