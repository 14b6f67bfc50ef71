"""The CT phantom data set: patients, lesions, metadata and every export layout.

``synthesize`` is what ``bonemet data synth`` runs. Patient ``i`` draws from its own generator
seeded with ``(seed, i)``, so the same seed gives the same files and adding patients does not
change the earlier ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data.export import PATIENTS_CSV_FIELDS, write_bmseg_slices, write_classification_slices, write_dicom_series
from ..data.volume import Volume, save_nifti
from ..errors import DataError
from ..fileio import atomic_dir, write_csv, write_json
from .anatomy import LESION_TYPE_BY_PRIMARY, PatientParams, draw_patient, finish, render_patient
from .lesions import LESION_TYPES, LesionInfo, insert_bone_islands, insert_lesions

FORMATS = ("volumes", "dicom", "bmseg", "classification")
PHANTOM_VERSION = 1


@dataclass
class PhantomPatient:
    """One generated patient: the CT, its masks and what was put in it."""

    params: PatientParams
    ct: Volume  # int16 HU
    bone: np.ndarray  # bool
    lesion: np.ndarray  # int16 labels, 0 = none
    site: np.ndarray  # uint8 site labels (see lesions.SITES)
    disc: np.ndarray  # bool: intervertebral discs (not bone)
    lesions: list[LesionInfo]
    mimics: list[dict]


LESION_MM = (10.0, 45.0)  # drawn diameters; clipped to the bone, measured ones span about 10-40 mm


def make_patient(index: int, seed: int, status: str, size: int = 256, n_slices: int = 96,
                 lesion_mm: tuple[float, float] = LESION_MM, thighs: bool = False) -> PhantomPatient:
    """Generate patient ``index`` of the data set with ``seed`` (``thighs``: the scan runs on to mid-thigh,
    ``anatomy.render_patient``)."""
    rng = np.random.default_rng([seed, index])
    pid = f"P{index:03d}"
    params = draw_patient(pid, status, rng)
    r = render_patient(params, size=size, n_slices=n_slices, thighs=thighs)
    hu = r.hu
    mimics: list[dict] = [{"kind": "disc", "detail": s.name, "z_top_mm": round(s.top, 1),
                           "z_bottom_mm": round(s.bottom, 1)} for s in r.segments if s.kind == "disc"]
    if r.sclerosis.any():
        ks = np.flatnonzero(r.sclerosis.any(axis=(0, 1)))
        mimics.append({"kind": "endplate_sclerosis", "detail": f"{len(ks)} slices", "slice_start": int(ks.min()),
                       "slice_end": int(ks.max())})
    islands_mask, islands = insert_bone_islands(hu, r.bone, r.spacing, rng, params.n_bone_islands, site_map=r.site)
    mimics += [{"kind": "bone_island", "detail": f"{i.diameter_mm} mm {i.site}", "slice_start": i.slice_start,
                "slice_end": i.slice_end} for i in islands]
    labels = np.zeros(hu.shape, np.int16)
    infos: list[LesionInfo] = []
    if status == "metastatic":
        n = int(rng.integers(3, 10))
        probs = LESION_TYPE_BY_PRIMARY[params.primary]
        types = [str(t) for t in rng.choice(LESION_TYPES, size=n, p=probs)]
        bone_for_lesions = r.bone & ~islands_mask
        hu, labels, infos = insert_lesions(hu, bone_for_lesions, r.spacing, rng, n, types=types, site_map=r.site,
                                          diameter_range=lesion_mm)
    ct = finish(hu, params, rng, r.spacing)
    # measured HU values in the lesion list refer to the final image (blur and noise included)
    for info in infos:
        info.mean_hu = round(float(ct[labels == info.lesion_id].mean()), 1)
    vol = Volume(ct, r.affine, meta={"format": "phantom", "patient": pid})
    return PhantomPatient(params, vol, r.bone, labels, r.site, r.disc, infos, mimics)


def patient_row(p: PhantomPatient) -> dict:
    q = p.params
    return {"patient": q.patient_id, "status": q.status, "sex": q.sex, "age": q.age, "primary": q.primary,
            "contrast": "venous" if q.contrast else "native", "n_lesions": len(p.lesions),
            "n_slices": p.ct.n_slices, "lesion_slices": int((p.lesion > 0).any(axis=(0, 1)).sum()),
            "spacing_mm": " ".join(f"{v:.3f}" for v in p.ct.spacing)}


def synthesize(out: str | Path, patients: int = 6, seed: int = 0, size: int = 256, slices: int = 96,
               formats: Sequence[str] = FORMATS, window: str = "bone", metastatic_fraction: float = 0.5,
               lesion_slices_only: bool = False, overwrite: bool = False,
               lesion_mm: tuple[float, float] = LESION_MM, progress: Callable[[str], None] | None = None,
               thighs: bool = False) -> Path:
    """Write a phantom data set to ``out`` (built in a temporary folder, renamed when complete); ``thighs``: each
    scan runs on to mid-thigh (``slices`` in all)."""
    bad = set(formats) - set(FORMATS)
    if bad:
        raise ValueError(f"unknown format(s) {sorted(bad)}; choose from {', '.join(FORMATS)}")
    n_met = int(round(metastatic_fraction * patients))
    # interleave statuses so that any prefix of the patient list holds both kinds
    order = np.argsort([(i * n_met) % max(1, patients) for i in range(patients)], kind="stable")
    status = ["healthy"] * patients
    for i in order[:n_met]:
        status[int(i)] = "metastatic"
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite, kind="data synth") as tmp:
        prow, lrows, mrows, bm_rows = [], [], [], []
        for i in range(patients):
            p = make_patient(i, seed, status[i], size=size, n_slices=slices, lesion_mm=lesion_mm, thighs=thighs)
            pid = p.params.patient_id
            if progress:
                progress(f"{pid}: {p.params.status}, {len(p.lesions)} lesion(s)")
            prow.append(patient_row(p))
            lrows += [{"patient": pid, **info.as_row()} for info in p.lesions]
            mrows += [{"patient": pid, **m} for m in p.mimics]
            fmts = [f for f in formats if not (f == "bmseg" and lesion_slices_only)]
            bm_rows += write_patient_exports(tmp, pid, p.ct, p.bone, p.lesion, fmts, window,
                                             f"bonemet-phantom-{seed}-{pid}", {"sex": p.params.sex, "age": p.params.age})
            if "bmseg" in formats and lesion_slices_only:
                ks = np.flatnonzero((p.lesion > 0).any(axis=(0, 1))).tolist()
                bm_rows += write_bmseg_slices(tmp / "bmseg", pid, p.ct, p.lesion, p.bone, window, ks)
        write_csv(tmp / "patients.csv", prow)
        lesion_fields = ["patient", *LesionInfo.__dataclass_fields__]
        write_csv(tmp / "lesions.csv", lrows, lesion_fields)
        write_csv(tmp / "mimics.csv", mrows, ["patient", "kind", "detail", "slice_start", "slice_end", "z_top_mm",
                                              "z_bottom_mm"])
        if "bmseg" in formats:
            write_csv(tmp / "bmseg" / "patients.csv", bm_rows, PATIENTS_CSV_FIELDS)
        write_json(tmp / "phantom.json", {
            "generator": "bonemet CT phantom", "version": PHANTOM_VERSION, "seed": seed, "patients": patients,
            "size": size, "slices": slices, "formats": list(formats), "window": window,
            "metastatic_fraction": metastatic_fraction, "lesion_slices_only": lesion_slices_only,
            "lesion_mm": list(lesion_mm), "thighs": thighs,
            "patient_params": [asdict(make_patient_params(i, seed, status[i])) for i in range(patients)],
        })
    return out


def make_patient_params(index: int, seed: int, status: str) -> PatientParams:
    """The drawn parameters of patient ``index`` (the first draws of its generator, as in make_patient)."""
    return draw_patient(f"P{index:03d}", status, np.random.default_rng([seed, index]))


def write_patient_exports(tmp: Path, pid: str, ct: Volume, bone: np.ndarray | None, lesion: np.ndarray,
                          formats: Sequence[str], window: str, uid_seed: str, meta: dict) -> list[dict]:
    """Write one patient's volumes / DICOM / slices into a data-set folder; returns BM-Seg rows."""
    rows: list[dict] = []
    if "volumes" in formats:
        vdir = tmp / "volumes" / pid
        save_nifti(ct.array, ct.affine, vdir / "ct.nii.gz")
        if bone is not None:
            save_nifti(bone.astype(np.uint8), ct.affine, vdir / "bone_mask.nii.gz")
        save_nifti(lesion.astype(np.uint8), ct.affine, vdir / "lesion_mask.nii.gz")
    if "dicom" in formats:
        write_dicom_series(ct, tmp / "dicom" / pid, pid, meta, uid_seed=uid_seed)
    if "bmseg" in formats:
        rows = write_bmseg_slices(tmp / "bmseg", pid, ct, lesion, bone, window)
    if "classification" in formats:
        write_classification_slices(tmp / "classification", pid, ct, lesion, window)
    return rows


