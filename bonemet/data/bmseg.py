"""The BM-Seg slice layout: ``image/``, ``bone mask/``, ``lesion mask/`` with the same file names.

Two arrangements are read: flat (``root/image/...``, patients from an optional ``patients.csv``
with columns ``file,patient``) and grouped by patient (``root/<patient>/image/...``).
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ..errors import DataError
from ..log import logger
from .bone import partial_label_map
from .images import is_image_file, read_image, read_mask
from .layout import Problem, find_child, raise_first_fatal

IMAGE_DIRS = {"image", "img", "ct", "slice"}
BONE_DIRS = {"bone mask", "bone", "bone label", "bonemask"}
LESION_DIRS = {"lesion mask", "lesion", "lesion label", "lesionmask", "mask", "metastasis mask"}


@dataclass(frozen=True)
class SegSlice:
    """One annotated slice: image file, mask files (None when absent), patient id (None when unknown), pixel
    spacing (row, column mm; None when unknown: BM-Seg's PNG slices have none), whether its bone mask is a
    partial label (``data.bone.partial_bone_labels``: 255 bone, 0 no bone, anything between unknown), and the
    slice spacing of its series in mm (column ``slice_mm``; None when unknown)."""

    name: str
    image: Path
    lesion: Path | None
    bone: Path | None
    patient: str | None
    pixel_mm: tuple[float, float] | None = None
    bone_partial: bool = False
    slice_mm: float | None = None  # distance between this slice and the next of its series (None when unknown)


@dataclass
class BMSegIndex:
    """What a scan of a BM-Seg root found."""

    root: Path
    layout: str  # "flat" or "grouped"
    slices: list[SegSlice]
    problems: list[Problem]

    @property
    def patients(self) -> list[str]:
        return sorted({s.patient for s in self.slices if s.patient is not None})

    @property
    def has_patients(self) -> bool:
        return bool(self.slices) and all(s.patient is not None for s in self.slices)


def is_bmseg_root(root: Path) -> bool:
    """Whether ``root`` looks like a BM-Seg layout (flat or grouped)."""
    if find_child(root, IMAGE_DIRS):
        return True
    return root.is_dir() and any(find_child(c, IMAGE_DIRS) for c in root.iterdir() if c.is_dir())


def _index_files(folder: Path | None) -> dict[str, Path]:
    if folder is None:
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if is_image_file(p)}


def _scan_group(folder: Path, patient: str | None, problems: list[Problem],
                no_bone: frozenset[str] = frozenset()) -> list[SegSlice]:
    """The slices of one folder; ``no_bone``: stems that have no bone mask on purpose (``patients.csv``)."""
    img_dir = find_child(folder, IMAGE_DIRS)
    bone_dir, lesion_dir = find_child(folder, BONE_DIRS), find_child(folder, LESION_DIRS)
    if img_dir is None:
        problems.append(Problem(folder, "no image/ folder"))
        return []
    if lesion_dir is None:
        problems.append(Problem(folder, "no 'lesion mask/' folder"))
    if bone_dir is None:
        problems.append(Problem(folder, "no 'bone mask/' folder", fatal=False))
    images, lesions, bones = _index_files(img_dir), _index_files(lesion_dir), _index_files(bone_dir)
    if not images:
        files = sorted(p.name for p in img_dir.iterdir() if p.is_file())
        shown = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
        problems.append(Problem(img_dir, f"no PNG / JPEG slice among its {len(files)} file(s) ({shown})" if files
                                else "empty folder: no image files"))
    slices = []
    for stem, img in images.items():
        if lesion_dir is not None and stem not in lesions:
            problems.append(Problem(img, f"image without lesion mask (looked in '{lesion_dir}')"))
        if bone_dir is not None and stem not in bones and stem not in no_bone:
            problems.append(Problem(img, f"image without bone mask (looked in '{bone_dir}')"))
        slices.append(SegSlice(stem, img, lesions.get(stem), bones.get(stem), patient))
    for kind, files in (("lesion", lesions), ("bone", bones)):
        for stem, path in files.items():
            if stem not in images:
                problems.append(Problem(path, f"{kind} mask without image (ignored)", fatal=False))
    return slices


def _spacing(row: dict, path: Path, problems: list[Problem]) -> tuple[float, float] | None:
    """A row's optional pixel spacing (columns row_mm, col_mm), checked."""
    if not row.get("row_mm") and not row.get("col_mm"):
        return None
    try:
        spacing = float(row["row_mm"]), float(row["col_mm"])
    except (KeyError, TypeError, ValueError):
        spacing = (0.0, 0.0)
    if not all(0 < v < 100 for v in spacing):
        problems.append(Problem(path, f"row {row.get('file')}: row_mm,col_mm must be pixel sizes in mm, got "
                                      f"'{row.get('row_mm')}','{row.get('col_mm')}'"))
        return None
    return spacing


def _slice_mm(row: dict, path: Path, problems: list[Problem]) -> float | None:
    """A row's optional slice spacing (column slice_mm), checked."""
    if not row.get("slice_mm"):
        return None
    try:
        value = float(row["slice_mm"])
    except (TypeError, ValueError):
        value = 0.0
    if not 0 < value < 100:
        problems.append(Problem(path, f"row {row.get('file')}: slice_mm must be a slice spacing in mm, got "
                                      f"'{row.get('slice_mm')}'"))
        return None
    return value


def _read_patients_csv(path: Path, problems: list[Problem]) -> dict[str, tuple[str, tuple[float, float] | None,
                                                                         str, float | None]]:
    """File stem -> (patient, pixel spacing or None, what its bone mask is: an optional column ``bone`` that says
    ``none`` for slices nobody outlined the bones of, such as real negatives (no bone mask on purpose), and
    ``partial`` for a partial bone label; empty for a bone mask; slice spacing or None)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(Problem(path, f"unreadable patients.csv ({exc})"))
        return {}
    if not rows or not {"file", "patient"} <= set(rows[0]):
        problems.append(Problem(path, "patients.csv needs the columns 'file,patient'"))
        return {}
    return {Path(r["file"]).stem: (r["patient"].strip(), _spacing(r, path, problems),
                                   (r.get("bone") or "").strip().lower(), _slice_mm(r, path, problems))
            for r in rows if r.get("file") and r.get("patient")}


def scan_bmseg(root: str | Path) -> BMSegIndex:
    """List the slices of a BM-Seg root and every problem seen without decoding images."""
    root = Path(root)
    problems: list[Problem] = []
    if not root.is_dir():
        raise DataError("not a folder", root)
    if not any(root.iterdir()):
        return BMSegIndex(root, "flat", [], [Problem(root, "empty folder")])
    if find_child(root, IMAGE_DIRS):
        layout = "flat"
        csv_path = next((p for p in root.iterdir() if p.name.lower() == "patients.csv"), None)
        mapping = _read_patients_csv(csv_path, problems) if csv_path is not None else {}
        slices = _scan_group(root, None, problems, frozenset(k for k, v in mapping.items() if v[2] == "none"))
        if csv_path is not None:
            missing = [s for s in slices if s.name not in mapping]
            for s in missing[:20]:
                problems.append(Problem(s.image, "not listed in patients.csv", fatal=False))
            listed = {s.name: mapping.get(s.name, (None, None, "", None)) for s in slices}
            slices = [SegSlice(s.name, s.image, s.lesion, s.bone, *listed[s.name][:2],
                               bone_partial=s.bone is not None and listed[s.name][2] == "partial",
                               slice_mm=listed[s.name][3]) for s in slices]
    else:
        layout = "grouped"
        slices = []
        groups = [c for c in sorted(root.iterdir()) if c.is_dir() and not c.name.startswith(".")]
        for group in groups:
            if find_child(group, IMAGE_DIRS) is None:
                problems.append(Problem(group, "patient folder without image/ folder (ignored)", fatal=False))
                continue
            slices.extend(_scan_group(group, group.name, problems))
        if not slices and not problems:
            problems.append(Problem(root, "no image/ folder, flat or per patient"))
    if slices and not all(s.patient for s in slices):
        problems.append(Problem(root, "no patient information for some slices (add patients.csv with 'file,patient' "
                                      "or one folder per patient): patient-level splits are impossible", fatal=False))
    return BMSegIndex(root, layout, slices, problems)


def check_slice_files(s: SegSlice, threshold: int = 0) -> tuple[list[Problem], bool]:
    """Decode a slice's image and masks once; report unreadable files, size mismatches and empty images.

    Also returns whether the lesion mask has a pixel above ``threshold`` (for the lesion-slice count).
    """
    problems: list[Problem] = []
    sizes: dict[Path, tuple[int, int]] = {}
    has_lesion = False
    for path in (s.image, s.lesion, s.bone):
        if path is None:
            continue
        try:
            arr = read_image(path)
        except DataError as exc:
            problems.append(Problem(path, exc.reason))
            continue
        sizes[path] = arr.shape[:2]
        if path == s.lesion:
            has_lesion = bool((arr > threshold).any())
        if path == s.image and arr.max() == arr.min():
            problems.append(Problem(path, "image is uniform (no content)", fatal=False))
    if s.image in sizes:
        for path, size in sizes.items():
            if size != sizes[s.image]:
                problems.append(Problem(path, f"size {size[1]}x{size[0]} does not match its image "
                                              f"{sizes[s.image][1]}x{sizes[s.image][0]}"))
    return problems, has_lesion


def load_bmseg(root: str | Path, require_patients: bool = False) -> BMSegIndex:
    """Scan a BM-Seg root for training or evaluation: fails on the first fatal problem."""
    index = scan_bmseg(root)
    raise_first_fatal(index.problems)
    if not index.has_patients:
        msg = (f"{index.root}: no patient information: slices cannot be grouped by patient, so patient-level "
               "splits are impossible")
        if require_patients:
            raise DataError(msg + " (add patients.csv with 'file,patient', or use --protocol paper)")
        logger.warning(msg)
    return index


def load_seg_slice(s: SegSlice, threshold: int = 0, unknown_bone: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str | None]:
    """Image (uint8, (H, W) or (H, W, 3)), lesion mask, bone mask (bool or None) and patient of a slice.

    A partial bone label gives its sure bone as the bone mask, or with ``unknown_bone`` a float32 map: 1 bone,
    0 no bone, ``unknown_bone`` where it is not known."""
    image = read_image(s.image)
    shape = image.shape[:2]
    lesion = read_mask(s.lesion, threshold) if s.lesion else np.zeros(shape, bool)
    if s.bone is None:
        bone = None
    elif s.bone_partial:
        bone = partial_label_map(read_image(s.bone), unknown_bone)
    else:
        bone = read_mask(s.bone, threshold)
    for path, m in ((s.lesion, lesion), (s.bone, bone)):
        if m is not None and m.shape != shape:
            raise DataError(f"mask size {m.shape[::-1]} does not match image size {shape[::-1]}", path)
    return image, lesion, bone, s.patient


def merge_bmseg(sources: list[tuple[Path, str, str | None]], out: Path, description: dict) -> Path:
    """One flat BM-Seg root ``out`` from several flat roots written by bonemet (each with ``patients.csv``):
    ``sources`` are (root, prefix, patient) triples; each file is renamed ``PREFIX_FILE`` and keeps its patient, or
    takes ``patient`` when one is given (copies of one real scan with different inserted lesions are one patient,
    so that they land in one fold). ``description`` is written as ``out/conversion.json`` (the window and what was
    merged), which training reads as the images' preprocessing. A slice whose source has no bone mask is listed
    with ``bone`` = ``none``: no bone mask on purpose (training leaves it out of the bone term); a partial bone
    label stays ``partial``."""
    from ..fileio import write_csv, write_json

    rows = []
    for d in ("image", "lesion mask", "bone mask"):
        (out / d).mkdir(parents=True, exist_ok=True)
    for root, prefix, patient in sources:
        with open(root / "patients.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                name = f"{prefix}_{r['file']}"
                has_bone = (root / "bone mask" / r["file"]).exists()  # a real negative may have none
                for d in ("image", "lesion mask", "bone mask") if has_bone else ("image", "lesion mask"):
                    shutil.copyfile(root / d / r["file"], out / d / name)
                partial = (r.get("bone") or "").strip().lower() == "partial"
                rows.append({"file": name, "patient": patient or r["patient"], "slice": r.get("slice", ""),
                             "row_mm": r.get("row_mm", ""), "col_mm": r.get("col_mm", ""),
                             "slice_mm": r.get("slice_mm", ""),
                             "bone": "none" if not has_bone else "partial" if partial else ""})
    write_csv(out / "patients.csv", rows, ["file", "patient", "slice", "row_mm", "col_mm", "slice_mm", "bone"])
    write_json(out / "conversion.json", description)
    return out


__all__ = ["SegSlice", "BMSegIndex", "scan_bmseg", "load_bmseg", "load_seg_slice", "check_slice_files",
           "is_bmseg_root", "merge_bmseg"]

