"""Findings per real CT series (no labelled bone lesions) with and without predict's bone gate and flip TTA.

Usage, from the repository root after `make demo`:
    .venv/bin/python docs/experiments/bone_gate_real_ct.py runs/demo/seg rows.json
Reads ../shared/data/real_ct and ../shared/data/real_ct_more; prints one JSON row per series and variant.
"""
import json
import sys
import time
from pathlib import Path

from bonemet.inference.predict import PredictOptions, Predictor
from bonemet.inference.scan import read_scan
from bonemet.data.volume import read_mask_like

run = Path(sys.argv[1])
S = Path(__file__).resolve().parents[3] / "shared" / "data"
series = {
    "real_ct/chest_abdomen_dicom": S / "real_ct/chest_abdomen_dicom",
    "real_ct/abdomen_3mm_ct": S / "real_ct/abdomen_3mm_ct.nii.gz",
    "real_ct/torso_3mm_ct": S / "real_ct/torso_3mm_ct.nii.gz",
    "lung-pet-ct-dx/A0001": S / "real_ct_more/lung-pet-ct-dx/A0001_ct",
    "lung-pet-ct-dx/A0002": S / "real_ct_more/lung-pet-ct-dx/A0002_ct",
    "acrin-flt-breast-001": S / "real_ct_more/acrin-flt-breast-001/study_19600104_abdomen_pelvis",
    "ibsi-sts-001": S / "real_ct_more/ibsi-sts-001/CT_image.nii.gz",
}
bone_truth = {"real_ct/chest_abdomen_dicom": S / "real_ct/chest_abdomen_dicom_bone_mask.nii.gz",
              "real_ct/abdomen_3mm_ct": S / "real_ct/abdomen_3mm_bone_mask.nii.gz"}
variants = {"no gate": dict(bone_margin_mm=None), "gate 3 mm": dict(bone_margin_mm=3.0),
            "gate 3 mm + flip TTA": dict(bone_margin_mm=3.0, tta=True)}
rows = []
scans = {}
for name, path in series.items():
    try:
        scans[name] = read_scan(path)
    except Exception as exc:
        print(name, "unreadable:", exc, file=sys.stderr)
for label, kw in variants.items():
    pred = Predictor(PredictOptions(seg=run, device="cpu", **kw))
    for name, scan in scans.items():
        t = time.perf_counter()
        p = pred.analyse(scan)
        vols = [les.volume_ml or 0 for les in p.lesions]
        dice = None
        if name in bone_truth and p.bone_mask is not None:
            ref = read_mask_like(bone_truth[name], scan.volume)
            dice = round(2 * float((ref & p.bone_mask).sum()) / max(1, float(ref.sum() + p.bone_mask.sum())), 3)
        rows.append({"variant": label, "series": name, "slices": scan.n_slices, "findings": len(p.lesions),
                     "largest mL": round(max(vols, default=0), 2), "total mL": round(sum(vols), 2),
                     "verdict": p.verdict, "probability": p.probability,
                     "off bone": p.summary["options"]["bone gate"], "bone Dice": dice,
                     "s": round(time.perf_counter() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
json.dump(rows, open(sys.argv[2], "w"), indent=1)