def synthesize_from_ct(ct_path: str | Path, bone_mask_path: str | Path | None, out: str | Path, lesions: int = 4,
                       seed: int = 0, formats: Sequence[str] = ("volumes", "bmseg"), window: str = "bone",
                       patient: str = "CT000", overwrite: bool = False,
                       lesion_mm: tuple[float, float] = LESION_MM) -> tuple[Path, list[LesionInfo]]:
    """Semi-synthetic data: insert ``lesions`` metastases into a real CT through its bone mask.

    Without a bone mask (``None``) the lesions go where bone is sure from HU alone (``data.bone``), and no bone
    mask is written: that rule's mask is not a bone label, so training leaves these slices out of the bone term."""
    from ..data.bone import DENSE_HU, SEED_ML, insertion_bone_mask
    from ..data.ct import read_volume
    from ..data.volume import read_mask_like

    out = Path(out)
    with atomic_dir(out, overwrite=overwrite, kind="data synth", protect=[ct_path, bone_mask_path]) as tmp:
        ct = read_volume(ct_path)
        if bone_mask_path is None:
            sites = insertion_bone_mask(ct)
            if not sites.any():
                raise DataError(f"no voxel is surely bone by HU (no component holds {SEED_ML:g} mL of {DENSE_HU:g} HU "
                                "or more): give its bone mask", ct_path)
        else:
            sites = read_mask_like(bone_mask_path, ct)
        rng = np.random.default_rng([seed, 10_000])
        hu, labels, infos = insert_lesions(ct.array, sites, ct.spacing, rng, lesions, diameter_range=lesion_mm)
        ct = ct.with_array(np.clip(np.rint(hu), -1024, 3071).astype(np.int16))
        bone = sites if bone_mask_path is not None else None
        rows = write_patient_exports(tmp, patient, ct, bone, labels, formats, window, f"bonemet-ct-{seed}", {})
        if rows:
            write_csv(tmp / "bmseg" / "patients.csv", rows, PATIENTS_CSV_FIELDS)
        write_csv(tmp / "lesions.csv", [{"patient": patient, **i.as_row()} for i in infos],
                  ["patient", *LesionInfo.__dataclass_fields__])
        write_json(tmp / "phantom.json", {"generator": "bonemet lesion insertion into real CT", "seed": seed,
                                          "source_ct": str(ct_path),
                                          "bone_mask": str(bone_mask_path) if bone_mask_path else None,  # None: HU
                                          "lesions": lesions, "formats": list(formats), "window": window})
    return out, infos
