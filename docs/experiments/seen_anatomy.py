"""New lesions in anatomy a member has seen against anatomy it has not: NOT part of bonemet.

The build's test lesions (``BUILD/work/data/inserted-test{i}``: 8 lesions per background, a seed no training used)
are segmented by member ``K`` of two runs of one recipe: the run that left background i out
(``LOO/without-background{i}/seg``, from ``recipe_variants.py``) and a run that trained on every background
(``SEEN``, from ``recipe_variants.py ... --seen``). For each lesion of 10 mm or more: the largest probability and
the share of voxels at 0.5 or more in each, and whether ``predict``'s defaults keep a finding on it (threshold 0.5,
components from 0.05 mL, the 3 mm bone gate, the metal rule). One member each, so that a run whose second member
is still training can be compared.

    python docs/experiments/seen_anatomy.py LOO SEEN [K] [BUILD]
    python docs/experiments/seen_anatomy.py /tmp/v/m60p/work /tmp/v/m60s/work/with-every-background/seg 0
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from bonemet.markdown import markdown_table
from bonemet.recipe import recipe_of

sys.path.insert(0, str(Path(__file__).parent))
from operating_point import findings, segment  # noqa: E402


def main(loo: Path, seen: Path, member: int, build: Path) -> None:
    rows, found = [], {"unseen": 0, "seen": 0}
    for i, _ in enumerate(recipe_of(build).backgrounds):
        case_dir = build / "work" / "data" / f"inserted-test{i}"
        vol = case_dir / "volumes" / "T"
        truth = np.asarray(nib.load(vol / "lesion_mask.nii.gz").dataobj)
        with open(case_dir / "lesions.csv", newline="") as fh:
            lesions = [r for r in csv.DictReader(fh) if float(r["diameter_mm"]) >= 10.0]
        out = {}
        for name, run in (("unseen", loo / f"without-background{i}" / "seg"), ("seen", seen)):
            case = segment(run, vol / "ct.nii.gz", members=[member])
            _, kept = findings(case, 0.5, 0.05, 2000.0)
            out[name] = (case["volume"].to_native(case["p"])[0], case["volume"].to_native(kept)[0])
        for r in lesions:
            on = truth == int(r["lesion_id"])
            row = {"background": i, "lesion": r["lesion_id"], "type": r["kind"], "diameter mm": r["diameter_mm"]}
            for name, (p, kept) in out.items():
                hit = bool((kept[on] > 0).any())
                found[name] += hit
                row[f"{name}: largest / >= 0.5 %"] = f"{p[on].max():.2f} / {100 * np.mean(p[on] >= 0.5):.0f} %"
                row[f"{name}: found"] = "yes" if hit else "no"
            rows.append(row)
    print(markdown_table(rows))
    print(f"member {member}: found {found['unseen']}/{len(rows)} where it never saw the background, "
          f"{found['seen']}/{len(rows)} where it did")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(Path(a[0]), Path(a[1]), int(a[2]) if len(a) > 2 else 0,
         Path(a[3]) if len(a) > 3 else Path("runs/default-model"))
