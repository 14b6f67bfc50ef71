"""The classification layout of the thesis (chapter 5)::

    root/Normal/<patient>/<slices>                  every slice normal
    root/Abnormal/<patient>/normal/<slices>         slices without lesion
    root/Abnormal/<patient>/metastatic/<slices>     slices with lesion

Folder names match case-insensitively, with common synonyms (Healthy, Metastasis, ...).
Label 1 = metastatic slice.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .images import is_image_file
from .layout import Problem, find_child, raise_first_fatal

NORMAL_CLASS = {"normal", "healthy", "negative", "control", "benign"}
ABNORMAL_CLASS = {"abnormal", "metastatic", "metastasi", "metastase", "positive", "bm", "bone metastasi"}
NORMAL_SLICES = NORMAL_CLASS | {"non metastatic", "no lesion", "lesion free"}
METASTATIC_SLICES = {"metastatic", "metastasi", "metastase", "abnormal", "lesion", "positive", "infected"}


@dataclass(frozen=True)
class ClsSlice:
    """One slice of the classification layout."""

    path: Path
    label: int  # 1 = metastatic slice
    patient: str
    patient_label: int  # 1 = metastatic patient


@dataclass
class ClsIndex:
    root: Path
    slices: list[ClsSlice]
    problems: list[Problem]

    @property
    def patients(self) -> dict[str, int]:
        """Patient id -> patient label."""
        return {s.patient: s.patient_label for s in self.slices}


def is_classification_root(root: Path) -> bool:
    return find_child(root, NORMAL_CLASS) is not None or find_child(root, ABNORMAL_CLASS) is not None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def scan_classification(root: str | Path) -> ClsIndex:
    """List the slices and the problems of a classification root without decoding images."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("not a folder", root)
    problems: list[Problem] = []
    slices: list[ClsSlice] = []
    normal_dir, abnormal_dir = find_child(root, NORMAL_CLASS), find_child(root, ABNORMAL_CLASS)
    if normal_dir is None and abnormal_dir is None:
        what = "empty folder" if not any(root.iterdir()) else "no Normal/ or Abnormal/ folder"
        return ClsIndex(root, [], [Problem(root, what)])
    for cls_dir, patient_label in ((normal_dir, 0), (abnormal_dir, 1)):
        if cls_dir is None:
            name = "Normal" if patient_label == 0 else "Abnormal"
            problems.append(Problem(root, f"no {name}/ folder: only one class of patients", fatal=False))
            continue
        patients = [p for p in sorted(cls_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        loose = [p for p in cls_dir.iterdir() if is_image_file(p)]
        if loose:
            problems.append(Problem(loose[0], f"{len(loose)} slice(s) outside a patient folder: no patient "
                                              "information, patient-level splits impossible (ignored)", fatal=False))
        if not patients:
            problems.append(Problem(cls_dir, "empty folder: no patient folders"))
        for pdir in patients:
            if patient_label == 0:
                files = _images(pdir)
                slices += [ClsSlice(f, 0, pdir.name, 0) for f in files]
            else:
                norm_sub, met_sub = find_child(pdir, NORMAL_SLICES), find_child(pdir, METASTATIC_SLICES)
                if met_sub is None and norm_sub is None:
                    problems.append(Problem(pdir, "abnormal patient without normal/ or metastatic/ sub-folder"))
                    continue
                files = []
                for sub, label in ((norm_sub, 0), (met_sub, 1)):
                    if sub is not None:
                        sub_files = _images(sub)
                        files += sub_files
                        slices += [ClsSlice(f, label, pdir.name, 1) for f in sub_files]
                stray = [p for p in pdir.iterdir() if is_image_file(p)]
                if stray:
                    problems.append(Problem(stray[0], f"{len(stray)} slice(s) with no normal/metastatic label "
                                                      "(ignored)", fatal=False))
            if not files:
                problems.append(Problem(pdir, "empty patient folder: no image files"))
    seen: dict[str, int] = {}
    for s in slices:
        if seen.setdefault(s.patient, s.patient_label) != s.patient_label:
            problems.append(Problem(s.path, f"patient '{s.patient}' appears under both Normal and Abnormal"))
            break
    return ClsIndex(root, slices, problems)


def slice_sort_key(path: Path) -> list:
    """Natural order of slice file names (``s9`` before ``s10``): the order of the slices in the body."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def neighbour_indices(i: int, n: int, context: int) -> list[int]:
    """Indices ``i - context .. i + context`` of a run of ``n`` slices, the edge slice repeated past either end."""
    return [min(max(i + d, 0), n - 1) for d in range(-context, context + 1)]


def context_paths(slices: Sequence[ClsSlice], context: int) -> list[list[Path]]:
    """For each slice, the files of its ``2 * context + 1`` neighbourhood, centre slice in the middle.

    A patient's slices (under normal/ and metastatic/ alike) are put in file-name order (``slice_sort_key``);
    at the first and last slice the edge slice is repeated. Only ``slices`` are searched, so pass every
    slice of each patient (a dataset of whole patients does).
    """
    if context == 0:
        return [[s.path] for s in slices]
    by_patient: dict[str, list[Path]] = defaultdict(list)
    for s in slices:
        by_patient[s.patient].append(s.path)
    order = {p: sorted(paths, key=slice_sort_key) for p, paths in by_patient.items()}
    where = {path: i for paths in order.values() for i, path in enumerate(paths)}
    out = []
    for s in slices:
        paths, i = order[s.patient], where[s.path]
        out.append([paths[j] for j in neighbour_indices(i, len(paths), context)])
    return out


def lesion_mask_paths(slices: Sequence[ClsSlice], masks_root: str | Path, check_labels: bool = False) -> list[Path]:
    """Each slice's lesion mask in a BM-Seg root (``lesion mask/<same file stem>``), for training with masks.

    The phantom writes both layouts with the same file names (``bonemet data synth --formats
    classification,bmseg``, or the same seed twice); a slice without a mask there is an error naming it.
    ``check_labels`` decodes every mask and fails on the first one that contradicts its slice's label
    (a mask root of other patients with the same file names).
    """
    from .bmseg import load_bmseg
    from .images import read_mask

    masks = {s.name: s.lesion for s in load_bmseg(masks_root).slices}
    out = []
    for s in slices:
        mask = masks.get(s.path.stem)
        if mask is None:
            raise DataError(f"no lesion mask named '{s.path.stem}' in {masks_root}", s.path)
        if check_labels and bool(read_mask(mask).any()) != bool(s.label):
            what = "metastatic" if s.label else "normal"
            raise DataError(f"this mask contradicts its slice's label ({what}): another data set with the same file "
                            "names?", mask)
        out.append(mask)
    return out


def load_classification(root: str | Path) -> ClsIndex:
    """Scan a classification root for training or evaluation: fails on the first fatal problem."""
    index = scan_classification(root)
    raise_first_fatal(index.problems)
    if not index.slices:
        raise DataError("no slices found", index.root)
    return index
