"""Segmentation metrics of the thesis (eq. 4.8-4.14) and beyond: lesion-level detection, bootstrap CIs.

Pixel metrics pool the confusion counts over all pixels of all test images (the thesis' way). Dice
is the mean over images of the per-image Dice; an image whose truth and prediction are both empty
scores 1 (``empty_dice=0`` mimics the reference code's epsilon, which scores it 0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

PIXEL_METRICS = ("F1", "Dice", "IoU", "Acc", "Spec", "Sens", "Prec")
SIZE_BINS = ((0, 50, "< 50 px"), (50, 200, "50-200 px"), (200, np.inf, ">= 200 px"))


@dataclass
class Counts:
    """Pixel confusion counts; they add up over images and patients."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)


def confusion(pred: np.ndarray, truth: np.ndarray) -> Counts:
    """Counts of boolean arrays of any (equal) shape."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    return Counts(tp, fp, fn, int(pred.size) - tp - fp - fn)


def _ratio(num: float, den: float) -> float:
    return float(num) / den if den > 0 else float("nan")


def percent(v: float | None) -> str:
    """A score in [0, 1] as a percentage for tables; ``n/a`` for a missing one."""
    return "n/a" if v is None or np.isnan(v) else f"{100 * v:.2f}"


def pixel_scores(c: Counts) -> dict[str, float]:
    """F1, IoU, accuracy, specificity, sensitivity, precision from pooled counts.

    F1 and IoU are 1 when truth and prediction are both empty; a ratio with nothing to count
    (sensitivity without positives, precision without predictions) is NaN.
    """
    both_empty = c.tp + c.fp + c.fn == 0
    return {
        "F1": 1.0 if both_empty else _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn),
        "IoU": 1.0 if both_empty else _ratio(c.tp, c.tp + c.fp + c.fn),
        "Acc": _ratio(c.tp + c.tn, c.tp + c.tn + c.fp + c.fn),
        "Spec": _ratio(c.tn, c.tn + c.fp),
        "Sens": _ratio(c.tp, c.tp + c.fn),
        "Prec": _ratio(c.tp, c.tp + c.fp),
    }


def pooled_f1(counts: Iterable[Counts]) -> float:
    """Pixel F1 of the summed counts (of slices or patients): the thesis' pooled F1."""
    return pixel_scores(sum(counts, Counts()))["F1"]


def dice_image(pred: np.ndarray, truth: np.ndarray, empty_dice: float = 1.0) -> float:
    """2TP / (2TP + FP + FN) of one image; ``empty_dice`` when both are empty."""
    c = confusion(pred, truth)
    den = 2 * c.tp + c.fp + c.fn
    return empty_dice if den == 0 else 2 * c.tp / den


def segmentation_scores(preds: Iterable[np.ndarray], truths: Iterable[np.ndarray],
                        empty_dice: float = 1.0) -> dict[str, float]:
    """All thesis metrics over a set of images: pooled pixel metrics plus mean per-image Dice."""
    total, dices = Counts(), []
    for p, t in zip(preds, truths):
        total = total + confusion(p, t)
        dices.append(dice_image(p, t, empty_dice))
    out = pixel_scores(total)
    out["Dice"] = float(np.mean(dices)) if dices else float("nan")
    return {k: out[k] for k in PIXEL_METRICS}


@dataclass
class Detection:
    """Lesion-level counts: 2D connected components of the truth found (overlapped) or not."""

    lesions: int = 0
    found: int = 0
    false_positives: int = 0
    slices: int = 0
    by_size: dict[str, list[int]] = field(default_factory=lambda: {n: [0, 0] for _, _, n in SIZE_BINS})

    def __add__(self, o: "Detection") -> "Detection":
        bins = {k: [self.by_size[k][0] + o.by_size[k][0], self.by_size[k][1] + o.by_size[k][1]] for k in self.by_size}
        return Detection(self.lesions + o.lesions, self.found + o.found,
                         self.false_positives + o.false_positives, self.slices + o.slices, bins)

    def summary(self) -> dict[str, float]:
        out = {"lesions": self.lesions, "found": self.found,
               "lesion sensitivity": _ratio(self.found, self.lesions),
               "FP per slice": _ratio(self.false_positives, self.slices)}
        for _, _, name in SIZE_BINS:
            n, f = self.by_size[name]
            out[f"sensitivity {name}"] = _ratio(f, n)
            out[f"lesions {name}"] = n
        return out


