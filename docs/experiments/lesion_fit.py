"""Can the recipe's network fit the lesions of one real background at all? NOT part of bonemet.

The build's first background (``chest_abdomen_dicom``) three times with 6 lesions (seeds 100-102, as the build makes
them), each copy its own patient; a run of the recipe's configuration (``WINDOW``, ``EPOCHS``, intensity
randomisation unless ``--no-aug``) on those 60 slices alone; then the member that trained on the first copy segments
it again: each lesion's largest probability and the share of its voxels at 0.5 or more. A lesion missed here is not
fitted even on its own training slices.

    .venv/bin/python docs/experiments/lesion_fit.py WINDOW EPOCHS OUT [--no-aug] [BUILD]
    .venv/bin/python docs/experiments/lesion_fit.py bone 60 /tmp/fit/bone60             # 6 min on 2 cores
    .venv/bin/python docs/experiments/lesion_fit.py multi 60 /tmp/fit/multi60 --no-aug  # 6 min
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

import bonemet.recipe as recipe_module
from bonemet.data.bmseg import merge_bmseg
from bonemet.markdown import markdown_table
from bonemet.phantom.synth import synthesize_from_ct
from bonemet.training.seg import train_segmentation

sys.path.insert(0, str(Path(__file__).parent))
from operating_point import segment  # noqa: E402


def main(window: str, epochs: int, out: Path, aug: bool, build: Path) -> None:
    recipe = replace(recipe_module.recipe_of(build), window=window, epochs=epochs, intensity_aug=aug)
    ct, bone = recipe.backgrounds[0]
    sources = []
    for c in range(3):
        copy = out / f"copy{c}"
        if not copy.exists():
            synthesize_from_ct(ct, bone, copy, lesions=6, seed=100 + c, formats=("bmseg",), patient="B0", window=window)
        sources.append((copy / "bmseg", f"c{c}", f"C{c}"))
    data = out / "mixed"
    if not data.exists():
        merge_bmseg(sources, data, {"window": window, "merged": [str(s[0]) for s in sources]})
    run = out / "seg"
    if not (run / "fold1" / "done.json").exists():
        train_segmentation(replace(recipe_module._seg_config(recipe, data), eval_every=epochs), run)
    folds = json.loads((run / "splits.json").read_text())["folds"]
    k = next(i for i, f in enumerate(folds) if "C0" in f["train_patients"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        synthesize_from_ct(ct, bone, Path(tmp) / "v", lesions=6, seed=100, formats=("volumes",), patient="B0")
        vol = Path(tmp) / "v" / "volumes" / "B0"
        case = segment(run, vol / "ct.nii.gz", members=[k])
        truth = np.asarray(nib.load(vol / "lesion_mask.nii.gz").dataobj)
        p = case["volume"].to_native(case["p"])[0]
        with open(Path(tmp) / "v" / "lesions.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                on = truth == int(r["lesion_id"])
                rows.append({"lesion": r["lesion_id"], "type": r["kind"], "diameter mm": r["diameter_mm"],
                             "mean HU": r["mean_hu"], "bone around HU": r["surrounding_bone_hu"],
                             f"member {k}: largest probability": round(float(p[on].max()), 3),
                             "voxels >= 0.5 %": round(100 * float(np.mean(p[on] >= 0.5)), 1)})
    print(markdown_table(rows))


if __name__ == "__main__":
    a = [x for x in sys.argv[1:] if not x.startswith("--")]
    main(a[0], int(a[1]), Path(a[2]), "--no-aug" not in sys.argv,
         Path(a[3]) if len(a) > 3 else Path("runs/default-model"))
