"""Phantom lesions found by type: is the lytic lesion a problem of real CT, or of the models at 3 mm pixels? NOT part
of bonemet.

Makes (once) 12 metastatic phantom patients that no training here uses (``bonemet.phantom.synth.synthesize``, seed
77, the recipe's 256 px and 48 slices, true lesion masks) in ``OUT/test``. Then, for each segmentation run folder
``RUN`` (a ``bonemet seg train`` output or a build's ``work/all/seg``) and each of THRESHOLDS, ``predict`` on every
patient (its defaults otherwise: the bone rules, the bone gate, the smallest volume) and counts the true lesions of
10 mm or more that a kept finding overlaps, by type, and the findings on no true lesion per scan.

    .venv/bin/python docs/experiments/phantom_types.py OUT RUN [RUN ...] [--thresholds=0.3,0.4,0.5,0.6,0.7]

Models trained on the phantom alone, with the recipe's training settings (the runs the docs' table names):

    bonemet data synth PH --patients 24 --seed 21 --metastatic-fraction 1 --size 256 --slices 48 --formats bmseg
    bonemet seg train --data PH/bmseg --out RUN --model hybrid-attunet++ --folds 2 --test-patients 0 --epochs 12 \\
        --size 128 --width 8 --batch-size 4 --pixel-mm 3 --neg-ratio 1 --pos-weight 10 --lr-scale 0.3 --bf16 \\
        --eval-every 4 --intensity-aug          # or --no-intensity-aug, --width 16, --epochs 36
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np

from bonemet.inference.predict import PredictOptions, Predictor, analyse
from bonemet.inference.scan import read_scan
from bonemet.markdown import markdown_table
from bonemet.phantom.lesions import LESION_TYPES
from bonemet.phantom.synth import synthesize

SMALLEST_MM = 10.0


def test_set(out: Path) -> Path:
    test = out / "test"
    if not test.exists():
        synthesize(test, patients=12, seed=77, size=256, slices=48, formats=("volumes",), metastatic_fraction=1.0)
    return test


def count(run: Path, test: Path, threshold: float) -> dict:
    lesions = list(csv.DictReader(open(test / "lesions.csv")))
    cases = sorted((test / "volumes").iterdir())
    total, found, false_positives, predictor = Counter(), Counter(), 0, None
    for case in cases:
        opts = PredictOptions(seg=run, viewer=False, dicom_seg=False, truth=case / "lesion_mask.nii.gz",
                              threshold=threshold)
        predictor = predictor or Predictor(opts)  # the members, loaded once
        pred = analyse(read_scan(case / "ct.nii.gz"), opts, predictor.seg, predictor.clf)
        false_positives += pred.summary["truth"]["false_positive_lesions"]
        labels = np.asarray(nib.load(case / "lesion_mask.nii.gz").dataobj)
        for les in lesions:
            if les["patient"] == case.name and float(les["diameter_mm"]) >= SMALLEST_MM:
                total[les["kind"]] += 1
                found[les["kind"]] += bool((pred.lesion_mask & (labels == int(les["lesion_id"]))).any())
    return {"run": run.name, "threshold": threshold,
            **{f"{kind} found": f"{found[kind]}/{total[kind]}" for kind in LESION_TYPES},
            "findings on no lesion per scan": round(false_positives / len(cases), 2)}


def main(out: Path, runs: list[Path], thresholds: list[float]) -> None:
    test = test_set(out)
    rows = []
    for run in runs:
        for threshold in thresholds:
            rows.append(count(run, test, threshold))
            print(rows[-1], flush=True)
    print(markdown_table(rows))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    main(Path(args[0]), [Path(a) for a in args[1:]],
         [float(t) for t in opts.get("thresholds", "0.3,0.4,0.5,0.6,0.7").split(",")])
