"""Classification evaluation: slice scores in the thesis' Table 5.1 layout, ROC-AUC, bootstrap CIs
over patients, a patient-level decision, confusion-matrix and ROC figures, and multi-run comparison.

Scored slices are those of the held-out test patients (no model of the run trained on them); a run without
test patients (``--test-patients 0 --folds K``) is scored out of fold, each slice by the model that did not
see its patient.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..data.classification import load_classification
from ..data.datasets import ClassificationDataset
from ..markdown import markdown_table
from ..devices import resolve_device
from ..errors import BonemetError
from ..fileio import read_json, write_csv, write_json, write_text
from ..runs.cls import cls_label, load_cls_run
from ..training.cls import item_name, predict_cls
from .figures import plt, save_figure
from .metrics import CLS_METRICS, bootstrap_ci, classification_scores, percent

def parse_patient_rule(rule: str) -> tuple[str, float]:
    """``fraction:F`` (a patient is positive when at least F of its slices are) or ``count:N``."""
    kind, _, value = rule.partition(":")
    try:
        v = float(value)
    except ValueError:
        v = -1.0
    if kind not in ("fraction", "count") or v < 0 or (kind == "fraction" and v > 1):
        raise BonemetError(f"patient rule '{rule}' is not fraction:F (0-1) or count:N")
    return kind, v


def patient_decisions(patients: list[str], y_patient: dict[str, int], p: np.ndarray, rule: str,
                      threshold: float = 0.5) -> list[dict]:
    """One row per patient: slices, positive slices, score (share of positive slices), decision, truth."""
    kind, v = parse_patient_rule(rule)
    rows = []
    pats = np.asarray(patients)
    for pid in sorted(set(patients)):
        pp = p[pats == pid]
        n_pos = int((pp >= threshold).sum())
        frac = n_pos / len(pp)
        positive = frac >= v if kind == "fraction" else n_pos >= v
        rows.append({"patient": pid, "truth": "metastatic" if y_patient[pid] else "healthy", "slices": len(pp),
                     "positive slices": n_pos, "score": round(frac, 4), "max probability": round(float(pp.max()), 4),
                     "decision": "metastatic" if positive else "healthy"})
    return rows


def _ci_text(ci: tuple[float, float]) -> str:
    return "n/a" if np.isnan(ci[0]) else f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}"


def evaluate_cls_run(run: str | Path, data: str | Path | None = None, patient_rule: str = "fraction:0.1",
                     threshold: float = 0.5, device: str | None = "cpu") -> dict:
    """Score a classification run; writes ``RUN/eval/`` (Markdown, CSV, JSON, PNG) and returns the summary."""
    run = Path(run)
    parse_patient_rule(patient_rule)
    cfg, split, models = load_cls_run(run)
    dev = resolve_device(device)
    models = [m.to(dev) for m in models]
    root = Path(data or cfg.data)
    index = load_classification(root)
    by_name = {item_name(root, s): s for s in index.slices}
    missing = [n for n in split["test"] if n not in by_name]
    if missing:
        raise BonemetError(f"{len(missing)} test slice(s) of the run are not in the data (e.g. {missing[0]})", root)
    size = models[0].input_size
    if split["test"]:
        scope = f"held-out test patients ({len(split['test_patients'])}); no model of the run trained on them"
        slices = [by_name[n] for n in split["test"]]
        member_p = predict_cls(models, ClassificationDataset(slices, size, 3, **cfg.input_options()))
    else:
        scope = "out of fold: each slice scored by the model that did not train on its patient"
        slices, parts = [], []
        for k, fold in enumerate(split["folds"]):
            fs = [by_name[n] for n in fold["val"]]
            slices += fs
            ds = ClassificationDataset(fs, size, 3, **cfg.input_options())
            parts.append(predict_cls([models[k]], ds)[0])
        member_p = np.concatenate(parts)[None]
    if not slices:
        raise BonemetError("nothing to score: the run has no test patients and no validation folds", run)
    p = member_p.mean(0)
    y = np.array([s.label for s in slices])
    patients = [s.patient for s in slices]
    label = cls_label(cfg)
    final = label if len(models) == 1 or not split["test"] else f"{label} (ensemble of {len(models)})"
    rows = []
    if split["test"] and len(models) > 1:
        rows += [{"Model": f"{label} model {k + 1}", **classification_scores(y, member_p[k], threshold)}
                 for k in range(len(models))]
    final_scores = classification_scores(y, p, threshold)
    rows.append({"Model": final, **final_scores})
    by_patient = {pid: (y[np.asarray(patients) == pid], p[np.asarray(patients) == pid]) for pid in set(patients)}
    cis = {m: bootstrap_ci(by_patient, lambda g, m=m: classification_scores(
        np.concatenate([a for a, _ in g]), np.concatenate([b for _, b in g]), threshold)[m])
        for m in ("Accuracy", "F1", "ROC-AUC")}
    y_patient = {s.patient: s.patient_label for s in slices}
    prow = patient_decisions(patients, y_patient, p, patient_rule, threshold)
    kind, v = parse_patient_rule(patient_rule)
    pt = np.array([r["truth"] == "metastatic" for r in prow])
    pscore = np.array([r["score"] for r in prow])
    patient_scores = classification_scores(pt, (np.array([r["decision"] == "metastatic" for r in prow])).astype(float))
    patient_scores["ROC-AUC"] = classification_scores(pt, pscore)["ROC-AUC"]

    out = run / "eval"
    table_rows = [{"Model": r["Model"], **{m: percent(r[m]) for m in CLS_METRICS}} for r in rows]
    ci_row = {"Model": f"{final}: 95% CI over patients", "Accuracy": _ci_text(cis["Accuracy"]),
              "F1": _ci_text(cis["F1"]), "ROC-AUC": _ci_text(cis["ROC-AUC"])}
    md = [f"# {label}: slice classification ({scope})", "",
          f"Protocol: {split['label']}; {len(slices)} slices ({int(y.sum())} metastatic) of {len(set(patients))} "
          f"patients; threshold {threshold}; weights: {'; '.join(cfg.weights) or 'n/a'}.", "",
          "Slice level (thesis Table 5.1 layout, %; positive = metastatic):", "",
          markdown_table(table_rows + [ci_row], ["Model", *CLS_METRICS]), "",
          f"Patient level (rule {patient_rule}: a patient is metastatic when "
          f"{'at least ' + str(v) + ' of its slices are' if kind == 'fraction' else 'at least ' + str(int(v)) + ' slices are'};"
          " ROC-AUC over the share of positive slices):", "",
          markdown_table([{"Model": final, **{m: percent(patient_scores[m]) for m in CLS_METRICS}}], ["Model", *CLS_METRICS]),
          "", markdown_table(prow)]
    write_text(out / "table.md", "\n".join(md) + "\n")
    write_csv(out / "table.csv", table_rows)
    write_csv(out / "patients.csv", prow)
    pred_rows = [{"slice": item_name(root, s), "patient": s.patient, "label": s.label, "probability": round(float(q), 6),
                  **({f"model{k + 1}": round(float(member_p[k, i]), 6) for k in range(len(member_p))}
                     if len(member_p) > 1 else {})}
                 for i, (s, q) in enumerate(zip(slices, p))]
    write_csv(out / "predictions.csv", pred_rows)
    figures = [_confusion_figure(y, p, threshold, final, out / "confusion.png"),
               _roc_figure([(final, y, p)] + ([(f"model {k + 1}", y, member_p[k]) for k in range(len(member_p))]
                                              if len(member_p) > 1 else []), out / "roc.png")]
    summary = {"model": cfg.model, "label": final, "scope": scope, "protocol": split["label"],
               "slices": len(slices), "patients": len(set(patients)), "slice": final_scores,
               "slice_ci95": {m: list(c) for m, c in cis.items()}, "patient_rule": patient_rule,
               "patient": patient_scores, "members": rows[:-1],
               "weights": cfg.weights, "figures": [str(f) for f in figures]}
    write_json(out / "metrics.json", summary)
    return summary


def _confusion_figure(y: np.ndarray, p: np.ndarray, threshold: float, title: str, path: Path) -> Path:
    pred = p >= threshold
    cm = np.array([[np.sum(~pred & (y == 0)), np.sum(pred & (y == 0))],
                   [np.sum(~pred & (y == 1)), np.sum(pred & (y == 1))]])
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(cm, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="black", fontsize=12)
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["normal", "metastatic"], yticklabels=["normal", "metastatic"],
           xlabel="predicted", ylabel="truth", title=title)
    ax.title.set_fontsize(9)
    fig.tight_layout()
    return save_figure(fig, path)


def _roc_figure(curves: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> Path:
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.2, 4))
    for i, (name, y, p) in enumerate(curves):
        if len(set(np.asarray(y).tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        auc = classification_scores(y, p)["ROC-AUC"]
        ax.plot(fpr, tpr, lw=2 if i == 0 else 1, alpha=1 if i == 0 else 0.6, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, slice level")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def compare_cls_runs(runs: list[str | Path], out: str | Path, patient_rule: str = "fraction:0.1") -> dict:
    """One table (thesis Table 5.2 layout plus ROC-AUC and the patient level) and one ROC figure for several runs."""
    out = Path(out)
    rows, curves, recalls = [], [], []
    for run in map(Path, runs):
        metrics = run / "eval" / "metrics.json"
        summary = (read_json(metrics, "evaluation summary") if metrics.exists()
                   else evaluate_cls_run(run, patient_rule=patient_rule))
        rows.append({"Model": summary["label"], **{m: percent(summary["slice"][m]) for m in CLS_METRICS},
                     "AUC 95% CI": _ci_text(tuple(summary["slice_ci95"]["ROC-AUC"])),
                     "patient Acc": percent(summary["patient"]["Accuracy"]), "test slices": summary["slices"],
                     "run": str(run)})
        recalls.append((summary["label"], summary["slice"]["Recall"]))
        with open(run / "eval" / "predictions.csv", newline="") as fh:
            pr = list(csv.DictReader(fh))
        curves.append((summary["label"], np.array([int(r["label"]) for r in pr]),
                       np.array([float(r["probability"]) for r in pr])))
    md = markdown_table(rows)
    write_text(out / "compare.md", "# Slice classification, compared (%; positive = metastatic)\n\n" + md + "\n")
    write_csv(out / "compare.csv", rows)
    fig = _roc_figure(curves, out / "roc.png")
    recall = _recall_figure(recalls, out / "recall.png")
    return {"markdown": md, "figure": str(fig), "figures": [str(fig), str(recall)]}


def _recall_figure(recalls: list[tuple[str, float]], path: Path) -> Path:
    """The thesis' Fig. 5.5: each model's slice recall (sensitivity to metastatic slices) as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(recalls) + 1), 3.5))
    names = [f"{name} ({k + 1})" if [n for n, _ in recalls].count(name) > 1 else name
             for k, (name, _) in enumerate(recalls)]
    values = [100 * (v if v is not None and v == v else 0.0) for _, v in recalls]
    bars = ax.bar(range(len(values)), values, color="tab:red")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(values)), names, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="recall (%)", ylim=(0, 105), title="Slice recall per model (thesis Fig. 5.5)")
    fig.tight_layout()
    return save_figure(fig, path)
