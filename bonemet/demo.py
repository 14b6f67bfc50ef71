"""``bonemet demo``: the main job on the embedded default, stage by stage.

phantom data -> Hybrid-AttUnet++ fold models (EH-AttUnet++) -> evaluation on held-out patients ->
a small slice classifier -> its evaluation -> ``predict`` on a held-out patient's DICOM series.
Budgets are CPU-sized: the default finishes in about 10-15 minutes on 2 cores, ``--quick`` in under 3;
the models are small and briefly trained, so their scores show the pipeline, not the method's ceiling.
"""

from __future__ import annotations

import csv
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .fileio import DEMO_ENTRIES, check_output, write_marker


@dataclass(frozen=True)
class DemoBudget:
    patients: int
    size: int
    slices: int
    folds: int
    seg_epochs: int
    width: int
    cls_model: str
    cls_size: int
    cls_epochs: int


BUDGETS = {
    "default": DemoBudget(patients=10, size=128, slices=64, folds=3, seg_epochs=30, width=8, cls_model="small_cnn16",
                          cls_size=128, cls_epochs=10),
    "quick": DemoBudget(patients=4, size=96, slices=32, folds=2, seg_epochs=4, width=4, cls_model="small_cnn16",
                        cls_size=64, cls_epochs=2),
}


def on_real_ct(scan: Path, out: Path, seg_run: Path, device: str, say: Callable[[str], None]) -> list[dict]:
    """The demo's model and the bundled default model (when this installation has one) on a real series: the rows
    (model, findings, largest finding in mL, verdict, probability, report) that ``bonemet demo --real-ct`` prints."""
    from .errors import BonemetError
    from .inference.predict import PredictOptions, Predictor
    from .runs.bundled import default_model

    models = [("the demo's model (phantom only)", seg_run)]
    try:
        models.append(("the bundled default model", default_model()))
    except BonemetError as exc:
        say(f"   {exc}")
    rows = []
    for (name, run), folder in zip(models, ("demo-model", "default-model")):
        pred = Predictor(PredictOptions(seg=run, device=device)).predict(scan, out / folder)
        rows.append({"model": name, "findings": len(pred.lesions),
                     "largest mL": round(pred.largest_ml, 1),
                     "verdict": pred.verdict, "probability": pred.probability,
                     "report": str(out / folder / "report.html")})
    return rows


def run_demo(out: str | Path, quick: bool = False, seed: int = 0, overwrite: bool = False,
             say: Callable[[str], None] = print, device: str = "auto", real_ct: Path | None = None) -> dict:
    """Run every stage into ``out`` (the models on ``device``); returns the paths of the main outputs and the stage
    timings. ``real_ct``: a real series to run the demo's model and the bundled default model on, side by side."""
    from .evaluation.cls_eval import evaluate_cls_run
    from .evaluation.seg_eval import evaluate_run
    from .inference.predict import PredictOptions, predict
    from .phantom.synth import synthesize
    from .runs.cls import ClsConfig
    from .runs.seg import SegConfig
    from .training.cls import train_classification
    from .training.loop import runtime
    from .training.seg import train_segmentation

    b = BUDGETS["quick" if quick else "default"]
    rt = runtime(device)
    out = Path(out)
    check_output(out, "demo", overwrite)  # --overwrite replaces only an earlier demo folder
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_marker(out, "demo", DEMO_ENTRIES)
    times: dict[str, float] = {}

    def stage(name: str, fn: Callable[[], object]) -> object:
        say(f"== {name}")
        t = time.perf_counter()
        result = fn()
        times[name] = round(time.perf_counter() - t, 1)
        say(f"   done in {times[name]:.0f} s")
        return result

    data = out / "phantom"
    stage(f"phantom: {b.patients} patients, {b.size} px, {b.slices} slices",
          lambda: synthesize(data, patients=b.patients, seed=seed, size=b.size, slices=b.slices))
    seg_cfg = SegConfig(data=str(data / "bmseg"), model="hybrid-attunet++", folds=b.folds, test_patients=0.25,
                        epochs=b.seg_epochs, size=b.size, batch_size=4, width=b.width, neg_ratio=0.5, pos_weight=10.0,
                        lr_scale=0.3, eval_every=max(2, b.seg_epochs // 4), seed=seed)
    seg_run = out / "seg"
    stage(f"train Hybrid-AttUnet++ x {b.folds} folds (width {b.width}, {b.seg_epochs} epochs)",
          lambda: train_segmentation(seg_cfg, seg_run, rt=rt))
    seg_eval = stage("evaluate EH-AttUnet++ on held-out patients", lambda: evaluate_run(seg_run, device=device))
    # the settings that learned the phantom's slices on CPU (docs/classification-phantom.md)
    cls_cfg = ClsConfig(data=str(data / "classification"), model=b.cls_model, size=b.cls_size, epochs=b.cls_epochs,
                        crop="body", batch_size=16, test_patients=0.25, neg_ratio=1.0, optimizer="adamw",
                        lr_scale=0.1, weight_decay=1e-4, alpha=0.5, gamma=0.0, eval_every=b.cls_epochs, seed=seed)
    cls_run = out / "cls"
    stage(f"train a {b.cls_model} slice classifier ({b.cls_size} px, {b.cls_epochs} epochs, random weights)",
          lambda: train_classification(cls_cfg, cls_run, rt=rt))
    cls_eval = stage("evaluate the classifier on held-out patients", lambda: evaluate_cls_run(cls_run, device=device))
    import json

    test = json.loads((seg_run / "splits.json").read_text())["test_patients"]
    with open(data / "patients.csv", newline="") as fh:
        status = {r["patient"]: r["status"] for r in csv.DictReader(fh)}
    patient = next((p for p in test if status.get(p) == "metastatic"), test[0])
    pred = out / "predict" / patient
    opts = PredictOptions(seg=seg_run, cls=cls_run, truth=data / "volumes" / patient / "lesion_mask.nii.gz",
                          device=device)
    summary = stage(f"predict on held-out patient {patient} (DICOM series)",
                    lambda: predict(data / "dicom" / patient, pred, opts))
    real = []
    if real_ct is not None:
        real = stage(f"the demo's model and the bundled default model on {real_ct.name}",
                     lambda: on_real_ct(real_ct, out / "real", seg_run, device, say))
    return {"seg_tables": [str(seg_run / "eval" / "test_table.md"), str(seg_run / "eval" / "cv_table.md")],
            "cls_table": str(cls_run / "eval" / "table.md"), "report": str(pred / "report.html"),
            "summary": summary, "seg_eval": seg_eval, "cls_eval": cls_eval, "times": times, "patient": patient,
            "real": real}
