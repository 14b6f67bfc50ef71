"""What the symmetry rule (``predict --symmetry-hu D``) costs in lesions: many new lesions inserted into each
left-out background of a ``bonemet models build`` (SEEDS x 8 per background, seeds no training or test used), each
copy segmented once by the model that never saw that background, then the lesions found again with the rule off
and at each D (``operating_point.findings``, the metal rule on): inserted lesions of 10 mm or more found, and
findings that overlap no inserted lesion: NOT part of bonemet.

    .venv/bin/python docs/experiments/symmetry_inserted.py runs/default-model OUT [SEEDS]    # SEEDS: 6 by default
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from operating_point import findings, segment
from bonemet.markdown import markdown_table
from bonemet.phantom.synth import synthesize_from_ct
from bonemet.recipe import recipe_of

RULES = (None, 25.0, 50.0)


def main(build: Path, out: Path, seeds: int) -> None:
    counts = {rule: {"found": 0, "big": 0, "fp": 0} for rule in RULES}
    by_kind: dict = {}
    for i, (ct, bone) in enumerate(recipe_of(build).backgrounds):
        for seed in range(2000, 2000 + seeds):
            case_dir = out / f"background{i}-{seed}"
            if not case_dir.exists():
                synthesize_from_ct(ct, bone, case_dir, lesions=8, seed=seed, formats=("volumes",), patient="T")
            vol = case_dir / "volumes" / "T"
            case = segment(build / "work" / f"without-background{i}" / "seg", vol / "ct.nii.gz")
            ids = np.asarray(nib.load(vol / "lesion_mask.nii.gz").dataobj)
            with open(case_dir / "lesions.csv", newline="") as fh:
                rows = {int(r["lesion_id"]): r for r in csv.DictReader(fh)}
            big = {k for k, r in rows.items() if float(r["diameter_mm"]) >= 10.0}
            for rule in RULES:
                lesions, kept = findings(case, 0.5, 0.05, 2000.0, rule)
                native = case["volume"].to_native(kept)[0]
                hit = set(np.unique(ids[native > 0]).tolist()) - {0}
                touched = set(np.unique(native[ids > 0]).tolist())
                counts[rule]["found"] += len(big & hit)
                counts[rule]["big"] += len(big)
                counts[rule]["fp"] += sum(1 for les in lesions if les.id not in touched)
                for k in big & hit:
                    by_kind.setdefault(rows[k]["kind"], {r: 0 for r in RULES})[rule] += 1
            print(f"background {i} seed {seed}: " + ", ".join(
                f"{'off' if r is None else r}: {counts[r]['found']}/{counts[r]['big']}" for r in RULES), flush=True)
    print(markdown_table([{"symmetry rule": "off" if r is None else f"{r:g} HU",
                           "inserted >= 10 mm found": f"{c['found']}/{c['big']}",
                           **{f"{kind} found": n[r] for kind, n in sorted(by_kind.items())},
                           "findings on no inserted lesion": c["fp"]} for r, c in counts.items()]))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(Path(a[0]), Path(a[1]), int(a[2]) if len(a) > 2 else 6)
