"""A teacher ensemble's side of distillation: which member a student starts from, and the threshold that makes
a student's lesion masks most like the ensemble's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..data.bmseg import SegSlice
from ..data.datasets import SegmentationDataset
from ..errors import BonemetError
from ..evaluation.metrics import confusion, pooled_f1
from ..models import lesion_head
from ..runs.checkpoint import finished_checkpoint
from ..runs.seg import member_probs, predict_probs
from .loop import read_rows


def heldout_member(teacher: Path, n_members: int) -> dict:
    """The member with the best lesion F1 on its own fold's held-out patients (validation patients, never the
    run's test patients) at the epoch of its kept checkpoint (last.pt: the last epoch, always scored; best.pt: the
    epoch of best inner-validation F1), from ``fold<k>/metrics.csv``; returns {"member", "held-out F1"}."""
    scores = []
    for k in range(n_members):
        fold = teacher / f"fold{k}"
        rows = read_rows(fold / "metrics.csv", 10**9)
        if finished_checkpoint(fold, f"teacher member {k}").name == "best.pt" and rows:
            sel = [float(r.get("select_lesion_f1") or "nan") for r in rows]
            rows = rows[:int(np.nanargmax(sel)) + 1] if not np.isnan(sel).all() else rows
        f1 = rows[-1].get("heldout_lesion_f1") if rows else None
        if f1 in (None, "", "nan"):
            raise BonemetError(f"teacher member {k} has no held-out lesion F1 at its kept epoch in metrics.csv "
                               "(train with --eval-every 1, or give a member number or auto)", fold)
        scores.append(float(f1))
    return {"member": int(np.argmax(scores)), "held-out F1": [round(v, 4) for v in scores]}


def closest_member(members: list[torch.nn.Module], ds: SegmentationDataset,
                   batch_size: int) -> tuple[dict, np.ndarray]:
    """The member whose lesion masks agree best (pixel F1) with the ensemble's on ``ds``, unlabelled slices
    (no test label picks it); returns ({"member", "agreement F1"}, the ensemble's lesion probabilities)."""
    alone, (ensemble, _) = member_probs(members, ds, batch_size)
    on = ensemble >= 0.5
    f1 = [pooled_f1([confusion(lesion >= 0.5, on)]) for lesion, _ in alone]
    return {"member": int(np.argmax(f1)), "agreement F1": [round(v, 4) for v in f1]}, ensemble


def calibration_patients(slices: list[SegSlice], share: float, seed: int) -> set[str]:
    """``share`` of the patients of ``slices`` (at least one, never all), drawn with ``seed``."""
    patients = sorted({str(s.patient) for s in slices})
    n = min(len(patients) - 1, max(1, round(share * len(patients)))) if share > 0 else 0
    order = np.random.default_rng(seed).permutation(len(patients))
    return {patients[i] for i in order[:n]}


THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.01), 2)  # the student lesion thresholds calibration may choose


CALIBRATIONS = ("agreement", "rate")


def choose_threshold(student: np.ndarray, teacher: np.ndarray, method: str = "agreement") -> dict:
    """The student lesion threshold (one of ``THRESHOLDS``) that makes its masks most like ``teacher >= 0.5``.

    ``agreement``: the best pixel F1 between the two masks. ``rate``: as many positive pixels as the teacher
    (a count, steadier than the maximum of a flat F1 curve on a few patients). Both are reported.
    """
    on = teacher >= 0.5

    def at_or_above(p: np.ndarray) -> np.ndarray:
        """How many of ``p`` are >= each threshold."""
        return (p.size - np.searchsorted(np.sort(p, axis=None), THRESHOLDS, side="left")).astype(np.float64)

    # student pixels at or above each threshold, split by the teacher's decision
    above_on, above_off = at_or_above(student[on]), at_or_above(student[~on])
    f1 = 2 * above_on / np.maximum(above_on + above_off + on.sum(), 1)
    k_agree = int(np.argmax(f1))
    k_rate = int(np.argmin(np.abs(above_on + above_off - on.sum())))
    k = k_agree if method == "agreement" else k_rate
    half = int(np.flatnonzero(THRESHOLDS == 0.5)[0])
    return {"method": method, "threshold": float(THRESHOLDS[k]), "agreement F1": round(float(f1[k]), 4),
            "agreement F1 at 0.5": round(float(f1[half]), 4), "agreement threshold": float(THRESHOLDS[k_agree]),
            "rate threshold": float(THRESHOLDS[k_rate]), "teacher positive pixels": int(on.sum()),
            "student positive pixels": int(above_on[k] + above_off[k])}


def calibrate_student(model: torch.nn.Module, teachers: list[torch.nn.Module], ds: SegmentationDataset,
                      batch_size: int, method: str = "agreement", teacher_lesion: np.ndarray | None = None) -> dict:
    """Shift the student's lesion-head bias so that 0.5 on its output is the threshold (``choose_threshold``)
    whose masks are most like the teacher's (at 0.5) on ``ds``: slices neither model trained on, labelled by nobody.

    A distilled student is typically more confident than the ensemble on slices it has not seen (more
    false-positive pixels); this moves its decision, not its ranking. The shift is exact:
    sigmoid(z - logit(t)) >= 0.5 exactly when sigmoid(z) >= t, so predict and evaluate need nothing new.
    """
    t_lesion = predict_probs(teachers, ds, batch_size)[0] if teacher_lesion is None else teacher_lesion
    s_lesion, _ = predict_probs([model], ds, batch_size)
    chosen = choose_threshold(s_lesion, t_lesion, method)
    threshold = chosen["threshold"]
    with torch.no_grad():
        lesion_head(model).bias -= math.log(threshold / (1 - threshold))
    return {**chosen, "slices": len(ds), "patients": sorted({str(s.patient) for s in ds.slices})}


def other_calibration(cal: dict) -> tuple[str, float] | None:
    """(method, threshold) of the calibration method a student's record did not apply, where it chose another
    threshold; None otherwise (no calibration, or a record from before both were kept)."""
    if "rate threshold" not in cal:
        return None
    method = "rate" if cal.get("method", "agreement") == "agreement" else "agreement"
    t = cal[f"{method} threshold"]
    return None if t == cal["threshold"] else (method, t)


def shift_threshold(probs: np.ndarray, applied: float, other: float) -> np.ndarray:
    """Probabilities of a student calibrated at ``applied`` as if calibrated at ``other``: the same exact
    shift of the logits as ``calibrate_student`` (so ``probs`` > 0.5 there means sigmoid(z) > ``other``)."""
    p = np.clip(probs.astype(np.float64), 1e-12, 1 - 1e-12)
    z = np.log(p / (1 - p)) + math.log(applied / (1 - applied)) - math.log(other / (1 - other))
    return (1 / (1 + np.exp(-z))).astype(np.float32)
