"""What the symmetry rule (``predict --symmetry-hu D``) costs in lesions: many new lesions inserted into each
left-out background of a ``bonemet models build`` (SEEDS x 8 per background, seeds no training or test used), each
copy segmented once by the model that never saw that background, then the lesions found again with the rule off
and at each D (``operating_point.findings``, the metal rule on): inserted lesions of 10 mm or more found, and
findings that overlap no inserted lesion: NOT part of bonemet.

    .venv/bin/python docs/experiments/symmetry_inserted.py runs/default-model OUT [SEEDS]    # SEEDS: 6 by default

``count_inserted`` serves ``inserted_variants.py`` too (the same lesions, other recipes' left-out models).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from operating_point import averaged, findings, segment
from bonemet.markdown import markdown_table
from bonemet.phantom.synth import synthesize_from_ct
from bonemet.recipe import recipe_of

RULES = (None, 25.0, 50.0)
BANDS = (("10-20 mm", 10.0, 20.0), ("20 mm or more", 20.0, float("inf")))


def count_inserted(build: Path, models: list[Path], out: Path, seeds: int,
                   points=tuple((0.5, r) for r in RULES)) -> dict:
    """Per operating point (threshold, symmetry rule): inserted lesions of 10 mm or more (``big``), those found
    (``found``, and by ``kind`` and size ``band``), the findings on no inserted lesion (``fp``) and each copy's
    bone Dice against its mask by background (``bone``); ``models``: folders of ``without-background*`` trainings
    (a build's or a variant's ``work``), their probabilities averaged when there are several (an ensemble of
    their members). The copies are made once in ``out``."""
    counts = {point: {"found": 0, "big": 0, "fp": 0, "kind": {}, "band": {}, "bone": {}} for point in points}
    for i, (ct, bone) in enumerate(recipe_of(build).backgrounds):
        for seed in range(2000, 2000 + seeds):
            case_dir = out / f"background{i}-{seed}"
            if not case_dir.exists():
                synthesize_from_ct(ct, bone, case_dir, lesions=8, seed=seed, formats=("volumes",), patient="T")
            vol = case_dir / "volumes" / "T"
            cases = [segment(m / f"without-background{i}" / "seg", vol / "ct.nii.gz") for m in models]
            case = averaged(cases)
            truth_bone = np.asarray(nib.load(vol / "bone_mask.nii.gz").dataobj) > 0
            ids = np.asarray(nib.load(vol / "lesion_mask.nii.gz").dataobj)
            with open(case_dir / "lesions.csv", newline="") as fh:
                rows = {int(r["lesion_id"]): r for r in csv.DictReader(fh)}
            big = {k for k, r in rows.items() if float(r["diameter_mm"]) >= 10.0}
            bone_dice = {}  # by threshold: the rules at one threshold share it
            for t in {point[0] for point in points}:
                bone = case["volume"].to_native((case["bone"] >= t).astype(np.uint8))[0] > 0
                bone_dice[t] = 2 * (bone & truth_bone).sum() / (bone.sum() + truth_bone.sum())
            for point in points:
                lesions, kept = findings(case, point[0], 0.05, 2000.0, point[1])
                native = case["volume"].to_native(kept)[0]
                hit = set(np.unique(ids[native > 0]).tolist()) - {0}
                touched = set(np.unique(native[ids > 0]).tolist())
                c = counts[point]
                c["bone"].setdefault(i, []).append(bone_dice[point[0]])
                c["found"] += len(big & hit)
                c["big"] += len(big)
                c["fp"] += sum(1 for les in lesions if les.id not in touched)
                for k in big:
                    band = next(name for name, lo, hi in BANDS if lo <= float(rows[k]["diameter_mm"]) < hi)
                    for key, value in (("kind", rows[k]["kind"]), ("band", band)):
                        n = c[key].setdefault(value, [0, 0])
                        n[0] += k in hit
                        n[1] += 1
            print(f"background {i} seed {seed}: " + ", ".join(
                f"{p}: {counts[p]['found']}/{counts[p]['big']}" for p in points), flush=True)
    return counts


def main(build: Path, out: Path, seeds: int) -> None:
    counts = count_inserted(build, [build / "work"], out, seeds)
    print(markdown_table([{"symmetry rule": "off" if r is None else f"{r:g} HU",
                           "inserted >= 10 mm found": f"{c['found']}/{c['big']}",
                           **{f"{kind} found": n[0] for kind, n in sorted(c["kind"].items())},
                           "findings on no inserted lesion": c["fp"]} for (_, r), c in counts.items()]))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(Path(a[0]), Path(a[1]), int(a[2]) if len(a) > 2 else 6)
