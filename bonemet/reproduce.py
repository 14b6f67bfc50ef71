"""``bonemet reproduce``: every thesis experiment bonemet can run, under both protocols, beside the thesis' numbers.

Segmentation (Tables 4.1-4.4): the U-Net family, the plain- and modified-block AttUnet++, Hybrid-AttUnet++ and its
ensemble, the sequential models, each trained and evaluated twice: with patient-level folds and held-out test
patients (bonemet's protocol) and with ``--protocol paper`` (the reference code's slice-level run, leaks included).
Classification (Tables 5.1-5.2): the slice classifiers on a classification root, when one is given. Each
experiment is a run folder under OUT; a finished one is kept, an interrupted one resumed, so the command can be
run again until it is done. ``report.md`` puts each of our numbers next to the thesis' and states the difference.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BonemetError
from .evaluation import thesis
from .evaluation.metrics import percent
from .fileio import read_config, read_json, write_json, write_text

PROTOCOLS = ("paper", "patient")
PROTOCOL_NAMES = {"paper": "paper protocol (slice-level CV, leaky, as the thesis)",
                  "patient": "patient-level CV (bonemet)"}


@dataclass(frozen=True)
class Budget:
    epochs: int
    size: int
    width: int
    folds: int  # patient-level folds (the paper protocol has its 5)
    test_patients: float
    neg_ratio: float | None
    batch_size: int
    cls_models: tuple[str, ...]
    cls_size: int | None
    cls_epochs: int | None  # None: each schedule's own length


BUDGETS = {
    # every experiment at toy size: the tables' shape and the pipeline, not the method's numbers
    "quick": Budget(epochs=1, size=32, width=2, folds=2, test_patients=0.25, neg_ratio=0.2, batch_size=8,
                    cls_models=("small_cnn16",), cls_size=64, cls_epochs=1),
    # the thesis' settings: 224 px, width 32, 60 epochs, 5 folds; the thesis' classifiers (GPU-sized)
    "full": Budget(epochs=60, size=224, width=32, folds=5, test_patients=0.2, neg_ratio=None, batch_size=8,
                   cls_models=tuple(thesis.CLS_TABLE), cls_size=None, cls_epochs=None),
}

# name -> the options of the segmentation run (the thesis row each maps to is its label, see seg_eval.model_label)
SEG_EXPERIMENTS: dict[str, dict] = {
    "unet": {"model": "unet"},
    "attunet": {"model": "attunet"},
    "unet++": {"model": "unet++"},
    "attunet++-plain": {"model": "attunet++", "block": "plain"},
    "attunet++": {"model": "attunet++"},
    "hybrid-attunet++": {"model": "hybrid-attunet++"},
    "sequential-attunet": {"model": "sequential", "lesion_model": "attunet"},
    "sequential-unet++": {"model": "sequential", "lesion_model": "unet++"},
    "sequential-attunet++": {"model": "sequential", "lesion_model": "attunet++"},
}


def _folds(protocol: str, budget: Budget) -> int:
    """The reference code's 5 slice-level folds, or the budget's patient-level ones."""
    return 5 if protocol == "paper" else budget.folds


def seg_config(data: Path, name: str, protocol: str, budget: Budget, seed: int = 0):
    from .runs.seg import SegConfig

    return SegConfig(data=str(data), folds=_folds(protocol, budget),
                     test_patients=budget.test_patients, protocol=protocol, epochs=budget.epochs, size=budget.size,
                     batch_size=budget.batch_size, width=budget.width, neg_ratio=budget.neg_ratio, seed=seed,
                     mask_resize="paper" if protocol == "paper" else "nearest", **SEG_EXPERIMENTS[name])


def cls_config(data: Path, model: str, budget: Budget, seed: int = 0):
    from .runs.cls import ClsConfig

    return ClsConfig(data=str(data), model=model, size=budget.cls_size, epochs=budget.cls_epochs, seed=seed)


def _finished(run: Path) -> bool:
    """Whether the experiment in ``run`` has been trained and evaluated."""
    return (run / "eval" / "metrics.json").exists()


def train_speed(model: str, size: int, width: int, batch: int = 4) -> float:
    """Training images per second of ``model`` on this machine: one Adam step timed after one warm-up step."""
    import torch
    import torch.nn.functional as F

    from .bench.seg import median_seconds
    from .models import create_model, split_outputs

    torch.manual_seed(0)
    net = create_model(model, width=width, in_channels=3).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.rand(batch, 3, size, size), (torch.rand(batch, 1, size, size) > 0.97).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        lesion, _ = split_outputs(net(x))
        F.binary_cross_entropy_with_logits(lesion, y).backward()
        opt.step()

    return batch / median_seconds(step, reps=1)


def estimate_seconds(data: Path, budget: Budget, out: Path, names: list[str], log: Callable[[str], None]) -> float:
    """Training time of the runs not yet finished, from each model's measured training speed on this machine and
    the number of training images; evaluation adds about a tenth."""
    from .data.bmseg import load_bmseg
    from .training.seg import lesion_slice_flags

    todo = [(name, p) for name in names for p in PROTOCOLS if not _finished(out / "seg" / p / name)]
    if not todo:
        return 0.0
    index = load_bmseg(data)
    n = len(index.slices)
    if budget.neg_ratio is not None:  # an epoch is the lesion slices and a share of the others
        positives = int(lesion_slice_flags(index.slices, 0).sum())
        n = min(n, positives + int(budget.neg_ratio * max(1, positives)))
    models: set[str] = set()
    for name, _ in todo:
        opts = SEG_EXPERIMENTS[name]
        models |= {"unet", opts["lesion_model"]} if opts["model"] == "sequential" else {opts["model"]}
    log(f"measuring the training speed of {', '.join(sorted(models))} at {budget.size} px, width {budget.width}")
    speed = {m: train_speed(m, budget.size, budget.width, min(budget.batch_size, 4)) for m in sorted(models)}
    total = 0.0
    for name, protocol in todo:
        opts = SEG_EXPERIMENTS[name]
        folds = _folds(protocol, budget)
        share = (folds - 1) / folds * (1.0 if protocol == "paper" else 1 - budget.test_patients)
        images = folds * budget.epochs * n * share
        if opts["model"] == "sequential":  # a bone U-Net and a lesion model, one after the other
            total += images / speed["unet"] + images / speed[opts["lesion_model"]]
        else:
            total += images / speed[opts["model"]]
    return total * 1.1


def run_reproduction(data: Path, out: Path, budget_name: str = "quick", classification: Path | None = None,
                     experiments: list[str] | None = None, seed: int = 0,
                     say: Callable[[str], None] = print) -> dict:
    """Train and evaluate every experiment into ``out`` (resuming), then write ``out/report.md``; returns the report's
    data. ``experiments``: a subset of the segmentation experiments (default: all)."""
    from .bench.seg import machine_line
    from .evaluation.cls_eval import evaluate_cls_run
    from .evaluation.seg_eval import evaluate_run
    from .training.cls import train_classification
    from .training.seg import train_segmentation

    if budget_name not in BUDGETS:
        raise BonemetError(f"unknown budget '{budget_name}' (choose from {', '.join(BUDGETS)})")
    budget = BUDGETS[budget_name]
    names = experiments or list(SEG_EXPERIMENTS)
    bad = [n for n in names if n not in SEG_EXPERIMENTS]
    if bad:
        raise BonemetError(f"unknown experiment(s) {bad} (choose from {', '.join(SEG_EXPERIMENTS)})")
    out = Path(out)
    t0 = time.perf_counter()
    est = estimate_seconds(Path(data), budget, out, names, say)
    if est:
        say(f"about {_duration(est)} of segmentation training left for {len(names)} experiment(s) x 2 protocols "
            f"({budget_name} budget; measured speed on {machine_line()})")
    else:
        say(f"nothing left to train in {out / 'seg'}: every segmentation run is finished")
    seg: dict[str, dict[str, dict]] = {p: {} for p in PROTOCOLS}
    for protocol in PROTOCOLS:
        for name in names:
            cfg = seg_config(Path(data), name, protocol, budget, seed)
            seg[protocol][name] = _experiment(out / "seg" / protocol / name, cfg, train_segmentation, evaluate_run,
                                              f"{name}, {PROTOCOL_NAMES[protocol]}", say)
    cls: dict[str, dict] = {}
    if classification is not None:
        for model in budget.cls_models:
            cls[model] = _experiment(out / "cls" / model, cls_config(Path(classification), model, budget, seed),
                                     train_classification, evaluate_cls_run, f"classifier {model}", say)
    report = build_report(seg, cls, budget_name, Path(data), classification, machine_line(),
                          time.perf_counter() - t0)
    write_text(out / "report.md", report["markdown"])
    write_json(out / "report.json", {k: v for k, v in report.items() if k != "markdown"})
    return report


def _experiment(run: Path, cfg, train: Callable, evaluate: Callable, title: str, say: Callable[[str], None]) -> dict:
    """One experiment's evaluation summary: a finished run is reused only when it is this very experiment (not
    another budget's or data's; one line listing the differences otherwise), an interrupted one resumed."""
    from .training.loop import resumed_config

    if _finished(run):
        resumed_config(read_config(type(cfg), run / "config.json", "run configuration"), cfg, None, run)
    else:
        say(f"== {title}")
        train(cfg, run, resume=(run / "config.json").exists())
        evaluate(run)
    return read_json(run / "eval" / "metrics.json", "evaluation summary")


def _duration(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def _pct(v: float | None) -> float | None:
    """A score (a fraction, possibly NaN or None) as a percentage, None when undefined."""
    return None if v is None or v != v else 100 * v


def _ours(scores: dict, metrics: tuple[str, ...]) -> dict[str, str]:
    """Our scores (fractions) as table cells in %."""
    return {m: percent(scores[m]) for m in metrics}


def _published(values: tuple[float | None, ...], metrics: tuple[str, ...]) -> dict[str, str]:
    """The thesis' values (%) as table cells."""
    return {m: "n/a" if v is None else f"{v:.2f}" for m, v in zip(metrics, values)}


