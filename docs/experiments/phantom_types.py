"""Phantom lesions found by type: is the lytic lesion a problem of real CT, or of the models at 3 mm pixels? NOT part
of bonemet.

Makes (once) 12 metastatic phantom patients that no training here uses (``bonemet.phantom.synth.synthesize``, seed
77, the recipe's 256 px and 48 slices, true lesion masks) in ``OUT/test``. Then, for each segmentation run folder
``RUN`` (a ``bonemet seg train`` output or a build's ``work/all/seg``), segments every patient once and, at each of
THRESHOLDS, keeps the findings ``predict`` would keep there (its defaults otherwise: the bone rules, the bone gate,
the metal rule, the smallest volume; ``operating_point.findings``), and counts the true lesions of 10 mm or more
that a kept finding overlaps, by type, and the findings on no true lesion per scan.

    .venv/bin/python docs/experiments/phantom_types.py OUT RUN [RUN ...] [--thresholds=0.3,0.4,0.5,0.6,0.7] [--members]

``--members`` adds a table of the largest lesion probability on each of those lesions, by type, for each member of a
run alone and for the run as ``predict`` runs it (every member averaged): a member whose lesion output cannot pass
0.5 shows there (the network again once per member).

Models trained on the phantom alone, with the recipe's training settings (the runs the docs' table names):

    bonemet data synth PH --patients 24 --seed 21 --metastatic-fraction 1 --size 256 --slices 48 --formats bmseg
    bonemet seg train --data PH/bmseg --out RUN --model hybrid-attunet++ --folds 2 --test-patients 0 --epochs 12 \\
        --size 128 --width 8 --batch-size 4 --pixel-mm 3 --neg-ratio 1 --pos-weight 10 --lr-scale 0.3 --bf16 \\
        --eval-every 4 --intensity-aug          # or --no-intensity-aug, --width 16, --epochs 36, --lesion-prior 0.01
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np

from bonemet.markdown import markdown_table
from bonemet.phantom.lesions import LESION_TYPES
from bonemet.phantom.synth import synthesize
from operating_point import findings, segment

SMALLEST_MM = 10.0


def test_set(out: Path) -> Path:
    test = out / "test"
    if not test.exists():
        synthesize(test, patients=12, seed=77, size=256, slices=48, formats=("volumes",), metastatic_fraction=1.0)
    return test


def segmented(run: Path, test: Path) -> list[dict]:
    """Every test patient segmented by ``run`` (``operating_point.segment``), with its lesion ids (native grid) and
    its lesions of ``SMALLEST_MM`` or more."""
    with open(test / "lesions.csv", newline="") as fh:
        lesions = list(csv.DictReader(fh))
    cases = []
    for case in sorted((test / "volumes").iterdir()):
        cases.append({**segment(run, case / "ct.nii.gz"), "ct": case / "ct.nii.gz",
                      "truth": np.asarray(nib.load(case / "lesion_mask.nii.gz").dataobj),
                      "rows": [r for r in lesions if r["patient"] == case.name
                               and float(r["diameter_mm"]) >= SMALLEST_MM]})
    return cases


def count(name: str, cases: list[dict], threshold: float) -> dict:
    total, found, false_positives = Counter(), Counter(), 0
    for case in cases:
        lesions, kept = findings(case, threshold, 0.05, 2000.0, bone_rules=True)  # predict's defaults
        native = case["volume"].to_native(kept)[0]
        touched = set(np.unique(native[case["truth"] > 0]).tolist()) - {0}
        false_positives += sum(les.id not in touched for les in lesions)
        for row in case["rows"]:
            total[row["kind"]] += 1
            found[row["kind"]] += bool((native[case["truth"] == int(row["lesion_id"])] > 0).any())
    return {"run": name, "threshold": threshold,
            **{f"{kind} found": f"{found[kind]}/{total[kind]}" for kind in LESION_TYPES},
            "findings on no lesion per scan": round(false_positives / len(cases), 2)}


def largest(run: str, model: str, cases: list[dict], probabilities: list[np.ndarray]) -> dict:
    """By type: how many lesions get a largest lesion probability of 0.5 or more, and the median of those largest."""
    by_kind: dict[str, list[float]] = {kind: [] for kind in LESION_TYPES}
    for case, p in zip(cases, probabilities):
        for lesion in case["rows"]:
            by_kind[lesion["kind"]].append(float(p[case["truth"] == int(lesion["lesion_id"])].max()))
    row = {"run": run, "model": model}
    for kind, values in by_kind.items():
        row[f"{kind}: largest >= 0.5"] = f"{sum(v >= 0.5 for v in values)}/{len(values)}"
        row[f"{kind}: median largest"] = f"{np.median(values):.2f}"
    return row


def member_rows(run: Path, cases: list[dict]) -> list[dict]:
    """``largest`` for each member of ``run`` alone, then for all of them as ``predict`` averages them."""
    folds = len(json.loads((run / "splits.json").read_text())["folds"])
    rows = [largest(run.name, f"member {k}", cases, [segment(run, c["ct"], members=[k])["p"] for c in cases])
            for k in range(folds)]
    return rows + [largest(run.name, "all members", cases, [c["p"] for c in cases])]


def main(out: Path, runs: list[Path], thresholds: list[float], members: bool = False) -> None:
    test = test_set(out)
    rows, by_member = [], []
    for run in runs:
        cases = segmented(run, test)  # the network once per run; the thresholds only change what is kept
        for threshold in thresholds:
            rows.append(count(run.name, cases, threshold))
            print(rows[-1], flush=True)
        if members:
            by_member += member_rows(run, cases)
    print(markdown_table(rows))
    if by_member:
        print(markdown_table(by_member))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    main(Path(args[0]), [Path(a) for a in args[1:]],
         [float(t) for t in opts.get("thresholds", "0.3,0.4,0.5,0.6,0.7").split(",")], "--members" in sys.argv)
