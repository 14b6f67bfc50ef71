"""How a distilled student compares with its teacher: the ensemble, the student and each member alone on the same
slices, with the F1 ratios' paired bootstrap intervals and the cost per slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.bmseg import load_bmseg
from ..markdown import markdown_table
from ..errors import BonemetError
from ..fileio import write_csv, write_json, write_text
from ..models.cost import gmacs_per_slice
from ..runs.seg import load_member, load_run, member_probs, predict_probs, seg_dataset
from ..runs.distill import distill_record
from ..training.teacher import other_calibration, shift_threshold
from .metrics import PIXEL_METRICS, f1_ratio_ci
from .seg_eval import score

__all__ = ["compare_student"]


def _ratio_text(r: tuple[float, float, float], patients: int) -> str:
    ratio, lo, hi = r
    if np.isnan(ratio):
        return "n/a (ensemble F1 is 0)"
    ci = "" if np.isnan(lo) else f" (95 % CI {lo:.3f}-{hi:.3f}, paired bootstrap over {patients} patients)"
    return f"{ratio:.3f}{ci}"


def compare_student(teacher: str | Path, student: str | Path, data: str | Path | None = None) -> str:
    """The ensemble, its student and each member alone side by side, with cost per slice; writes
    ``STUDENT/distill.md``, ``.csv`` and ``distill*_ratio.json`` (the F1 ratios with their paired bootstrap CI over
    patients) and returns the Markdown.

    Scored on the run's held-out test patients, or with ``data`` on every patient of another BM-Seg root
    (e.g. a phantom made with another seed): a bigger unseen set than a small run's few test patients.
    """
    teacher, student = Path(teacher), Path(student)
    tcfg, split = load_run(teacher)
    scfg, _ = load_run(student)
    record = distill_record(student)
    extra = record.get("extra_data")
    if data is None:
        index = load_bmseg(tcfg.data, require_patients=True)
        test = [s for s in index.slices if s.patient in set(split["test_patients"])]
        scope = (f"Held-out test patients ({', '.join(split['test_patients'])}), seen by neither teacher nor "
                 "student.")
        stem = "distill"
    else:
        if Path(data).resolve() == Path(tcfg.data).resolve():
            raise BonemetError("this is the data the teacher trained on: omit --score-data to score its "
                               "held-out test patients", data)
        if extra and Path(data).resolve() == Path(extra).resolve():
            raise BonemetError("the student trained on this data (its --extra-data): score it on another root", data)
        index = load_bmseg(data, require_patients=True)
        test = index.slices
        patients = sorted({s.patient for s in test})
        also = f"; the student also on the teacher's labels of {extra}" if extra else ""
        scope = (f"All {len(patients)} patients of {data} ({len(test)} slices), a data root neither teacher nor "
                 f"student trained on (they trained on {tcfg.data}{also}).")
        root = Path(data)
        stem = "distill_" + (root.parent.name if root.name == "bmseg" else root.name)
    if not test:
        raise BonemetError("no slices to score the student on", data or tcfg.data)
    ds = seg_dataset(tcfg, test)
    teachers = [load_member(tcfg, teacher, k) for k in range(len(split["folds"]))]
    pupil = load_member(scfg, student, 0)
    g_t = gmacs_per_slice(teachers[0], tcfg.channels, tcfg.size) * len(teachers)
    g_s = gmacs_per_slice(pupil, scfg.channels, scfg.size)
    cal = record.get("calibration") or {}
    student_probs = predict_probs([pupil], ds, tcfg.batch_size)
    # each member alone as well (the same passes the ensemble needs): what one model of the teacher's kind scores
    alone, ensemble = member_probs(teachers, ds, tcfg.batch_size)
    entries = [(f"ensemble of {len(teachers)} {tcfg.model}", g_t, ensemble),
               (f"student {scfg.model} (width {scfg.width})", g_s, student_probs)]
    other = other_calibration(cal)
    if other:  # the same student at the threshold the other calibration method chose: no second forward pass
        method, t = other
        entries.append((f"the student at the {method} threshold {t:.2f} (not applied)", g_s,
                        (shift_threshold(student_probs[0], cal["threshold"], t), student_probs[1])))
    first_member = len(entries)
    entries += [(f"teacher member {k} alone", g_t / len(teachers), a) for k, a in enumerate(alone)]
    rows, scored = [], []
    for name, g, (lp, bp) in entries:
        s = score(lp, bp, ds)
        scored.append(s)
        rows.append({"model": name, **{m: f"{100 * s.scores[m]:.2f}" for m in PIXEL_METRICS},
                     "lesion sensitivity": f"{100 * s.detection['lesion sensitivity']:.1f}",
                     "FP per slice": f"{s.detection['FP per slice']:.3f}", f"GMAC / {tcfg.size}px slice": f"{g:.2f}"})
    ratios = [f1_ratio_ci(scored[0].per_patient, s.per_patient) for s in scored[1:]]
    text = (scope + "\n\n" + markdown_table(rows) +
            f"\n\nStudent F1 / ensemble F1 = {_ratio_text(ratios[0], len(scored[0].per_patient))}; "
            f"cost ratio {g_s / g_t:.2f}.\n")
    if cal:
        how = ("as many positive pixels as the teacher's masks" if cal.get("method") == "rate"
               else "the best agreement with the teacher's masks")
        text += (f"Student lesion threshold {cal['threshold']:.2f} (its head bias shifted to make it 0.5), set on "
                 f"{cal['slices']} unlabelled slices of {len(cal['patients'])} patient(s) it did not train on to "
                 f"{how}: pixel F1 against them {cal['agreement F1 at 0.5']:.3f} at 0.5 -> "
                 f"{cal['agreement F1']:.3f}. Test labels played no part.\n")
    if record.get("init_member") is not None:
        k = record["init_member"]
        picked = record.get("closest_member") or {}
        how = (" (the member with the best lesion F1 on its own fold's held-out patients)" if "held-out F1" in picked
               else " (the member whose masks agree best with the ensemble's on the calibration patients)" if picked
               else "")
        text += f"The student started from teacher member {k}'s weights{how}"
        if scfg.epochs == 0:
            at = " at the threshold above" if cal else ""
            text += f", and was trained no further: member {k}'s lesion output{at}"
        text += ".\n"
    if other:
        text += (f"At the {other[0]} threshold {other[1]:.2f} instead, student F1 / ensemble F1 = "
                 f"{_ratio_text(ratios[1], len(scored[0].per_patient))}.\n")
    member_ratios = ratios[first_member - 1:]
    text += ("Each teacher member alone, F1 / ensemble F1: " + "; ".join(
        f"member {k} {_ratio_text(r, len(scored[0].per_patient))}" for k, r in enumerate(member_ratios)) + ".\n")
    write_text(student / f"{stem}.md", text)
    write_csv(student / f"{stem}.csv", rows)

    def plain(r: tuple[float, float, float]) -> dict:
        ratio, lo, hi = (None if np.isnan(v) else float(v) for v in r)  # JSON has no NaN
        return {"student F1 / ensemble F1": ratio, "95 % CI": [lo, hi]}

    write_json(student / f"{stem}_ratio.json", {**plain(ratios[0]), "patients": len(scored[0].per_patient),
                                               "cost ratio": round(g_s / g_t, 4),
                                               "other calibration": None if not other else
                                               {"method": other[0], "threshold": other[1], **plain(ratios[1])},
                                               "members alone": [plain(r) for r in member_ratios]})
    return text
