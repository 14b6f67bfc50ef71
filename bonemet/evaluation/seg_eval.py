"""``bonemet seg evaluate`` and ``seg compare``: thesis-style tables and figures from a run folder.

* cross-validation (each fold model on its own held-out patients): Table 4.1 layout (mean and std
  over folds) and the per-fold F1 table (4.3);
* held-out test patients that no member trained on: each member and the EH ensemble (mean of the
  members' probabilities), with bootstrap 95 % CIs over patients, lesion-level detection, bone
  metrics. Without test patients the ensemble is not scored: every patient was some member's
  training data, which is the leak this project refuses.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.bmseg import SegSlice, load_bmseg
from ..data.datasets import SegmentationDataset
from ..markdown import markdown_table
from ..devices import resolve_device
from ..errors import BonemetError
from ..fileio import read_json, write_csv, write_json, write_text
from ..runs.seg import SegConfig, average, load_member, load_run, model_label, predict_probs, seg_dataset
from .figures import save_figure
from .metrics import (PIXEL_METRICS, Counts, Detection, bootstrap_ci, confusion, detect, dice_image, percent,
                      pixel_scores, pooled_f1)


def ensemble_label(cfg: SegConfig) -> str:
    """EH-AttUnet++ for the thesis' configuration (hybrid-attunet++: MB and two decoders), otherwise what it is."""
    if cfg.model == "hybrid-attunet++" and cfg.block == "mb" and cfg.dual_decoder is not False:
        return "EH-AttUnet++"
    return f"ensemble of {model_label(cfg)}"


@dataclass
class Scored:
    """Predictions on a set of slices, scored."""

    scores: dict[str, float]
    detection: dict[str, float]
    bone: dict[str, float] | None
    per_patient: dict[str, Counts]
    per_patient_dice: dict[str, list[float]]


def score(probs: np.ndarray, bone_probs: np.ndarray | None, ds: SegmentationDataset,
          empty_dice: float = 1.0) -> Scored:
    """Lesion (and bone) metrics of ``probs`` on ``ds``; ``empty_dice``: the Dice of a slice whose truth and
    prediction are both empty (1; the reference code's epsilon makes it 0, which ``--protocol paper`` keeps)."""
    total, det = Counts(), Detection()
    bone_total, bone_dices = Counts(), []
    dices: list[float] = []
    per_patient: dict[str, Counts] = defaultdict(Counts)
    per_patient_dice: dict[str, list[float]] = defaultdict(list)
    for i in range(len(ds)):
        sample = ds[i]
        truth = sample["lesion"][0].numpy() > 0.5
        pred = probs[i] > 0.5
        c = confusion(pred, truth)
        d = dice_image(pred, truth, empty_dice)
        total = total + c
        dices.append(d)
        det = det + detect(pred, truth)
        per_patient[sample["patient"]] = per_patient[sample["patient"]] + c
        per_patient_dice[sample["patient"]].append(d)
        if bone_probs is not None and sample["has_bone"] and not sample.get("bone_partial"):  # scored on whole masks
            bt = sample["bone"][0].numpy() > 0.5
            bp = bone_probs[i] > 0.5
            bone_total = bone_total + confusion(bp, bt)
            bone_dices.append(dice_image(bp, bt, empty_dice))
    scores = pixel_scores(total)
    scores["Dice"] = float(np.mean(dices)) if dices else float("nan")
    bone = None
    if bone_dices:
        bone = pixel_scores(bone_total)
        bone["Dice"] = float(np.mean(bone_dices))
    return Scored(scores, det.summary(), bone, dict(per_patient), dict(per_patient_dice))


def score_native(probs: np.ndarray, slices: list[SegSlice], threshold: int = 0,
                 empty_dice: float = 1.0) -> dict[str, float]:
    """Lesion pixel metrics at each slice's own size: every probability map (model size) resized back to its
    slice's stored size (bilinear) and thresholded at 0.5, against the mask as stored (``threshold``: its
    binarisation). Pooled over all pixels like :func:`score`; Dice is the mean per-slice Dice."""
    import torch.nn.functional as F

    from ..data.images import read_image, read_mask

    total, dices = Counts(), []
    for p, s in zip(probs, slices):
        truth = read_mask(s.lesion, threshold) if s.lesion else np.zeros(read_image(s.image).shape[:2], bool)
        up = F.interpolate(torch.from_numpy(np.asarray(p, np.float32))[None, None], size=truth.shape,
                           mode="bilinear", align_corners=False)[0, 0].numpy() > 0.5
        total = total + confusion(up, truth)
        dices.append(dice_image(up, truth, empty_dice))
    scores = pixel_scores(total)
    scores["Dice"] = float(np.mean(dices)) if dices else float("nan")
    return scores


