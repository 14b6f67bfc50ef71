"""Train / validation / test splits, saved as JSON in the run folder.

Default: patient-level (grouped) K-fold with scikit-learn, after an optional held-out set of test
patients that no fold model ever trains on (what the ensemble is scored on). ``paper`` reproduces
the public reference code's slice-level ``KFold(5, shuffle=True, random_state=42)`` over file names
sorted alphabetically: slices of one patient then sit in train and test, which inflates scores, so
every result made with it is labelled as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, KFold, StratifiedGroupKFold

from ..errors import BonemetError
from ..fileio import read_json, write_json

PAPER_LABEL = "paper (slice-level KFold(5, shuffle=True, random_state=42); patients leak across folds)"


def patient_splits(
    items: Sequence[str],
    patients: Sequence[str | None],
    folds: int = 5,
    test_fraction: float = 0.0,
    seed: int = 0,
    labels: Sequence[int] | None = None,
    always: Sequence[str] = (),
) -> dict[str, Any]:
    """Patient-level K-fold over ``items`` (slice names), with optional held-out test patients.

    ``folds=1`` gives one "fold" that trains on every non-test patient (no validation part).

    ``always``: patients in the training part of every fold, never in a validation or test part (scarce data
    every member of an ensemble should learn from, when the ensemble is measured on data outside the run).

    ``labels`` (one per item, e.g. patient status) stratifies the test patients and the folds. Every fold lists
    its train and validation patients and items; no patient is in two parts of one fold, and no
    test patient is in any fold.
    """
    if len(items) != len(patients):
        raise ValueError("items and patients differ in length")
    if any(p is None for p in patients):
        raise BonemetError("patient-level splits need a patient for every slice (or use --protocol paper)")
    unknown = sorted(set(always) - set(patients))
    if unknown:
        raise BonemetError(f"patients to train on in every fold are not in the data: {', '.join(unknown[:5])}")
    items_arr, groups = np.asarray(items), np.asarray(patients)
    shared = np.isin(groups, list(always))
    shared_idx = np.flatnonzero(shared)  # in every fold's training part
    unique = sorted(set(patients) - set(always))
    n_test = int(round(test_fraction * len(unique))) if test_fraction > 0 else 0
    if test_fraction > 0 and n_test == 0:
        n_test = 1
    if len(unique) - n_test < folds:
        raise BonemetError(f"{len(unique)} patients cannot give {folds} folds after {n_test} test patients")
    rest = np.flatnonzero(~shared)
    test_patients: list[str] = []
    if n_test:
        if labels is not None:  # keep the classes' proportions among test patients
            test_patients = _stratified_patients(groups[rest], np.asarray(labels)[rest], n_test, seed)
        else:
            gss = GroupShuffleSplit(n_splits=1, test_size=n_test, random_state=seed)
            _, test_idx = next(gss.split(items_arr[rest], groups=groups[rest]))
            test_patients = sorted(set(groups[rest][test_idx]))
        rest = np.flatnonzero(~np.isin(groups, test_patients) & ~shared)
    if folds == 1:  # one model on every non-test patient (the thesis' 80/20 classification split)
        split_iter = iter([(np.arange(len(rest)), np.arange(0))])
    elif labels is not None:
        y = np.asarray(labels)[rest]
        splitter: Any = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        split_iter = splitter.split(items_arr[rest], y, groups=groups[rest])
    else:
        splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        split_iter = splitter.split(items_arr[rest], groups=groups[rest])
    fold_list = []
    for tr, va in split_iter:
        tr_idx, va_idx = np.concatenate([rest[tr], shared_idx]), rest[va]
        fold_list.append({
            "train_patients": sorted(set(groups[tr_idx])), "val_patients": sorted(set(groups[va_idx])),
            "train": sorted(items_arr[tr_idx].tolist()), "val": sorted(items_arr[va_idx].tolist()),
        })
    test_items = sorted(items_arr[np.isin(groups, test_patients)].tolist())
    return {"protocol": "patient", "label": "patient-level grouped K-fold", "folds": fold_list,
            "test_patients": test_patients, "test": test_items, "seed": seed, "k": folds,
            "always_train_patients": sorted(always),
            "n_items": len(items), "n_patients": len(set(patients))}


def add_inner_validation(split: dict[str, Any], fraction: float, seed: int) -> None:
    """Carve inner-validation patients (for checkpoint selection) out of each fold's training patients."""
    rng = np.random.default_rng(seed)
    for fold in split["folds"]:
        pats = [p for p in fold["train_patients"] if p not in split.get("always_train_patients", [])]
        if len(pats) < 2:
            raise BonemetError("--select best needs at least 2 training patients per fold")
        n_inner = min(len(pats) - 1, max(1, int(round(fraction * len(pats)))))
        inner = sorted(rng.choice(pats, n_inner, replace=False).tolist())
        fold["inner_val_patients"] = inner
        fold["fit_patients"] = sorted(set(fold["train_patients"]) - set(inner))


def _stratified_patients(groups: np.ndarray, labels: np.ndarray, n_test: int, seed: int) -> list[str]:
    """``n_test`` patients drawn per class (patient label = the max of its items' labels)."""
    rng = np.random.default_rng(seed)
    plabel = {g: int(labels[groups == g].max()) for g in sorted(set(groups.tolist()))}
    classes = sorted(set(plabel.values()), reverse=True)  # positives first: a test set needs them
    chosen: list[str] = []
    for i, c in enumerate(classes):
        members = [g for g, v in plabel.items() if v == c]
        share = len(members) / len(plabel)
        want = n_test - len(chosen) if i == len(classes) - 1 else max(1, int(round(share * n_test)))
        want = min(want, len(members) - 1) if len(members) > 1 else 0
        chosen += rng.choice(members, size=max(0, want), replace=False).tolist()
    return sorted(chosen)


def paper_splits(items: Sequence[str], folds: int = 5) -> dict[str, Any]:
    """The reference code's slice-level split, over names sorted alphabetically."""
    names = np.asarray(sorted(items))
    fold_list = [{"train": names[tr].tolist(), "val": names[va].tolist()}
                 for tr, va in KFold(n_splits=folds, shuffle=True, random_state=42).split(names)]
    return {"protocol": "paper", "label": PAPER_LABEL, "folds": fold_list, "test_patients": [], "test": [],
            "seed": 42, "k": folds, "n_items": len(names)}


def check_no_leakage(split: dict[str, Any]) -> None:
    """Raise if a test patient is in a fold, or a patient is in a fold's train and validation parts."""
    test = set(split.get("test_patients", []))
    for i, fold in enumerate(split["folds"]):
        train, val = set(fold.get("train_patients", [])), set(fold.get("val_patients", []))
        if train & test or val & test:
            raise AssertionError(f"fold {i}: test patients {sorted((train | val) & test)} in a fold")
        if train & val:
            raise AssertionError(f"fold {i}: patients {sorted(train & val)} in train and validation")


def save_splits(split: dict[str, Any], path: str | Path) -> Path:
    """Write a split to JSON (atomically)."""
    write_json(path, split)
    return Path(path)


def load_splits(path: str | Path) -> dict[str, Any]:
    """Read a split JSON written by :func:`save_splits`."""
    split = read_json(path, "split file")
    if not isinstance(split, dict) or not isinstance(split.get("folds"), list):
        raise BonemetError("not a bonemet split file (no list of folds)", path)
    return split
