"""Which phantom lesions a slice classifier finds: held-out ROC-AUC per lesion kind, site and size.

Not a bonemet feature: a reading aid for docs/classification-phantom.md. Each group's AUC ranks its
metastatic slices against *all* normal held-out slices, so the groups are comparable. Usage::

    python docs/experiments/cls_by_lesion.py RUN PHANTOM      # e.g. runs/exp/cls-l runs/exp/phantom-cls96

RUN is a 'bonemet cls train' run evaluated with 'bonemet cls evaluate' (RUN/eval/predictions.csv);
PHANTOM is the 'bonemet data synth' folder it trained on (lesions.csv). Needs pandas.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score


def main(run: Path, phantom: Path) -> None:
    p = pd.read_csv(run / "eval" / "predictions.csv")
    p["k"] = p["slice"].str.extract(r"_s(\d+)\.png$", expand=False).astype(int)
    lesions = pd.read_csv(phantom / "lesions.csv")

    def on_slice(row: pd.Series) -> pd.Series:
        hit = lesions[(lesions.patient == row.patient) & (lesions.slice_start <= row.k) & (lesions.slice_end >= row.k)]
        return pd.Series({"kind": "+".join(sorted(set(hit.kind))), "site": "+".join(sorted(set(hit.site))),
                          "diameter": hit.diameter_mm.max() if len(hit) else 0.0})

    pos = p[p.label == 1].join(p[p.label == 1].apply(on_slice, axis=1))
    neg = p[p.label == 0].probability.to_numpy()
    pos["size"] = pd.cut(pos.diameter, [0, 15, 25, 35, 200], labels=["<=15 mm", "15-25 mm", "25-35 mm", ">35 mm"])
    print(f"all: {len(pos)} metastatic vs {len(neg)} normal slices, AUC {roc_auc_score(p.label, p.probability):.3f}")
    print("| group | value | metastatic slices | AUC against all normal slices |\n| --- | --- | --- | --- |")
    for col in ("kind", "site", "size"):
        for value, g in pos.groupby(col, observed=True):
            if len(g) >= 5:
                y = np.r_[np.ones(len(g)), np.zeros(len(neg))]
                print(f"| {col} | {value} | {len(g)} | {roc_auc_score(y, np.r_[g.probability, neg]):.3f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