def _ci(s: Scored, seed: int = 0) -> dict[str, tuple[float, float]]:
    f1 = bootstrap_ci(s.per_patient, pooled_f1, seed=seed)
    dice = bootstrap_ci(s.per_patient_dice, lambda ls: float(np.mean(sum(ls, []))), seed=seed)
    return {"F1": f1, "Dice": dice}


def unfinished_folds(run: Path, n_folds: int) -> list[int]:
    """The folds of a run that have not finished training (no ``done.json``)."""
    return [k for k in range(n_folds) if not (run / f"fold{k}" / "done.json").exists()]


def evaluate_run(run: str | Path, data: str | Path | None = None, max_figure_slices: int = 4,
                 native_size: bool = False, device: str | None = "cpu") -> dict:
    """Score a run folder; writes ``RUN/eval/`` (Markdown, CSV, JSON, PNG) and returns the summary.

    ``native_size`` also scores every model at each slice's own stored size (predictions resized back), in rows
    beside the model-size ones (the thesis scores at the model's 224 px). A run whose folds have not all finished
    (trained in parallel with ``seg train --fold K``) is refused with the list of those missing."""
    run = Path(run)
    cfg, split = load_run(run)
    if native_size and cfg.pixel_mm:
        raise BonemetError("--native-size scores whole slices resized back; this run works at physical scale on a "
                           "field around the body (score it with predict on volumes instead)", run)
    missing = unfinished_folds(run, len(split["folds"]))
    if missing:
        raise BonemetError(f"{len(missing)} of the run's {len(split['folds'])} folds have not finished training: "
                           f"fold {', '.join(map(str, missing))} (train each with 'bonemet seg train ... --fold K', "
                           "or continue them with --resume)", run)
    root = Path(data or cfg.data)
    index = load_bmseg(root, require_patients=split["protocol"] == "patient")
    by_name = {s.name: s for s in index.slices}
    out = run / "eval"
    label = model_label(cfg)
    protocol = split["label"]
    dev = resolve_device(device)
    members = [load_member(cfg, run, k).to(dev) for k in range(len(split["folds"]))]

    # cross-validation: fold k's model on fold k's held-out patients only
    fold_scores, native_scores, leaky_scores = [], [], []
    empty_dice = 0.0 if split["protocol"] == "paper" else 1.0  # the reference code's Dice under its protocol
    leaky_ensemble = split["protocol"] == "paper" and len(members) > 1
    for k, fold in enumerate(split["folds"]):
        if split["protocol"] == "paper":
            held = [by_name[n] for n in fold["val"] if n in by_name]
        else:
            pats = set(fold["val_patients"])
            held = [s for s in index.slices if s.patient in pats]
        ds = seg_dataset(cfg, held)
        lp, bp = predict_probs([members[k]], ds, cfg.batch_size)
        fold_scores.append(score(lp, bp, ds, empty_dice))
        if native_size:
            native_scores.append(score_native(lp, held, cfg.threshold, empty_dice))
        if leaky_ensemble:  # the thesis' per-fold ensemble: all members, K-1 of which trained on these slices
            probs = [(lp, bp) if j == k else predict_probs([m], ds, cfg.batch_size) for j, m in enumerate(members)]
            leaky_scores.append(score(*average(probs), ds, empty_dice))
    cv_rows = [_cv_row(label, [f.scores for f in fold_scores])]
    if native_size:
        cv_rows.append(_cv_row(f"{label} (native size)", native_scores))
    per_fold_rows = [{"model": label, **{f"fold {k + 1}": percent(f.scores["F1"]) for k, f in enumerate(fold_scores)},
                      "Mean": percent(_mean([f.scores["F1"] for f in fold_scores]))}]
    if leaky_ensemble:
        leaky = f"{ensemble_label(cfg)} (leaky: {len(members) - 1} of its {len(members)} members trained on each fold)"
        cv_rows.append(_cv_row(leaky, [f.scores for f in leaky_scores]))
        per_fold_rows.append({"model": leaky, **{f"fold {k + 1}": percent(f.scores["F1"])
                                                 for k, f in enumerate(leaky_scores)},
                              "Mean": percent(_mean([f.scores["F1"] for f in leaky_scores]))})
    summary: dict = {"run": str(run), "model": cfg.model, "label": label, "protocol": protocol,
                     "selection": read_json(run / "fold0" / "done.json", "done.json").get("selection", "unknown"),
                     "cv": {"per_fold": [f.scores for f in fold_scores], "mean": {m: float(np.nanmean(
                         [f.scores[m] for f in fold_scores])) for m in PIXEL_METRICS}}}
    if native_size:
        summary["cv"]["native size"] = {"per_fold": native_scores, "mean": {m: float(np.nanmean(
            [f[m] for f in native_scores])) for m in PIXEL_METRICS}}
    if leaky_ensemble:
        summary["cv"]["leaky ensemble"] = {"per_fold": [f.scores for f in leaky_scores], "mean": {
            m: float(np.nanmean([f.scores[m] for f in leaky_scores])) for m in PIXEL_METRICS}}
    note = f"Protocol: {protocol}. Model selection: {summary['selection']}.\n\n"
    if native_size:
        note += NATIVE_NOTE
    write_text(out / "cv_table.md", note + markdown_table(cv_rows, ["model", *PIXEL_METRICS]))
    write_csv(out / "cv_table.csv", cv_rows)
    write_text(out / "per_fold_f1.md", note + markdown_table(per_fold_rows))
    write_csv(out / "per_fold_f1.csv", per_fold_rows)

    test_p = set(split.get("test_patients", []))
    figures = [str(p) for p in _curves(run, out, len(members))]
    if test_p:
        trained_on = {p for f in split["folds"] for p in f.get("train_patients", [])}
        if trained_on & test_p:
            raise BonemetError(f"test patients {sorted(trained_on & test_p)} were in a member's training set", run)
        test_slices = [s for s in index.slices if s.patient in test_p]
        ds = seg_dataset(cfg, test_slices)
        member_probs = [predict_probs([m], ds, cfg.batch_size) for m in members]
        ens_l, ens_b = average(member_probs)
        rows, det_rows, bone_rows = [], [], []
        test_summary = {}
        ens_name = ensemble_label(cfg)
        for name, (lp, bp) in [*[(f"{label} fold {k + 1}", p) for k, p in enumerate(member_probs)],
                               (f"{ens_name} ({len(members)} members)", (ens_l, ens_b))]:
            s = score(lp, bp, ds, empty_dice)
            ci = _ci(s)
            rows.append({"model": name, **{m: percent(s.scores[m]) for m in PIXEL_METRICS},
                         "F1 95% CI": f"{percent(ci['F1'][0])}-{percent(ci['F1'][1])}",
                         "Dice 95% CI": f"{percent(ci['Dice'][0])}-{percent(ci['Dice'][1])}"})
            det_rows.append({"model": name, **{k: (percent(v) if "sensitivity" in k else
                                                   (f"{v:.3f}" if isinstance(v, float) else v))
                                               for k, v in s.detection.items()}})
            if s.bone:
                bone_rows.append({"model": name, **{m: percent(s.bone[m]) for m in PIXEL_METRICS}})
            test_summary[name] = {"scores": s.scores, "ci": ci, "detection": s.detection, "bone": s.bone}
            if native_size:
                native = score_native(lp, test_slices, cfg.threshold)
                rows.append({"model": f"{name} (native size)", **{m: percent(native[m]) for m in PIXEL_METRICS},
                             "F1 95% CI": "", "Dice 95% CI": ""})
                test_summary[name]["native size"] = native
        tnote = (f"Held-out test patients ({len(test_p)}: {', '.join(sorted(test_p))}), never in any member's "
                 f"training set; {len(test_slices)} slices. CIs: bootstrap over patients. Pixel metrics pool all "
                 "slices; Dice is the mean per-slice Dice, where a lesion-free slice with an empty prediction "
                 "scores 1.\n\n" + (NATIVE_NOTE if native_size else ""))
        write_text(out / "test_table.md", tnote + markdown_table(rows))
        write_csv(out / "test_table.csv", rows)
        write_text(out / "detection.md", tnote + "Lesions are 2D connected components at the model's "
                   "resolution; found = overlapped by the prediction.\n\n" + markdown_table(det_rows))
        write_csv(out / "detection.csv", det_rows)
        if bone_rows:
            write_text(out / "bone.md", tnote + markdown_table(bone_rows))
            write_csv(out / "bone.csv", bone_rows)
        summary["test"] = test_summary
        summary["test_patients"] = sorted(test_p)
        figures += [str(p) for p in _member_figure(ds, member_probs, ens_l, out, label, max_figure_slices)]
    else:
        summary["test"] = None
        summary["ensemble_note"] = ("no held-out test patients: the ensemble is not scored, since every patient "
                                    "was in some member's training set")
        write_text(out / "test_table.md", summary["ensemble_note"] + "\n")
    summary["figures"] = figures
    write_json(out / "metrics.json", summary)
    return summary


