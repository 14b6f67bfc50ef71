"""DICOM Segmentation objects (highdicom) for PACS and 3D Slicer, referencing the source CT series.

Each source slice's frame is sampled from the predicted (canonical) mask through the geometry of that
very file (its ImagePositionPatient, ImageOrientationPatient and PixelSpacing) and the volume's affine.
Frames therefore sit on the source pixels whatever the series' direction cosines (negated axes,
permuted axes); a gantry-tilted series is refused, because a SEG frame of a sheared stack is easy to
mis-place and several tools have shipped mirrored objects for such series.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom

from .. import __version__
from ..data.dicom import LPS_TO_RAS, functional
from ..data.volume import Volume
from ..errors import BonemetError, first_line
from ..fileio import atomic_path

TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
                "AccessionNumber", "ReferringPhysicianName")


def frames_for_sources(mask: np.ndarray, volume: Volume, sources: list) -> np.ndarray:
    """``mask`` (canonical (i, j, k)) resampled on each source file's pixel grid: (frames, rows, cols)."""
    return np.stack([frame_for_source(mask, volume, ds) for ds in sources])


def frame_for_source(mask: np.ndarray, volume: Volume, ds) -> np.ndarray:
    """``mask`` (canonical (i, j, k)) sampled on the pixel grid of one source frame (its position, orientation and
    pixel spacing) through the volume's affine: (rows, cols) bool."""
    return frame_sampler(volume, ds)(mask)


def frame_sampler(volume: Volume, ds) -> Callable[[np.ndarray], np.ndarray]:
    """A function that samples a canonical (i, j, k) mask on one source frame's pixel grid, nearest voxel, False
    outside the volume. The voxel index is linear in the frame's row and column; an index that moves with only one
    of them (every axis-aligned series) is kept as a row or a column vector, so that a frame of a usual series costs
    one gather instead of a coordinate for each pixel."""
    to_index = np.linalg.inv(volume.affine)
    rows, cols = int(ds.Rows), int(ds.Columns)
    iop = np.asarray(ds.ImageOrientationPatient, float)
    ps = [float(v) for v in ds.PixelSpacing]
    m = to_index[:3, :3] @ LPS_TO_RAS[:3, :3]  # LPS mm -> voxel index
    base = m @ np.asarray(ds.ImagePositionPatient, float) + to_index[:3, 3]
    per_col, per_row = m @ iop[:3] * ps[1], m @ iop[3:] * ps[0]
    r, c = np.arange(rows, dtype=float)[:, None], np.arange(cols, dtype=float)[None, :]
    index, inside = [], np.ones((1, 1), bool)
    for a in range(3):
        moves_r, moves_c = abs(per_row[a]) * rows > 1e-3, abs(per_col[a]) * cols > 1e-3
        x = base[a] + (per_row[a] * r if moves_r else 0.0) + (per_col[a] * c if moves_c else 0.0)
        x = np.rint(np.broadcast_to(x, (rows if moves_r else 1, cols if moves_c else 1))).astype(np.intp)
        inside = inside & (x >= 0) & (x < volume.shape[a])
        index.append(np.clip(x, 0, volume.shape[a] - 1))

    def sample(mask: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.asarray(mask[index[0], index[1], index[2]], bool) & inside, (rows, cols))

    return sample


def frame_geometry(ds: pydicom.Dataset) -> list[SimpleNamespace]:
    """The pixel grid of each frame of an enhanced (multi-frame) file, shaped like a single-frame header."""
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    return [SimpleNamespace(Rows=ds.Rows, Columns=ds.Columns,
                            ImagePositionPatient=functional(ds, g, "PlanePositionSequence", "ImagePositionPatient"),
                            ImageOrientationPatient=functional(ds, g, "PlaneOrientationSequence",
                                                                "ImageOrientationPatient"),
                            PixelSpacing=functional(ds, g, "PixelMeasuresSequence", "PixelSpacing"))
            for g in per]


def write_dicom_seg(path: str | Path, volume: Volume, lesion: np.ndarray, bone: np.ndarray | None,
                    model_name: str) -> Path:
    """Write a binary DICOM-SEG with a lesion segment (and a bone segment) for the series ``volume`` came from."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    files = volume.meta.get("slice_files")
    if volume.meta.get("format") != "dicom" or not files:
        raise BonemetError("DICOM-SEG needs a DICOM series input", volume.source)
    if volume.meta.get("gantry_tilt_deg", 0.0) > 0.5:
        raise BonemetError(f"gantry-tilted series ({volume.meta['gantry_tilt_deg']:.1f} degrees): no DICOM-SEG written "
                           "(the NIfTI masks are still aligned)", volume.source)
    if volume.meta.get("multiframe"):
        if len(set(files)) > 1:
            raise BonemetError("an enhanced (multi-frame) series stored in several files: no DICOM-SEG written (the "
                               "NIfTI masks are aligned)", volume.source)
        sources = [pydicom.dcmread(files[0], stop_before_pixels=True)]
        grids = frame_geometry(sources[0])  # one SEG frame per source frame, in the source's frame order
    else:
        sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]  # the SEG needs headers only
        grids = sources
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID") if not sources[0].get(k)]
    if missing:
        raise BonemetError(f"the source series has no {' / '.join(missing)} (anonymised?): a SEG could not be "
                           "matched to it by any viewer, so none is written (the NIfTI masks are aligned)",
                           Path(files[0]).parent)
    for ds in sources:
        # some scanners leave SOPClassUID / SOPInstanceUID empty in the data set and fill only the file meta
        meta = getattr(ds, "file_meta", None)
        if not ds.get("SOPClassUID") and meta is not None and meta.get("MediaStorageSOPClassUID"):
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
        if not ds.get("SOPInstanceUID") and meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        for key in TYPE2_COPIED:  # type-2 attributes the SEG copies from its source: present, possibly empty
            if key not in ds:
                setattr(ds, key, "")
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # empty, which the standard does not allow: the default repertoire
        if str(ds.get("PatientSex", "")) not in ("M", "F", "O", ""):
            ds.PatientSex = ""  # a value outside the standard's three would stop the SEG; unknown is allowed
    algo = hd.AlgorithmIdentificationSequence(name="bonemet", version=__version__,
                                              family=codes.cid7162.ArtificialIntelligence)
    segments = [("bone metastasis", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Metastasis, lesion)]
    if bone is not None:
        segments.append(("bone", codes.SCT.Tissue, codes.SCT.Bone, bone))
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=label, segmented_property_category=cat, segmented_property_type=typ,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo)
        for i, (label, cat, typ, _) in enumerate(segments)]
    pixels = np.zeros((len(grids), int(grids[0].Rows), int(grids[0].Columns), len(segments)), np.uint8)
    for f, grid in enumerate(grids):  # frame by frame: no per-segment stacks beside the one array highdicom takes
        sample = frame_sampler(volume, grid)
        for s, (*_, m) in enumerate(segments):
            pixels[f, :, :, s] = sample(m)
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=900,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="bonemet",
            manufacturer_model_name=model_name[:64], software_versions=__version__, device_serial_number="none",
            series_description="bonemet segmentation",
            omit_empty_frames=bool(pixels.any()))  # highdicom refuses a SEG with no frame at all
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # source headers the standard does not allow
        raise BonemetError(f"the source headers do not make a valid DICOM-SEG ({first_line(exc)}); the NIfTI "
                           "masks are aligned", Path(files[0]).parent) from None
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)