def detect(pred: np.ndarray, truth: np.ndarray) -> Detection:
    """Lesion-level detection on one 2D slice (8-connected components)."""
    structure = np.ones((3, 3), bool)
    tlab, nt = ndimage.label(truth, structure)
    plab, npred = ndimage.label(pred, structure)
    det = Detection(lesions=nt, slices=1)
    found = 0
    if nt:
        sizes = np.bincount(tlab.ravel(), minlength=nt + 1)[1:]
        hit = np.zeros(nt + 1, bool)
        hit[np.unique(tlab[pred & (tlab > 0)])] = True
        for lab in range(1, nt + 1):
            name = next(n for lo, hi, n in SIZE_BINS if lo <= sizes[lab - 1] < hi)
            det.by_size[name][0] += 1
            det.by_size[name][1] += int(hit[lab])
        found = int(hit[1:].sum())
    fp = 0
    if npred:
        touched = np.zeros(npred + 1, bool)
        touched[np.unique(plab[truth & (plab > 0)])] = True
        fp = int(npred - touched[1:].sum())
    det.found, det.false_positives = found, fp
    return det


LOCALISED_SHARE = 0.25  # a finding marks a true lesion when at least this share of its voxels lie in true lesions


def lesions_found(kept: np.ndarray, truth_ids: np.ndarray, voxels: Mapping[int, int],
                  share: float = LOCALISED_SHARE) -> tuple[set[int], set[int], set[int]]:
    """Which true lesions (ids of ``truth_ids``, 0 = none) the kept components (ids of ``kept``, on the same grid;
    ``voxels``: each one's size) find in 3D: those any component overlaps; those a *localised* component overlaps,
    one with at least ``share`` of its voxels in true lesions; and the ids of the components that are not localised
    (off target). A 100 mL stretch of normal bone that touches a 1 mL lesion finds it by the first rule, not by the
    second, and is off target."""
    inside = truth_ids > 0
    k, t = kept[inside], truth_ids[inside]
    in_truth = np.bincount(k, minlength=max(voxels, default=0) + 1)  # each component's voxels in true lesions
    localised = [i for i, n in voxels.items() if in_truth[i] >= share * n]
    hit = set(np.unique(t[k > 0]).tolist())
    hit_localised = set(np.unique(t[np.isin(k, localised)]).tolist())
    return hit, hit_localised, set(voxels) - set(localised)


def bootstrap_ci(groups: Mapping[str, object], statistic: Callable[[list[object]], float], n: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of ``statistic`` over resamples of the groups (patients) with replacement."""
    keys = sorted(groups)
    if len(keys) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        pick = rng.integers(0, len(keys), len(keys))
        v = statistic([groups[keys[i]] for i in pick])
        if not np.isnan(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def f1_ratio_ci(reference: Mapping[str, Counts], other: Mapping[str, Counts], n: int = 1000, seed: int = 0,
                level: float = 0.95) -> tuple[float, float, float]:
    """Pooled pixel F1 of ``other`` over that of ``reference`` on the same patients, with a paired percentile
    CI: each resample draws patients with replacement and scores both models on the same draw.

    Returns (ratio, low, high); NaN where the reference's F1 is 0. Pairing matters: the two models err on
    the same hard patients, so the ratio varies much less than either F1 does.
    """
    if set(reference) != set(other):
        raise ValueError("the two models were scored on different patients")

    def ratio(pairs: list[tuple[Counts, Counts]]) -> float:
        ref = pooled_f1([a for a, _ in pairs])
        return pooled_f1([b for _, b in pairs]) / ref if ref > 0 else float("nan")

    pairs = {p: (reference[p], other[p]) for p in reference}
    lo, hi = bootstrap_ci(pairs, ratio, n=n, seed=seed, level=level)
    return ratio(list(pairs.values())), lo, hi


CLS_METRICS = ("Accuracy", "F1", "Recall", "Precision", "Specificity", "ROC-AUC")


def classification_scores(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Slice (or patient) classification scores, positive = metastatic; ROC-AUC is NaN with one class."""
    from sklearn.metrics import roc_auc_score

    y, p = np.asarray(y).astype(bool), np.asarray(p, float)
    s = pixel_scores(confusion(p >= threshold, y))
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")
    f1 = s["F1"] if y.any() or (p >= threshold).any() else float("nan")
    return {"Accuracy": s["Acc"], "F1": f1, "Recall": s["Sens"], "Precision": s["Prec"], "Specificity": s["Spec"],
            "ROC-AUC": auc}