def _differences(scores: dict, values: tuple[float | None, ...], metrics: tuple[str, ...]) -> dict[str, str]:
    """Ours minus the thesis', in percentage points, as table cells."""
    cells = {}
    for m, theirs in zip(metrics, values):
        ours = _pct(scores[m])
        cells[m] = "n/a" if ours is None or theirs is None else f"{ours - theirs:+.2f}"
    return cells


def _folds_cells(f1s: list[float | None]) -> dict[str, str]:
    """Per-fold F1 (fractions) and their mean, as Table 4.3 cells in %."""
    values = [np.nan if v is None else v for v in f1s]
    mean = float(np.nanmean(values)) if values and not all(v != v for v in values) else None
    return {**{f"fold {k + 1}": percent(v) for k, v in enumerate(f1s)}, "Mean": percent(mean)}


def _published_folds(values: tuple[float, ...]) -> dict[str, str]:
    return {**{f"fold {k + 1}": f"{v:.2f}" for k, v in enumerate(values)}, "Mean": f"{np.mean(values):.2f}"}


def _seg_rows(seg: dict, names: list[str]) -> tuple[list[dict], list[dict]]:
    """Tables 4.1 / 4.2: for each model, ours under each protocol (cross-validation means), the thesis, and the
    difference of the paper-protocol number (the thesis' own protocol) from the thesis'."""
    metrics = thesis.SEG_METRICS
    rows, data = [], []
    for name in names:
        label = seg["paper"].get(name, seg["patient"].get(name, {})).get("label", name)
        published = thesis.SEG_TABLE.get(label)
        for protocol in PROTOCOLS:
            s = seg[protocol].get(name)
            if s is not None:
                rows.append({"model": label, "source": f"ours, {PROTOCOL_NAMES[protocol]}",
                             **_ours(s["cv"]["mean"], metrics)})
                data.append({"model": label, "protocol": protocol,
                             **{m: _pct(s["cv"]["mean"][m]) for m in metrics}})
        if published:
            rows.append({"model": label, "source": "thesis", **_published(published, metrics)})
            if name in seg["paper"]:
                rows.append({"model": label, "source": "ours (paper) - thesis",
                             **_differences(seg["paper"][name]["cv"]["mean"], published, metrics)})
    return rows, data


