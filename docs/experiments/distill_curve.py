"""A distilled student's learning curve against its teacher, on an unseen BM-Seg root: NOT part of bonemet.

Two steps, run from the repository root:

    # 1. `bonemet seg distill` as usual, plus a copy of last.pt after every epoch (fold0/epoch<N>.pt)
    python docs/experiments/distill_curve.py train runs/exp/bmt3 --out runs/exp/long-held12 --student attunet++ \\
        --init-member heldout --epochs 12 --hard-weight 1.0 --extra-data runs/exp/bm-extra/bmseg --calibration 0.2
    # 2. pooled lesion F1 at fixed thresholds and average precision (AP, threshold-free) on every patient of DATA:
    #    the ensemble, each member, and each saved epoch of each student (uncalibrated) and its final checkpoint
    python docs/experiments/distill_curve.py score runs/exp/bmt3 runs/exp/bm-fresh/bmseg runs/exp/long-held12

This is how the README's "Distillation" found that 4 epochs were too few (AP by epoch). Scores use the unseen
patients' masks, so they diagnose; they choose nothing in the product.
"""
import shutil
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8)
AP_PIXELS = 2_000_000  # a fixed random sample of pixels keeps AP to seconds


def train(argv: list[str]) -> None:
    import bonemet.training.distill as distill
    from bonemet.cli.main import app

    end_epoch = distill.end_epoch

    def keep_every_epoch(fold_dir, rows, row, model, opt, epoch, best, *rest):
        best = end_epoch(fold_dir, rows, row, model, opt, epoch, best, *rest)
        shutil.copy(fold_dir / "last.pt", fold_dir / f"epoch{epoch + 1}.pt")
        return best

    distill.end_epoch = keep_every_epoch
    sys.argv = ["bonemet", "seg", "distill", *argv]
    app()


def score(teacher: Path, data: Path, students: list[Path]) -> None:
    from bonemet.data.bmseg import load_bmseg
    from bonemet.data.datasets import SegmentationDataset
    from bonemet.evaluation.metrics import confusion, pooled_f1
    from bonemet.runs.seg import load_member, load_run
    from bonemet.runs.checkpoint import load_checkpoint
    from bonemet.training.distill import member_probs
    from bonemet.runs.seg import build_model
    from bonemet.training.seg import predict_probs

    tcfg, split = load_run(teacher)
    ds = SegmentationDataset(load_bmseg(data, require_patients=True).slices, tcfg.size, tcfg.channels,
                             tcfg.threshold, tcfg.mask_resize)
    truth = np.stack([ds[i]["lesion"][0].numpy() > 0.5 for i in range(len(ds))])
    sample = np.random.default_rng(0).choice(truth.size, min(AP_PIXELS, truth.size), replace=False)

    def row(name: str, p: np.ndarray) -> None:
        f1 = [pooled_f1([confusion(p >= t, truth)]) for t in THRESHOLDS]
        ap = average_precision_score(truth.ravel()[sample], p.ravel()[sample])
        print(f"| {name} | {p.max():.3f} | {ap:.3f} | " + " | ".join(f"{100 * f:.1f}" for f in f1) + " |", flush=True)

    print("| model | max prob. | AP | " + " | ".join(f"F1 at {t}" for t in THRESHOLDS) + " |")
    print("| --- " * (3 + len(THRESHOLDS)) + "|")
    alone, (ensemble, _) = member_probs([load_member(tcfg, teacher, k) for k in range(len(split["folds"]))], ds, 16)
    row(f"ensemble of {len(alone)}", ensemble)
    for k, (p, _) in enumerate(alone):
        row(f"member {k}", p)
    for run in students:
        scfg, _ = load_run(run)
        saved = sorted(run.glob("fold0/epoch*.pt"), key=lambda f: int(f.stem[5:]))
        for ck in saved + [run / "fold0" / "last.pt"]:
            model = build_model(scfg)
            model.load_state_dict(load_checkpoint(ck)["model"])
            name = f"{run.name} after epoch {ck.stem[5:]}" if ck.stem != "last" else f"{run.name} final (calibrated)"
            row(name, predict_probs([model.eval()], ds, 16)[0])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        train(sys.argv[2:])
    elif len(sys.argv) > 4 and sys.argv[1] == "score":
        score(Path(sys.argv[2]), Path(sys.argv[3]), [Path(a) for a in sys.argv[4:]])
    else:
        sys.exit(__doc__)