NATIVE_NOTE = ("Rows marked (native size): the same predictions resized back to each slice's stored size (bilinear, "
               "0.5) and scored against the masks as stored; the other rows score at the model's input size.\n\n")


def _cv_row(label: str, per_fold: list[dict[str, float]]) -> dict[str, str]:
    """A cross-validation row: each metric's mean ± std over folds, in percent."""
    row = {"model": label}
    for m in PIXEL_METRICS:
        vals = [100 * f[m] for f in per_fold]
        row[m] = f"{np.nanmean(vals):.2f} ± {np.nanstd(vals):.2f}"
    return row


def _curves(run: Path, out: Path, n_folds: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for k in range(n_folds):
        path = run / f"fold{k}" / "metrics.csv"
        if not path.exists():
            continue
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        ep = [int(r["epoch"]) + 1 for r in rows]
        axes[0].plot(ep, [float(r["train_loss"]) for r in rows], label=f"fold {k + 1}")
        scored = [(e, float(r["heldout_lesion_f1"])) for e, r in zip(ep, rows) if r.get("heldout_lesion_f1")]
        if scored:
            axes[1].plot(*zip(*scored), marker="o", label=f"fold {k + 1}")
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].set(title="lesion F1 on the fold's held-out patients", xlabel="epoch", ylim=(0, 1))
    for a in axes:
        a.legend(fontsize=7)
    fig.tight_layout()
    path = out / "curves.png"
    save_figure(fig, path)
    return [path]


