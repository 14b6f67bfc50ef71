"""``bonemet data convert``: a CT volume (DICOM series or NIfTI) and its masks to BM-Seg-style slices."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import BonemetError
from ..fileio import atomic_dir, write_csv, write_json
from .bone import BONE, partial_bone_labels
from .export import PATIENTS_CSV_FIELDS, write_bmseg_slices
from .ct import read_volume
from .volume import read_mask_like
from .windows import WINDOW_NAMES

def convert_to_bmseg(input_path: str | Path, out: str | Path, bone_mask: str | Path | None = None,
                     lesion_mask: str | Path | None = None, window: str = "bone", patient: str | None = None,
                     overwrite: bool = False, lesion_free: bool = False, partial_bone: bool = False) -> dict:
    """Write every axial slice of ``input_path`` (windowed) and the given masks in the BM-Seg layout.

    Masks are NIfTI and are put on the image's voxel grid through the two affines, so a mask in RAS
    order lines up with DICOM pixels. ``lesion_free`` writes empty lesion masks for a scan known to
    hold no metastasis (normal slices for training). ``partial_bone`` writes, instead of a bone mask, a partial
    bone label from HU alone (``data.bone.partial_bone_labels``: sure bone, sure no bone, unknown; training
    leaves the unknown pixels out of its bone term). Returns a summary (slices written, mask voxels).
    """
    if window not in WINDOW_NAMES:
        raise ValueError(f"unknown window '{window}'")
    input_path = Path(input_path)
    if lesion_free and lesion_mask:
        raise BonemetError("--lesion-free and --lesion-mask exclude each other")
    if partial_bone and bone_mask:
        raise BonemetError("--partial-bone and --bone-mask exclude each other")
    with atomic_dir(out, overwrite=overwrite, kind="data convert",
                    protect=[input_path, bone_mask, lesion_mask]) as tmp:
        vol = read_volume(input_path)
        bone = read_mask_like(bone_mask, vol) if bone_mask else partial_bone_labels(vol) if partial_bone else None
        lesion = read_mask_like(lesion_mask, vol) if lesion_mask else None
        if lesion_free:
            lesion = np.zeros(vol.shape, bool)  # the user declares the scan free of metastases
        sure = (bone == BONE) if partial_bone else bone  # the bone voxels the summary counts
        pid = patient or re.sub(r"(\.nii(\.gz)?)$", "", input_path.name) or "patient"
        rows = write_bmseg_slices(tmp, pid, vol, lesion, bone, window, bone_partial=partial_bone)
        write_csv(tmp / "patients.csv", rows, PATIENTS_CSV_FIELDS + (["bone"] if partial_bone else []))
        summary = {"source": str(input_path), "patient": pid, "window": window, "slices": len(rows),
                   "shape": list(vol.shape), "spacing_mm": list(vol.spacing),
                   "bone_mask": str(bone_mask) if bone_mask else "partial, from HU" if partial_bone else None,
                   "bone_voxels": int(sure.sum()) if sure is not None else 0,
                   "lesion_mask": str(lesion_mask) if lesion_mask else None,
                   "lesion_voxels": int(lesion.sum()) if lesion is not None else 0,
                   "skipped_files": vol.meta.get("skipped_files", [])}
        write_json(tmp / "conversion.json", summary)
    return summary
