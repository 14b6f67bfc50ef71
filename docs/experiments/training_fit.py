"""Does the default model find the lesions it was trained on? NOT part of bonemet.

The build's first copy of each background (``background{i}-0``: 6 lesions, seed 100) is made again as a volume
(the same lesions: the same seed and the same lesion code), and the build's final model (``BUILD/work/all/seg``,
trained on it) segments it; for each lesion: type, size, HU, the largest lesion probability on it and the share
of its voxels at 0.5 or more, for the ensemble and for each member alone. The folds split patients, so a member
whose fold validated on that background never trained on it ("trained by member" says which did;
"member k": its largest probability / share of voxels at 0.5 or more): a lesion the members that
trained on it miss is not learned, rather than not generalised.

    python docs/experiments/training_fit.py [BUILD] [RUN]      # about a minute; RUN: another run on the same data
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from bonemet.markdown import markdown_table
from bonemet.phantom.synth import synthesize_from_ct
from bonemet.recipe import recipe_of

sys.path.insert(0, str(Path(__file__).parent))
from operating_point import segment  # noqa: E402


def main(build: Path, run: Path | None = None) -> None:
    run = run or build / "work" / "all" / "seg"
    folds = json.loads((run / "splits.json").read_text())["folds"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (ct, bone) in enumerate(recipe_of(build).backgrounds):
            out = Path(tmp) / f"copy{i}"
            synthesize_from_ct(ct, bone, out, lesions=6, seed=100, formats=("volumes",), patient=f"B{i}")
            with open(out / "lesions.csv", newline="") as fh, \
                    open(build / "work" / "data" / f"background{i}-0" / "lesions.csv", newline="") as ref:
                lesions = list(csv.DictReader(fh))
                assert [r["center_voxel"] for r in lesions] == [r["center_voxel"] for r in csv.DictReader(ref)], \
                    "the lesions differ from the build's: the lesion code changed since"
            vol = out / "volumes" / f"B{i}"
            case = segment(run, vol / "ct.nii.gz")
            truth = np.asarray(nib.load(vol / "lesion_mask.nii.gz").dataobj)
            p = case["volume"].to_native(case["p"])[0]
            alone = [segment(run, vol / "ct.nii.gz", members=[k]) for k in range(len(folds))]
            alone = [c["volume"].to_native(c["p"])[0] for c in alone]
            seen = [f"B{i}" in f["train_patients"] for f in folds]
            for r in lesions:
                on = truth == int(r["lesion_id"])
                rows.append({"background": i, "lesion": r["lesion_id"], "type": r["kind"],
                             "diameter mm": r["diameter_mm"], "mean HU": r["mean_hu"],
                             "bone around HU": r["surrounding_bone_hu"],
                             "largest probability": round(float(p[on].max()), 3),
                             "voxels >= 0.5 %": round(100 * float(np.mean(p[on] >= 0.5)), 1),
                             "trained by member": " ".join(str(k) for k in range(len(folds)) if seen[k]),
                             **{f"member {k}": f"{float(q[on].max()):.2f} / {100 * float(np.mean(q[on] >= 0.5)):.0f} %"
                                for k, q in enumerate(alone)}})
    print(markdown_table(rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/default-model"),
         Path(sys.argv[2]) if len(sys.argv) > 2 else None)