def pick_slices(ds: SegmentationDataset, n: int) -> list[int]:
    """The test slices with the most lesion pixels (the informative ones for a figure)."""
    sizes = [(float(ds[i]["lesion"].sum()), i) for i in range(len(ds))]
    return [i for s, i in sorted(sizes, reverse=True)[:n] if s > 0] or list(range(min(n, len(ds))))


def overlay_panels(ds: SegmentationDataset, idx: list[int], columns: list[tuple[str, np.ndarray]], path: Path,
                   title: str) -> Path:
    """A grid: one row per slice; image, each named probability map thresholded at 0.5, truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = len(columns) + 2
    fig, axes = plt.subplots(len(idx), ncol, figsize=(1.9 * ncol, 1.9 * len(idx) + 0.4), squeeze=False)
    for r, i in enumerate(idx):
        s = ds[i]
        img = s["image"][0].numpy()
        panels = [("image", None), *[(n, p[i] > 0.5) for n, p in columns], ("truth", s["lesion"][0].numpy() > 0.5)]
        for c, (name, mask) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            if mask is not None:
                ax.imshow(np.ma.masked_where(~mask, mask), cmap="autumn", alpha=0.7, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=7)
        axes[r, 0].set_ylabel(s["name"], fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _member_figure(ds, member_probs, ens, out: Path, label: str, n: int) -> list[Path]:
    idx = pick_slices(ds, n)
    cols = [(f"fold {k + 1}", p[0]) for k, p in enumerate(member_probs)] + [("ensemble", ens)]
    return [overlay_panels(ds, idx, cols, out / "members_vs_ensemble.png", f"{label}: members vs ensemble")]


def compare_runs(runs: list[str | Path], out: str | Path, data: str | Path | None = None) -> dict:
    """One table over several evaluated runs (the thesis' Tables 4.1 / 4.3 / 4.4 side by side) and a
    visual grid (image, each run's ensemble mask, truth) on the same test slices."""
    out = Path(out)
    summaries = []
    for r in runs:
        path = Path(r) / "eval" / "metrics.json"
        if not path.exists():
            raise BonemetError("run not evaluated yet (run 'bonemet seg evaluate' first)", r)
        summaries.append(read_json(path, "evaluation summary"))
    cv_rows, fold_rows, test_rows = [], [], []
    for r, s in zip(runs, summaries):
        cfg = load_run(Path(r))[0]
        cv_rows.append({"model": s["label"], **ablation_marks(cfg, ensemble=False),
                        "protocol": s["protocol"].split(" (")[0],
                        **{m: percent(s["cv"]["mean"][m]) for m in PIXEL_METRICS}})
        f1s = [f["F1"] for f in s["cv"]["per_fold"]]
        fold_rows.append({"model": s["label"], **{f"fold {k + 1}": percent(v) for k, v in enumerate(f1s)},
                          "Mean": percent(_mean(f1s))})
        if s.get("test"):
            entries = list(s["test"].items())
            singles = [v for _, v in entries[:-1]]
            k = len(singles)
            test_rows.append({"model": f"{s['label']} (single model, mean of {k} fold models)",
                              **ablation_marks(cfg, ensemble=False),
                              **{m: percent(_mean([v["scores"][m] for v in singles])) for m in PIXEL_METRICS},
                              "F1 95% CI": "", "lesion sensitivity": percent(_mean(
                                  [v["detection"]["lesion sensitivity"] for v in singles])),
                              "FP per slice": f"{_mean([v['detection']['FP per slice'] for v in singles]):.3f}"})
            name, t = entries[-1]  # the ensemble
            test_rows.append({"model": name, **ablation_marks(cfg, ensemble=True),
                              **{m: percent(t["scores"][m]) for m in PIXEL_METRICS},
                              "F1 95% CI": f"{percent(t['ci']['F1'][0])}-{percent(t['ci']['F1'][1])}",
                              "lesion sensitivity": percent(t["detection"]["lesion sensitivity"]),
                              "FP per slice": f"{t['detection']['FP per slice']:.3f}"})
    text = ("MB: the modified block; DD: dual decoders (lesion and bone); EN: the ensemble of the fold models "
            "(the thesis' Table 4.4 columns).\n\n"
            "## Cross-validation (each fold model on its own held-out patients), mean over folds\n\n"
            + markdown_table(cv_rows) + "\n## Per-fold lesion F1 (Table 4.3)\n\n" + markdown_table(fold_rows)
            + "\nAn ensemble has no per-fold row: each fold's held-out patients were training data of the other "
            "members, so the ensemble is scored on the held-out test patients only (below).\n")
    if test_rows:
        text += ("\n## Held-out test patients (no member trained on them): single models and ensembles\n\n"
                 + markdown_table(test_rows))
    write_text(out / "compare.md", text)
    write_csv(out / "compare_cv.csv", cv_rows)
    if test_rows:
        write_csv(out / "compare_test.csv", test_rows)
    fig = _compare_figure(runs, summaries, out, data)
    return {"markdown": text, "figure": str(fig) if fig else None}


def ablation_marks(cfg: SegConfig, ensemble: bool) -> dict[str, str]:
    """The thesis' ablation columns (Table 4.4) for a row: modified block, dual decoders, ensemble."""
    nested = cfg.model in ("unet++", "attunet++", "hybrid-attunet++")
    return {"MB": "✓" if nested and cfg.block == "mb" else "", "DD": "✓" if cfg.model == "hybrid-attunet++"
            and cfg.dual_decoder is not False else "", "EN": "✓" if ensemble else ""}


def _mean(values: list) -> float:
    """The mean of scores read back from JSON, where an undefined score (NaN) was written as null."""
    return float(np.mean([np.nan if v is None else v for v in values]))


def _compare_figure(runs, summaries, out: Path, data) -> Path | None:
    tested = [(Path(r), s) for r, s in zip(runs, summaries) if s.get("test")]
    if not tested:
        return None
    pats = {tuple(s["test_patients"]) for _, s in tested}
    sizes = {load_run(r)[0].size for r, _ in tested}
    if len(pats) > 1 or len(sizes) > 1:
        return None  # different test patients or input sizes: no common slices to show
    cfg0, _ = load_run(tested[0][0])
    index = load_bmseg(Path(data or cfg0.data))
    test_slices = [s for s in index.slices if s.patient in set(tested[0][1]["test_patients"])]
    cols = []
    ds = None
    for run, s in tested:
        cfg, split = load_run(run)
        ds = seg_dataset(cfg, test_slices)
        members = [load_member(cfg, run, k) for k in range(len(split["folds"]))]
        cols.append((s["label"], predict_probs(members, ds, cfg.batch_size)[0]))
    assert ds is not None
    return overlay_panels(ds, pick_slices(ds, 4), cols, out / "visual_comparison.png",
                          "visual comparison on held-out test slices (ensemble of each run's fold models)")
