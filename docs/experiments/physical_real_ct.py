"""A physical-scale EH-AttUnet++ trained on the phantom plus lesions inserted into the two real series that have
TotalSegmentator bone masks, then run on the real series it never saw (their patients had cancer; none has
labelled bone lesions): findings per scan, against the phantom-only demo model's 17.7 (docs/real-ct-findings.md).

    .venv/bin/python docs/experiments/physical_real_ct.py runs/exp/physical-real
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bonemet.data.bmseg import merge_bmseg

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
BONEMET = [sys.executable, "-m", "bonemet"]
INSERT = [("TS1", SHARED / "real_ct" / "chest_abdomen_dicom", SHARED / "real_ct" / "chest_abdomen_dicom_bone_mask.nii.gz"),
          ("TS2", SHARED / "real_ct" / "abdomen_3mm_ct.nii.gz", SHARED / "real_ct" / "abdomen_3mm_bone_mask.nii.gz")]
HELD_OUT = {"lung-pet-ct-dx A0001": SHARED / "real_ct_more" / "lung-pet-ct-dx" / "A0001_ct",
            "lung-pet-ct-dx A0002": SHARED / "real_ct_more" / "lung-pet-ct-dx" / "A0002_ct",
            "acrin-flt-breast-001": SHARED / "real_ct_more" / "acrin-flt-breast-001" / "study_19600104_abdomen_pelvis",
            "ibsi-sts-001 (thigh)": SHARED / "real_ct_more" / "ibsi-sts-001" / "CT_image.nii.gz"}
COPIES = 3  # lesion sets per real series (one patient each: the copies stay in one fold)


def run(*args) -> None:
    print("+", " ".join(map(str, args)), flush=True)
    subprocess.run([*BONEMET, *map(str, args)], check=True)


def main(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "phantom").exists():
        run("data", "synth", work / "phantom", "--patients", 8, "--size", 256, "--slices", 48, "--formats", "bmseg",
            "--seed", 11)
    sources = [(work / "phantom" / "bmseg", "ph")]
    for pid, ct, bone in INSERT:
        for c in range(COPIES):
            out = work / f"{pid}-{c}"
            if not out.exists():
                run("data", "synth", out, "--from-ct", ct, "--bone-mask", bone, "--lesions", 6, "--seed", 100 + c,
                    "--formats", "bmseg")
            sources.append((out / "bmseg", f"{pid}-{c}"))
    data = work / "mixed"
    if not data.exists():  # copies of one real series are one patient (TS1-0, TS1-1... -> TS1)
        merge_bmseg([(root, prefix, None if prefix == "ph" else prefix.split("-")[0]) for root, prefix in sources],
                    data, {"window": "unknown (images used as given)"})
    seg = work / "seg"
    if not (seg / "fold1" / "done.json").exists():
        run("seg", "train", "--data", data, "--out", seg, "--model", "hybrid-attunet++", "--folds", 2,
            "--test-patients", 0.0, "--epochs", 12, "--size", 128, "--width", 8, "--batch-size", 4, "--pixel-mm", 3.0,
            "--neg-ratio", 1, "--pos-weight", 10, "--lr-scale", 0.3, "--bf16", "--eval-every", 4,
            *(["--resume"] if seg.exists() else []))
    rows = []
    for name, scan in HELD_OUT.items():
        out = work / "predict" / name.replace(" ", "_")
        if not (out / "summary.json").exists():
            run("predict", scan, "--seg", seg, "--out", out, "--no-viewer", "--overwrite", "--window", "bone")
        s = json.loads((out / "summary.json").read_text())
        lesions = json.loads((out / "lesions.json").read_text())
        rows.append({"series": name, "slices": s["input"]["slices"], "findings": s["lesions"],
                     "largest mL": max((les["volume_ml"] for les in lesions), default=0), "verdict": s["verdict"],
                     "probability": s["probability"]})
    print("| series | slices | findings | largest (mL) | verdict |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['series']} | {r['slices']} | {r['findings']} | {r['largest mL']} | {r['verdict']} "
              f"({r['probability']}) |")
    print(f"mean findings per scan: {sum(r['findings'] for r in rows) / len(rows):.1f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "exp" / "physical-real")
