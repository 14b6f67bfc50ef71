"""Where the default model's operating point could sit: findings per scan on real series without labelled lesions
against the sensitivity for lesions inserted into real CT, each measured with models that never saw that series.

Uses the leave-one-out models of a ``bonemet models build`` folder (``BUILD/work/without-real*`` and
``without-background*``): each model segments its held-out series once (probabilities kept), then the lesions are
found again from those probabilities with ``find_lesions`` (what ``predict`` runs) for every combination of
threshold, smallest lesion volume and a metal rule (a finding whose mean is at least MAX_MEAN_HU is left out: metal
and the scanner's clipped maximum, not bone).

    .venv/bin/python docs/experiments/operating_point.py runs/default-model [--tta] [--models DIR] [--symmetry]
        [--bone-rules] [--contrast]

``--symmetry``: the third choice is the symmetry rule instead (``predict --symmetry-hu D`` for each D of
SYMMETRIC_HU, none first), the metal rule on as ``predict``'s default has it.

``--bone-rules``: the third choice is the bone mask the bone gate uses: the bone output at the threshold
(``predict --raw-bone``) or the bone mask of ``bonemet.inference.bone``'s HU rules (``predict``'s default), the
metal rule on.

``--contrast``: the third choice is the contrast rule (``predict --min-contrast-hu C`` for each C of CONTRAST_HU),
with the symmetry rule off and at 25 HU, the metal rule and the bone rules on as ``predict``'s defaults have them.

``--tta``: the models also run on the left-right mirrored slices and the two are averaged (``predict --tta``).
``--models DIR``: leave-one-out models from another folder laid out like ``BUILD/work`` (``without-real*/seg``,
``without-background*/seg``; a series whose model is missing there is skipped), for example the same recipe trained
longer. After the table, each inserted lesion of 10 mm or more: its type, size and HU, the largest lesion
probability on it, the share of its voxels at 0.5 or more, and the mean bone probability on it.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from bonemet.inference.bone import refine_bone
from bonemet.inference.lesions import find_lesions
from bonemet.inference.predict import PredictOptions, Predictor
from bonemet.inference.scan import read_scan
from bonemet.markdown import markdown_table
from bonemet.recipe import recipe_of

THRESHOLDS = (0.5, 0.6, 0.7)
MIN_VOLUMES = (0.05, 0.25, 0.5, 1.0)
MAX_MEAN_HU = (None, 2000.0)
SYMMETRIC_HU = (None, 25.0, 50.0)
CONTRAST_HU = (None, 30.0)


def segment(model: Path, scan_path: Path, tta: bool = False, members: list[int] | None = None) -> dict:
    """``model`` (all its members averaged, or only ``members``) on ``scan_path``: probabilities and the volume."""
    predictor = Predictor(PredictOptions(seg=model, viewer=False, dicom_seg=False, tta=tta), members=members)
    pred = predictor.analyse(read_scan(scan_path), keep_probabilities=True)
    vol = pred.scan.volume
    return {"p": np.asarray(pred.lesion_probability, np.float32),
            "bone": np.asarray(pred.bone_probability, np.float32), "volume": vol}


def averaged(cases: list[dict]) -> dict:
    """Several models' ``segment`` outputs on one scan as one ensemble: their lesion and bone probabilities
    averaged."""
    return {**cases[0], **{k: np.mean([c[k] for c in cases], axis=0) for k in ("p", "bone")}}


def findings(case: dict, threshold: float, min_ml: float, max_mean_hu: float | None,
             symmetry_hu: float | None = None, bone_rules: bool = False, min_contrast_hu: float | None = None
             ) -> tuple[list, np.ndarray]:
    """The kept lesions and their label volume (canonical grid), as predict finds them at this operating point;
    ``bone_rules``: the bone gate on the bone mask of ``bonemet.inference.bone`` (``predict``'s default) instead of
    the bone output at the threshold (``predict --raw-bone``)."""
    vol = case["volume"]
    if bone_rules and "refined" not in case:
        case["refined"] = refine_bone(case["bone"], vol)
    bone = case["refined"] if bone_rules else case["bone"] >= threshold
    lesions, kept = find_lesions(case["p"] >= threshold, case["p"], vol.array, bone,
                                 vol.spacing, 10, min_ml, voxel_mm3=vol.voxel_volume_mm3, bone_margin_mm=3.0,
                                 symmetry_hu=symmetry_hu, min_contrast_hu=min_contrast_hu)
    if max_mean_hu is not None:
        for les in [les for les in lesions if les.mean_hu is not None and les.mean_hu >= max_mean_hu]:
            kept[kept == les.id] = 0
            lesions.remove(les)
    return lesions, kept


def held_out_cases(build: Path, tta: bool = False, models: Path | None = None) -> list[dict]:
    """Each real series and each background with its test lesions, segmented by the model that never saw it
    (``segment``); an inserted case also holds its lesion ids (``truth``), its ``lesions.csv`` rows and diameters."""
    recipe = recipe_of(build)
    real, backgrounds = recipe.real, recipe.backgrounds
    work = build / "work"
    models = models or work
    cases = []
    for k, scan in enumerate(real):
        if not (models / f"without-real{k}" / "seg").exists():
            print(f"skipped {scan}: no model without it in {models}")
            continue
        print(f"segmenting {scan} with the model that never saw it", flush=True)
        cases.append({"kind": "real", "name": scan.name, **segment(models / f"without-real{k}" / "seg", scan, tta)})
    for i, _ in enumerate(backgrounds):
        vol = work / "data" / f"inserted-test{i}" / "volumes" / "T"
        print(f"segmenting {vol} (lesions inserted into background {i})", flush=True)
        case = {"kind": "inserted", "name": f"background {i}",
                **segment(models / f"without-background{i}" / "seg", vol / "ct.nii.gz", tta)}
        case["truth"] = np.asarray(nib.load(vol / "lesion_mask.nii.gz").dataobj)  # lesion ids, native grid
        with open(work / "data" / f"inserted-test{i}" / "lesions.csv", newline="") as fh:
            case["rows"] = list(csv.DictReader(fh))
        case["lesions"] = {int(r["lesion_id"]): float(r["diameter_mm"]) for r in case["rows"]}
        cases.append(case)
    return cases


def main(build: Path, tta: bool = False, models: Path | None = None, symmetry: bool = False,
         bone_rules: bool = False, contrast: bool = False) -> None:
    cases = held_out_cases(build, tta, models)
    rows = []
    if contrast:
        rules = [(2000.0, d, True, c) for d in (None, 25.0) for c in CONTRAST_HU]
    elif bone_rules:
        rules = [(2000.0, None, False, None), (2000.0, None, True, None)]
    elif symmetry:
        rules = [(2000.0, d, False, None) for d in SYMMETRIC_HU]
    else:
        rules = [(m, None, False, None) for m in MAX_MEAN_HU]
    for threshold in THRESHOLDS:
        for min_ml in MIN_VOLUMES:
            for max_hu, sym_hu, refined, min_contrast in rules:
                n_real, metastatic, largest, found, total, fp = [], 0, 0.0, 0, 0, 0
                for case in cases:
                    lesions, kept = findings(case, threshold, min_ml, max_hu, sym_hu, refined, min_contrast)
                    if case["kind"] == "real":
                        n_real.append(len(lesions))
                        metastatic += bool(lesions)
                        largest = max([largest, *(les.volume_ml for les in lesions)])
                        continue
                    ids, native = case["truth"], case["volume"].to_native(kept)[0]
                    big = {i for i, d in case["lesions"].items() if d >= 10.0}
                    hit = set(np.unique(ids[native > 0]).tolist()) - {0}
                    found += len(big & hit)
                    total += len(big)
                    touched = set(np.unique(native[ids > 0]).tolist())
                    fp += sum(1 for les in lesions if les.id not in touched)
                rule = ({"symmetry rule": sym_hu or "-", "contrast rule": min_contrast or "-"} if contrast else
                        {"bone mask": "HU rules" if refined else "raw"} if bone_rules else
                        {"symmetry rule": sym_hu or "-"} if symmetry else {"metal rule": max_hu or "-"})
                rows.append({"threshold": threshold, "min mL": min_ml, **rule,
                             "findings per real scan": round(float(np.mean(n_real)), 2),
                             "per scan": " / ".join(map(str, n_real)), "called metastatic": metastatic,
                             "largest mL": round(largest, 1), "inserted >= 10 mm found": f"{found}/{total}",
                             "FP on inserted scans": fp})
    print(markdown_table(rows))
    print(markdown_table(lesion_rows(cases)))


def lesion_rows(cases: list[dict]) -> list[dict]:
    """Each inserted lesion of 10 mm or more, with what the model that never saw its background gave it."""
    rows = []
    for case in cases:
        if case["kind"] != "inserted":
            continue
        p, bone = (case["volume"].to_native(case[k])[0] for k in ("p", "bone"))
        for r in case["rows"]:
            if float(r["diameter_mm"]) < 10.0:
                continue
            on = case["truth"] == int(r["lesion_id"])
            rows.append({"background": case["name"], "lesion": r["lesion_id"], "type": r["kind"],
                         "diameter mm": r["diameter_mm"], "mean HU": r["mean_hu"],
                         "bone around HU": r["surrounding_bone_hu"],
                         "largest probability": round(float(p[on].max()), 3),
                         "voxels >= 0.5 %": round(100 * float(np.mean(p[on] >= 0.5)), 1),
                         "bone probability": round(float(bone[on].mean()), 2)})
    return rows


def _option(name: str) -> Path | None:
    return Path(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else None


if __name__ == "__main__":
    models = _option("--models")
    flags = ("--tta", "--models", "--symmetry", "--bone-rules", "--contrast", str(models))
    args = [a for a in sys.argv[1:] if a not in flags]
    main(Path(args[0]) if args else Path("runs/default-model"), "--tta" in sys.argv, models, "--symmetry" in sys.argv,
         "--bone-rules" in sys.argv, "--contrast" in sys.argv)