def _ensemble_rows(seg: dict) -> list[dict]:
    """EH-AttUnet++: the leaky per-fold ensemble under the paper protocol (the thesis' row) and the honest one on
    held-out test patients."""
    metrics, rows = thesis.SEG_METRICS, []
    hybrid_paper, hybrid_patient = seg["paper"].get("hybrid-attunet++"), seg["patient"].get("hybrid-attunet++")
    published = thesis.SEG_TABLE["EH-AttUnet++"]
    if hybrid_paper and hybrid_paper["cv"].get("leaky ensemble"):
        leaky = hybrid_paper["cv"]["leaky ensemble"]["mean"]
        rows.append({"model": "EH-AttUnet++", "source": "ours, paper protocol: every member on every fold (leaky)",
                     **_ours(leaky, metrics)})
        rows.append({"model": "EH-AttUnet++", "source": "thesis", **_published(published, metrics)})
        rows.append({"model": "EH-AttUnet++", "source": "ours (paper) - thesis",
                     **_differences(leaky, published, metrics)})
    if hybrid_patient and hybrid_patient.get("test"):
        name, ens = list(hybrid_patient["test"].items())[-1]
        rows.append({"model": "EH-AttUnet++", "source": f"ours, held-out test patients ({name}; no leak)",
                     **_ours(ens["scores"], metrics)})
    return rows


