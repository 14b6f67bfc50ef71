"""Does the default model find the lesions it was trained on? NOT part of bonemet.

The build's first copy of each background (``background{i}-0``: 6 lesions, seed 100) is made again as a volume
(the same lesions: the same seed and the same lesion code), and the build's final model (``BUILD/work/all/seg``,
trained on it) segments it; for each lesion: type, size, HU, the largest lesion probability on it and the share
of its voxels at 0.5 or more. A lesion missed here is not learned, rather than not generalised.

    python docs/experiments/training_fit.py [BUILD]        # about a minute
"""

from __future__ import annotations

import csv
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


def main(build: Path) -> None:
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
            case = segment(build / "work" / "all" / "seg", vol / "ct.nii.gz")
            truth = np.asarray(nib.load(vol / "lesion_mask.nii.gz").dataobj)
            p = case["volume"].to_native(case["p"])[0]
            for r in lesions:
                on = truth == int(r["lesion_id"])
                rows.append({"background": i, "lesion": r["lesion_id"], "type": r["kind"],
                             "diameter mm": r["diameter_mm"], "mean HU": r["mean_hu"],
                             "bone around HU": r["surrounding_bone_hu"],
                             "largest probability": round(float(p[on].max()), 3),
                             "voxels >= 0.5 %": round(100 * float(np.mean(p[on] >= 0.5)), 1)})
    print(markdown_table(rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/default-model"))
