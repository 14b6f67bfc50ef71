"""``bonemet data check``: find what would break training, one line per problem, naming the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .bmseg import check_slice_files, is_bmseg_root, scan_bmseg
from .classification import is_classification_root, scan_classification
from .images import read_image
from .layout import Problem
from .ct import read_volume
from .volume import read_nifti


@dataclass
class CheckReport:
    """Problems and counts of one data root (or of each layout inside a phantom root)."""

    root: Path
    layout: str
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def fatal(self) -> bool:
        return any(p.fatal for p in self.problems)


def check_bmseg(root: Path, threshold: int = 0) -> CheckReport:
    index = scan_bmseg(root)
    rep = CheckReport(root, f"BM-Seg ({index.layout})", list(index.problems))
    lesion_slices = 0
    for s in index.slices:
        probs, has_lesion = check_slice_files(s, threshold)
        rep.problems += probs
        lesion_slices += has_lesion
    rep.counts = {"patients": len(index.patients), "slices": len(index.slices), "lesion slices": lesion_slices}
    return rep


def check_classification(root: Path) -> CheckReport:
    index = scan_classification(root)
    rep = CheckReport(root, "classification", list(index.problems))
    for s in index.slices:
        try:
            read_image(s.path)
        except DataError as exc:
            rep.problems.append(Problem(s.path, exc.reason))
    pats = index.patients
    rep.counts = {"patients": len(pats), "metastatic patients": sum(pats.values()), "slices": len(index.slices),
                  "metastatic slices": sum(s.label for s in index.slices)}
    return rep


def check_volumes(root: Path) -> CheckReport:
    """A ``volumes/<patient>/{ct,bone_mask,lesion_mask}.nii.gz`` folder (the phantom's layout; the bone mask is
    optional)."""
    rep = CheckReport(root, "volumes")
    patients = [d for d in sorted(root.iterdir()) if d.is_dir()]
    if not patients:
        rep.problems.append(Problem(root, "empty folder: no patient folders"))
    n_les = 0
    for d in patients:
        ct_path = d / "ct.nii.gz"
        try:
            ct = read_nifti(ct_path)
        except DataError as exc:
            rep.problems.append(Problem(ct_path, exc.reason))
            continue
        for name in ("bone_mask.nii.gz", "lesion_mask.nii.gz"):
            if name.startswith("bone") and not (d / name).exists():  # lesions inserted into real CT without one
                rep.problems.append(Problem(d / name, "no bone mask: no bone statistics for it", fatal=False))
                continue
            try:
                m = read_nifti(d / name, dtype=np.uint8)
            except DataError as exc:
                rep.problems.append(Problem(d / name, exc.reason))
                continue
            if m.shape != ct.shape or not np.allclose(m.affine, ct.affine, atol=1e-3):
                rep.problems.append(Problem(d / name, f"grid {m.shape} does not match the CT's {ct.shape}"))
            elif name.startswith("lesion"):
                n_les += int(m.array.any())
    rep.counts = {"patients": len(patients), "patients with lesions": n_les}
    return rep


def check_dicom(root: Path) -> CheckReport:
    """A folder of DICOM series, one per patient sub-folder, or one series."""
    rep = CheckReport(root, "DICOM")
    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir()]
    series_dirs = subdirs or [root]
    n = 0
    for d in series_dirs:
        try:
            vol = read_volume(d)
            n += vol.n_slices
            for msg in vol.meta.get("skipped_files", []):
                rep.problems.append(Problem(d, f"unreadable slice {msg}", fatal=False))
        except DataError as exc:
            rep.problems.append(Problem(d, exc.reason))
    rep.counts = {"series": len(series_dirs), "slices": n}
    return rep


def check_ct_file(path: Path) -> CheckReport:
    """One NIfTI CT, as ``predict`` and ``data convert`` would read it (header, voxels, HU)."""
    rep = CheckReport(path, "NIfTI CT")
    try:
        vol = read_volume(path)
    except DataError as exc:
        rep.problems.append(Problem(path, exc.reason))
        return rep
    rep.counts = {"slices": vol.n_slices}
    return rep


def _is_dicom_root(root: Path) -> bool:
    for f in list(root.rglob("*"))[:50]:
        if f.is_file():
            with open(f, "rb") as fh:
                head = fh.read(132)
            if head[128:132] == b"DICM":
                return True
    return False


def check_root(root: str | Path, threshold: int = 0) -> list[CheckReport]:
    """Check a data root: BM-Seg, classification, volumes or DICOM, or a phantom root holding several; or one
    NIfTI CT."""
    root = Path(root)
    if not root.exists():
        raise DataError("not found", root)
    if root.is_file() and root.name.endswith((".nii", ".nii.gz")):
        return [check_ct_file(root)]
    if not root.is_dir():
        raise DataError("expected a folder (BM-Seg, classification, volumes or DICOM layout) or a NIfTI CT", root)
    if not any(root.iterdir()):
        return [CheckReport(root, "unknown", [Problem(root, "empty folder")])]
    subs = {"bmseg": lambda r: check_bmseg(r, threshold), "classification": check_classification,
            "volumes": check_volumes,
            "dicom": check_dicom}
    found = [fn(root / name) for name, fn in subs.items() if (root / name).is_dir()]
    if found:
        return found
    if is_classification_root(root):
        return [check_classification(root)]
    if is_bmseg_root(root):
        return [check_bmseg(root, threshold)]
    if _is_dicom_root(root):
        return [check_dicom(root)]
    if any((d / "ct.nii.gz").exists() for d in root.iterdir() if d.is_dir()):
        return [check_volumes(root)]
    return [CheckReport(root, "unknown", [Problem(root, "no known layout: expected image/ + 'lesion mask/' "
                                                        "(BM-Seg), Normal/ + Abnormal/ (classification), "
                                                        "DICOM files or volumes/<patient>/ct.nii.gz")])]