def _per_fold_rows(seg: dict, names: list[str]) -> list[dict]:
    """Table 4.3: the paper protocol's per-fold lesion F1 beside the thesis'."""
    rows = []
    for name in names:
        s = seg["paper"].get(name)
        if s is None:
            continue
        label = s["label"]
        rows.append({"model": label, "source": "ours, paper protocol",
                     **_folds_cells([f["F1"] for f in s["cv"]["per_fold"]])})
        if label in thesis.PER_FOLD_F1:
            rows.append({"model": label, "source": "thesis", **_published_folds(thesis.PER_FOLD_F1[label])})
        leaky = s["cv"].get("leaky ensemble")
        if name == "hybrid-attunet++" and leaky:  # the thesis' EH-AttUnet++ row: all members on each fold
            rows.append({"model": "EH-AttUnet++", "source": "ours, paper protocol (leaky)",
                         **_folds_cells([f["F1"] for f in leaky["per_fold"]])})
            rows.append({"model": "EH-AttUnet++", "source": "thesis",
                         **_published_folds(thesis.PER_FOLD_F1["EH-AttUnet++"])})
    return rows


def _ablation_rows(seg: dict) -> list[dict]:
    """Table 4.4: plain AttUnet++, + MB, + DD (Hybrid-AttUnet++), + EN (the ensemble)."""
    runs = {(False, False, False): "attunet++-plain", (True, False, False): "attunet++",
            (True, True, False): "hybrid-attunet++", (True, True, True): "hybrid-attunet++"}
    rows = []
    for marks, label in thesis.ABLATION:
        name = runs[marks]
        tick = {k: "✓" if v else "" for k, v in zip(("MB", "DD", "EN"), marks)}
        t = thesis.SEG_TABLE[label]
        scored = ("paper: every member on every fold (leaky); patient: held-out test patients" if marks[2]
                  else "cross-validation, each fold model on its own fold")
        row = {**tick, "scored on": scored, "thesis F1": f"{t[0]:.2f}", "thesis Dice": f"{t[1]:.2f}"}
        for protocol in PROTOCOLS:
            s = seg[protocol].get(name)
            if s is None:
                row[f"F1, {protocol}"] = row[f"Dice, {protocol}"] = "not run"
                continue
            if marks[2]:  # the ensemble: leaky per fold under the paper protocol, test patients under ours
                scores = (s["cv"].get("leaky ensemble", {}).get("mean") if protocol == "paper"
                          else (list(s["test"].values())[-1]["scores"] if s.get("test") else None))
            else:
                scores = s["cv"]["mean"]
            row[f"F1, {protocol}"] = percent(scores["F1"]) if scores else "n/a"
            row[f"Dice, {protocol}"] = percent(scores["Dice"]) if scores else "n/a"
        rows.append(row)
    return rows


