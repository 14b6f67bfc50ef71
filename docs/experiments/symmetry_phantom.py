"""The symmetry rule (``predict --symmetry-hu D``), or with ``--contrast`` the contrast rule (``predict
--min-contrast-hu D``), on the phantom test patients of a ``bonemet models build``, which have true lesion masks:
lesion-level recall and false positives per scan of the build's model with the rule off and on, as the model
card's phantom table counts them: NOT part of bonemet.

    .venv/bin/python docs/experiments/symmetry_phantom.py runs/default-model [D] [--contrast]  # D: 25 HU by default
"""

from __future__ import annotations

import sys
from pathlib import Path

from bonemet.inference.predict import PredictOptions, Predictor, analyse
from bonemet.inference.scan import read_scan


def main(build: Path, tolerance: float, option: str = "symmetry_hu") -> None:
    test, model = build / "work" / "data" / "phantom-test" / "volumes", build / "work" / "all" / "seg"
    print(f"| {'symmetry' if option == 'symmetry_hu' else 'contrast'} rule | per patient: true / found / false "
          "positives | lesion recall | false positives per scan |")
    print("| --- | --- | --- | --- |")
    for rule in (None, tolerance):
        predictor, rows = None, []
        for case in sorted(test.iterdir()):
            opts = PredictOptions(seg=model, viewer=False, dicom_seg=False, truth=case / "lesion_mask.nii.gz",
                                  **{option: rule})
            predictor = predictor or Predictor(opts)  # the members, loaded once
            t = analyse(read_scan(case / "ct.nii.gz"), opts, predictor.seg, predictor.clf).summary["truth"]
            rows.append((t["true_lesions"], t["found"], t["false_positive_lesions"]))
        cells = ", ".join(f"{a} / {b} / {c}" for a, b, c in rows)
        recall = sum(r[1] for r in rows) / max(1, sum(r[0] for r in rows))
        print(f"| {'off' if rule is None else f'{rule:g} HU'} | {cells} | {recall:.3f} | "
              f"{sum(r[2] for r in rows) / len(rows):.2f} |")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--contrast"]
    main(Path(args[0]) if args else Path("runs/default-model"), float(args[1]) if len(args) > 1 else 25.0,
         "min_contrast_hu" if "--contrast" in sys.argv else "symmetry_hu")
