"""``bonemet data stats``: data-set tables like the thesis' Table 3.2, and HU statistics of volumes.

The HU table puts the phantom's healthy bone beside real CT (``--reference``), so that the
phantom's realism is a measured number, not a claim.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..markdown import markdown_table
from .bmseg import is_bmseg_root, load_seg_slice, scan_bmseg
from .classification import is_classification_root, scan_classification
from .ct import read_volume
from .volume import read_mask_like, read_nifti


def hu_stats(hu: np.ndarray, bone: np.ndarray, exclude: np.ndarray | None = None) -> dict:
    """HU percentiles inside the bone mask (minus ``exclude``, e.g. lesions) and outside it."""
    inside = bone & (~exclude if exclude is not None else True)
    b, o = hu[inside], hu[~bone]
    p = np.percentile(b, [5, 25, 50, 75, 90]) if b.size else [np.nan] * 5
    return {"bone voxels": int(b.size), "bone p5": float(p[0]), "bone p25": float(p[1]), "bone median": float(p[2]),
            "bone p75": float(p[3]), "bone p90": float(p[4]),
            "bone >100 HU": float((b > 100).mean()) if b.size else float("nan"),
            "outside median": float(np.median(o)) if o.size else float("nan")}


def volume_stats(root: Path) -> list[dict]:
    """Per patient of a ``volumes/`` folder: HU statistics of healthy bone (lesions excluded)."""
    rows = []
    status = _patient_status(root.parent / "patients.csv")
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        ct = read_nifti(d / "ct.nii.gz")
        bone = (read_nifti(d / "bone_mask.nii.gz", dtype=np.uint8).array > 0 if (d / "bone_mask.nii.gz").exists()
                else np.zeros(ct.shape, bool))  # no bone mask: no bone statistics
        lesion = read_nifti(d / "lesion_mask.nii.gz", dtype=np.uint8).array > 0 if (d / "lesion_mask.nii.gz").exists() else None
        rows.append({"data": d.name, "status": status.get(d.name, ""), **hu_stats(ct.array, bone, lesion),
                     "lesion voxels": int(lesion.sum()) if lesion is not None else 0})
    return rows


def reference_stats(ct_path: Path, bone_path: Path) -> dict:
    ct = read_volume(ct_path)
    bone = read_mask_like(bone_path, ct)
    return {"data": f"{ct_path.name} (reference)", "status": "real CT", **hu_stats(ct.array, bone), "lesion voxels": 0}


def _patient_status(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        return {r["patient"]: r.get("status", "") for r in csv.DictReader(fh)}


def bmseg_stats(root: Path, threshold: int = 0) -> tuple[list[dict], list[dict]]:
    """Per-patient rows (slices, lesion slices, lesion pixel fraction, lesion sizes) and per-site rows."""
    index = scan_bmseg(root)
    per: dict[str, dict] = {}
    for s in index.slices:
        _, lesion, bone, patient = load_seg_slice(s, threshold)
        r = per.setdefault(patient or "(unknown)", {"slices": 0, "lesion slices": 0, "lesion px": 0, "px": 0,
                                                    "bone px": 0, "areas": []})
        r["slices"] += 1
        r["px"] += lesion.size
        r["lesion px"] += int(lesion.sum())
        r["bone px"] += int(bone.sum()) if bone is not None else 0
        if lesion.any():
            r["lesion slices"] += 1
            lab, n = ndimage.label(lesion)
            r["areas"] += np.bincount(lab.ravel())[1:].tolist()
    rows = []
    for pid, r in sorted(per.items()):
        areas = np.asarray(r["areas"] or [0])
        rows.append({"patient": pid, "slices": r["slices"], "lesion slices": r["lesion slices"],
                     "lesion pixel fraction": r["lesion px"] / max(1, r["px"]),
                     "lesion / bone pixels": r["lesion px"] / max(1, r["bone px"]),
                     "2D lesions": len(r["areas"]), "median lesion area px": float(np.median(areas)),
                     "max lesion area px": int(areas.max())})
    total = {"patient": "all", **{k: sum(r[k] for r in rows) for k in ("slices", "lesion slices", "2D lesions")}}
    total["lesion pixel fraction"] = sum(p["lesion px"] for p in per.values()) / max(1, sum(p["px"] for p in per.values()))
    total["lesion / bone pixels"] = sum(p["lesion px"] for p in per.values()) / max(1, sum(p["bone px"] for p in per.values()))
    all_areas = np.asarray(sum((p["areas"] for p in per.values()), []) or [0])
    total["median lesion area px"], total["max lesion area px"] = float(np.median(all_areas)), int(all_areas.max())
    rows.append(total)
    sites = []
    lesions_csv = root.parent / "lesions.csv"
    if lesions_csv.exists():
        with open(lesions_csv, newline="") as fh:
            lrows = list(csv.DictReader(fh))
        for site in sorted({r["site"] for r in lrows}):
            sel = [r for r in lrows if r["site"] == site]
            sites.append({"site": site, "lesions": len(sel),
                          **{t: sum(r["kind"] == t for r in sel) for t in ("lytic", "blastic", "mixed")},
                          "median diameter mm": float(np.median([float(r["diameter_mm"]) for r in sel]))})
    return rows, sites


def classification_stats(root: Path) -> list[dict]:
    index = scan_classification(root)
    per: dict[str, dict] = {}
    for s in index.slices:
        r = per.setdefault(s.patient, {"patient": s.patient, "class": "Abnormal" if s.patient_label else "Normal",
                                       "slices": 0, "metastatic slices": 0})
        r["slices"] += 1
        r["metastatic slices"] += s.label
    return list(per.values())


def stats_report(root: str | Path, reference: tuple[Path, Path] | None = None, threshold: int = 0) -> str:
    """The Markdown report printed by ``bonemet data stats``."""
    root = Path(root)
    parts: list[str] = []
    vol_root = root / "volumes" if (root / "volumes").is_dir() else (
        root if any((d / "ct.nii.gz").exists() for d in root.iterdir() if d.is_dir()) else None)
    bm_root = root / "bmseg" if (root / "bmseg").is_dir() else (root if is_bmseg_root(root) else None)
    cls_root = root / "classification" if (root / "classification").is_dir() else (
        root if is_classification_root(root) else None)
    if bm_root is not None:
        rows, sites = bmseg_stats(bm_root, threshold)
        parts.append(f"## Slices and lesions ({bm_root})\n\n" + markdown_table(rows))
        if sites:
            parts.append("## Lesions per site\n\n" + markdown_table(sites))
    if cls_root is not None:
        parts.append(f"## Classification layout ({cls_root})\n\n" + markdown_table(classification_stats(cls_root)))
    if vol_root is not None or reference is not None:
        rows = volume_stats(vol_root) if vol_root is not None else []
        healthy = [r for r in rows if r["status"] != "metastatic"] or rows
        if healthy:
            rows.append({"data": "phantom healthy-bone mean", "status": "",
                         **{k: float(np.mean([r[k] for r in healthy])) for k in rows[0] if k.startswith("bone")}})
        if reference is not None:
            rows.append(reference_stats(*reference))
        cols = ["data", "status", "bone median", "bone >100 HU", "bone p5", "bone p25", "bone p75", "bone p90",
                "outside median", "lesion voxels"]
        parts.append("## HU inside the bone mask (lesions excluded) and outside it\n\n" + markdown_table(rows, cols))
    if not parts:
        from ..errors import DataError

        raise DataError("no known layout to describe (BM-Seg, classification or volumes)", root)
    return "\n".join(parts)