def _cls_rows(cls: dict) -> list[dict]:
    metrics, rows = thesis.CLS_METRICS, []
    for model, s in cls.items():
        rows.append({"model": model, "source": "ours", **_ours(s["slice"], metrics)})
        if model in thesis.CLS_TABLE:
            rows.append({"model": model, "source": "thesis", **_published(thesis.CLS_TABLE[model], metrics)})
            rows.append({"model": model, "source": "ours - thesis",
                         **_differences(s["slice"], thesis.CLS_TABLE[model], metrics)})
        else:
            rows.append({"model": model, "source": "thesis", **{m: "not in the thesis" for m in metrics}})
    return rows


def build_report(seg: dict, cls: dict, budget: str, data: Path, classification: Path | None, machine: str,
                 seconds: float) -> dict:
    """The Markdown report and its data: every table, both protocols, the thesis' numbers and the differences."""
    from .markdown import markdown_table

    names = [n for n in SEG_EXPERIMENTS if n in seg["paper"] or n in seg["patient"]]
    seg_rows, seg_data = _seg_rows(seg, names)
    gaps = [seg["paper"][n]["cv"]["mean"]["F1"] - seg["patient"][n]["cv"]["mean"]["F1"] for n in names
            if n in seg["paper"] and n in seg["patient"]]
    gaps = [g for g in gaps if g == g]
    md = [f"# Thesis reproduction ({budget} budget)", "",
          f"Segmentation data: `{data}`" + (f"; classification data: `{classification}`" if classification else "")
          + f". {machine}; {_duration(seconds)} for this call (finished runs are reused).", ""]
    if budget == "quick":
        md += ["**Quick budget**: every experiment at toy size (1 epoch, 32 px, width 2). These numbers show the "
               "pipeline and the tables, not the method; compare with the thesis only at the full budget.", ""]
    md += ["Rows marked *paper protocol* reproduce the thesis' own run (slice-level folds: a patient's slices sit "
           "in training and test; the checkpoint chosen on the scored fold; a new Adam every epoch; masks not "
           "rotated with their images): they are **leaky** and are the ones to set beside the thesis. Rows marked "
           "*patient-level* are bonemet's protocol. Lesion metrics in %, cross-validation means.", ""]
    if gaps:
        md += [f"**The protocols differ by {100 * float(np.mean(gaps)):+.2f} F1 points on average** (paper minus "
               f"patient-level, over {len(gaps)} model(s); from {100 * min(gaps):+.2f} to {100 * max(gaps):+.2f}).",
               ""]
    ensemble_rows, fold_rows = _ensemble_rows(seg), _per_fold_rows(seg, names)
    md += ["## Tables 4.1 and 4.2: the models", "", markdown_table(seg_rows), "",
           "## EH-AttUnet++", "", markdown_table(ensemble_rows) if ensemble_rows else "not run", "",
           "## Table 4.3: lesion F1 per fold (paper protocol)", "",
           markdown_table(fold_rows) if fold_rows else "not run", "",
           "## Table 4.4: the ablation (MB: modified block, DD: dual decoders, EN: ensemble)", "",
           markdown_table(_ablation_rows(seg)), ""]
    if cls:
        md += ["## Tables 5.1 and 5.2: slice classifiers (patient-level 80/20 split, as the thesis)", "",
               "The thesis' numbers come from its own classification data, not from this root.", "",
               markdown_table(_cls_rows(cls)), ""]
    return {"markdown": "\n".join(md), "budget": budget, "seconds": round(seconds, 1), "segmentation": seg_data,
            "protocol gap F1": None if not gaps else float(np.mean(gaps)),
            "classification": {m: s["slice"] for m, s in cls.items()}}
