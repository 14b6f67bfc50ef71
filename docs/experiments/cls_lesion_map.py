"""Held-out slice ROC-AUC of a ``cls train --masks`` run: its classifier head vs its learned lesion map.

Not a bonemet feature: a reading aid for docs/classification-phantom.md. Usage::

    python docs/experiments/cls_lesion_map.py RUN        # e.g. runs/exp/cls-r

Scores the run's test patients three ways: the head's softmax (what 'cls evaluate' reports), the
maximum of the lesion map, and its log-sum-exp (a soft maximum).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from bonemet.data.classification import load_classification
from bonemet.data.datasets import ClassificationDataset
from bonemet.runs.cls import load_cls_run


def main(run: str) -> None:
    cfg, split, (model,) = load_cls_run(run)
    if not cfg.masks:
        sys.exit(f"{run}: not trained with --masks (no lesion map)")
    test_p = set(split["test_patients"])
    test = [s for s in load_classification(cfg.data).slices if s.patient in test_p]
    ds = ClassificationDataset(test, model.input_size, 3, crop=cfg.crop, context=cfg.context)
    scores: dict[str, list[torch.Tensor]] = {"head": [], "lesion map max": [], "lesion map logsumexp": []}
    with torch.no_grad():
        for x, _ in DataLoader(ds, batch_size=32):
            features = model.feature_map(x)
            lesion_map = model.lesion_head(features).flatten(1)
            scores["head"].append(torch.softmax(model.head(features), 1)[:, 1])
            scores["lesion map max"].append(lesion_map.amax(1))
            scores["lesion map logsumexp"].append(torch.logsumexp(lesion_map, 1))
    y = np.array([s.label for s in test])
    for name, parts in scores.items():
        print(f"{name}: held-out slice ROC-AUC {roc_auc_score(y, torch.cat(parts).numpy()):.4f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
