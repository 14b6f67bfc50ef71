"""Where the default model's operating point could sit: findings per scan on real series without labelled lesions
against the sensitivity for lesions inserted into real CT, each measured with models that never saw that series.

Uses the leave-one-out models of a ``bonemet models build`` folder (``BUILD/work/without-real*`` and
``without-background*``): each model segments its held-out series once (probabilities kept), then the lesions are
found again from those probabilities with ``find_lesions`` (what ``predict`` runs) for every combination of
threshold, smallest lesion volume and a metal rule (a finding whose mean is at least MAX_MEAN_HU is left out: metal
and the scanner's clipped maximum, not bone).

    .venv/bin/python docs/experiments/operating_point.py runs/default-model [--tta]

``--tta``: the models also run on the left-right mirrored slices and the two are averaged (``predict --tta``).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from bonemet.inference.lesions import find_lesions
from bonemet.inference.predict import PredictOptions, Predictor
from bonemet.inference.scan import read_scan
from bonemet.markdown import markdown_table

THRESHOLDS = (0.5, 0.6, 0.7)
MIN_VOLUMES = (0.05, 0.25, 0.5, 1.0)
MAX_MEAN_HU = (None, 2000.0)


def segment(model: Path, scan_path: Path, tta: bool = False) -> dict:
    pred = Predictor(PredictOptions(seg=model, viewer=False, dicom_seg=False, tta=tta)).analyse(
        read_scan(scan_path), keep_probabilities=True)
    vol = pred.scan.volume
    return {"p": np.asarray(pred.lesion_probability, np.float32),
            "bone": np.asarray(pred.bone_probability, np.float32), "volume": vol}


def findings(case: dict, threshold: float, min_ml: float, max_mean_hu: float | None) -> tuple[list, np.ndarray]:
    """The kept lesions and their label volume (canonical grid), as predict finds them at this operating point."""
    vol = case["volume"]
    lesions, kept = find_lesions(case["p"] >= threshold, case["p"], vol.array, case["bone"] >= threshold,
                                 vol.spacing, 10, min_ml, voxel_mm3=vol.voxel_volume_mm3, bone_margin_mm=3.0)
    if max_mean_hu is not None:
        for les in [les for les in lesions if les.mean_hu is not None and les.mean_hu >= max_mean_hu]:
            kept[kept == les.id] = 0
            lesions.remove(les)
    return lesions, kept


def main(build: Path, tta: bool = False) -> None:
    results = json.loads((build / "work" / "results.json").read_text())
    command = results["recipe_command"].split()
    real = [Path(command[i + 1]) for i, a in enumerate(command) if a == "--real"]
    backgrounds = [command[i + 1].split(":") for i, a in enumerate(command) if a == "--background"]
    work = build / "work"
    cases = []
    for k, scan in enumerate(real):
        print(f"segmenting {scan} with the model that never saw it", flush=True)
        cases.append({"kind": "real", "name": scan.name, **segment(work / f"without-real{k}" / "seg", scan, tta)})
    for i, _ in enumerate(backgrounds):
        vol = work / "data" / f"inserted-test{i}" / "volumes" / "T"
        print(f"segmenting {vol} (lesions inserted into background {i})", flush=True)
        case = {"kind": "inserted", "name": f"background {i}",
                **segment(work / f"without-background{i}" / "seg", vol / "ct.nii.gz", tta)}
        case["truth"] = np.asarray(nib.load(vol / "lesion_mask.nii.gz").dataobj)  # lesion ids, native grid
        with open(work / "data" / f"inserted-test{i}" / "lesions.csv", newline="") as fh:
            case["lesions"] = {int(r["lesion_id"]): float(r["diameter_mm"]) for r in csv.DictReader(fh)}
        cases.append(case)
    rows = []
    for threshold in THRESHOLDS:
        for min_ml in MIN_VOLUMES:
            for max_hu in MAX_MEAN_HU:
                n_real, metastatic, largest, found, total, fp = [], 0, 0.0, 0, 0, 0
                for case in cases:
                    lesions, kept = findings(case, threshold, min_ml, max_hu)
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
                rows.append({"threshold": threshold, "min mL": min_ml, "metal rule": max_hu or "-",
                             "findings per real scan": round(float(np.mean(n_real)), 2),
                             "per scan": " / ".join(map(str, n_real)), "called metastatic": metastatic,
                             "largest mL": round(largest, 1), "inserted >= 10 mm found": f"{found}/{total}",
                             "FP on inserted scans": fp})
    print(markdown_table(rows))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--tta"]
    main(Path(args[0]) if args else Path("runs/default-model"), "--tta" in sys.argv)
