"""Metrics against hand-computed cases and MONAI's implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bonemet.evaluation.metrics import (Counts, bootstrap_ci, confusion, detect, dice_image, f1_ratio_ci, pixel_scores,
                                        segmentation_scores)


def test_hand_computed_counts():
    truth = np.zeros((4, 4), bool)
    truth[0, :3] = True  # 3 px
    pred = np.zeros((4, 4), bool)
    pred[0, 1:4] = True  # 3 px, 2 overlap
    c = confusion(pred, truth)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 12)
    s = pixel_scores(c)
    assert s["F1"] == pytest.approx(4 / 6)
    assert s["IoU"] == pytest.approx(2 / 4)
    assert s["Acc"] == pytest.approx(14 / 16)
    assert s["Spec"] == pytest.approx(12 / 13)
    assert s["Sens"] == pytest.approx(2 / 3) and s["Prec"] == pytest.approx(2 / 3)


def test_empty_cases():
    z = np.zeros((5, 5), bool)
    one = z.copy()
    one[2, 2] = True
    assert dice_image(z, z) == 1.0  # both empty: perfect
    assert dice_image(z, z, empty_dice=0.0) == 0.0  # the reference code's epsilon
    assert dice_image(one, z) == 0.0  # empty truth, something predicted
    assert dice_image(z, one) == 0.0  # missed everything
    s = pixel_scores(confusion(z, z))
    assert s["F1"] == 1.0 and s["IoU"] == 1.0 and np.isnan(s["Sens"]) and np.isnan(s["Prec"])
    s = pixel_scores(confusion(z, one))
    assert s["F1"] == 0.0 and s["Sens"] == 0.0 and np.isnan(s["Prec"])


def test_agrees_with_monai():
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(0)
    preds = [rng.random((32, 32)) > 0.7 for _ in range(6)]
    truths = [rng.random((32, 32)) > 0.6 for _ in range(6)]
    preds[0][:] = False
    truths[0][:] = False  # both empty: MONAI (ignore_empty=False) and bonemet give 1
    ours = segmentation_scores(preds, truths)
    p = torch.tensor(np.stack(preds)[:, None], dtype=torch.float32)
    t = torch.tensor(np.stack(truths)[:, None], dtype=torch.float32)
    dice = monai_metrics.DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    dice(p, t)
    assert ours["Dice"] == pytest.approx(float(dice.aggregate()), abs=1e-6)
    names = ["f1 score", "sensitivity", "specificity", "precision", "accuracy"]
    cm = monai_metrics.ConfusionMatrixMetric(include_background=True, metric_name=names, compute_sample=False,
                                             reduction="sum")
    cm(p.view(1, 1, -1), t.view(1, 1, -1))  # one "image" of all pixels = pooled counts
    got = [float(v) for v in cm.aggregate()]
    for ours_key, value in zip(["F1", "Sens", "Spec", "Prec", "Acc"], got):
        assert ours[ours_key] == pytest.approx(value, abs=1e-6), ours_key
    iou = monai_metrics.compute_iou(p.view(1, 1, -1), t.view(1, 1, -1), include_background=True)
    assert ours["IoU"] == pytest.approx(float(iou), abs=1e-6)


def test_lesion_detection():
    truth = np.zeros((20, 20), bool)
    truth[1:4, 1:4] = True  # lesion A, 9 px
    truth[10:18, 10:18] = True  # lesion B, 64 px
    pred = np.zeros_like(truth)
    pred[12:14, 12:14] = True  # hits B
    pred[1, 15] = True  # a false positive
    d = detect(pred, truth)
    assert (d.lesions, d.found, d.false_positives, d.slices) == (2, 1, 1, 1)
    s = (d + detect(np.zeros_like(truth), np.zeros_like(truth))).summary()
    assert s["lesion sensitivity"] == 0.5 and s["FP per slice"] == 0.5
    assert s["sensitivity < 50 px"] == 0.0 and s["sensitivity 50-200 px"] == 1.0


def test_f1_ratio_ci_is_paired_over_patients():
    ref = {f"p{i}": Counts(tp=10, fp=5, fn=5, tn=100) for i in range(6)}
    assert f1_ratio_ci(ref, ref, n=200) == (1.0, 1.0, 1.0)  # same answers on every draw: no spread at all
    worse = dict(ref, p0=Counts(tp=0, fp=5, fn=15, tn=100))  # misses every lesion pixel of one patient
    ratio, lo, hi = f1_ratio_ci(ref, worse, n=500)
    assert ratio == pytest.approx((100 / 170) / (120 / 180))  # pooled: 2*50/(100+30+40) over 2*60/(120+30+30)
    assert lo < ratio <= hi <= 1.0  # never better than the reference on any patient, so on no draw either
    with pytest.raises(ValueError, match="different patients"):
        f1_ratio_ci(ref, {"p0": ref["p0"]})


def test_bootstrap_ci_brackets_the_estimate():
    groups = {f"p{i}": Counts(tp=10 + i, fp=3, fn=2, tn=100) for i in range(8)}

    def f1(cs):
        tot = sum(cs, Counts())
        return pixel_scores(tot)["F1"]

    lo, hi = bootstrap_ci(groups, f1, n=300)
    point = f1(list(groups.values()))
    assert lo <= point <= hi and hi - lo < 0.2


def test_native_size_scores_resize_predictions_back_to_each_slice(tmp_path):
    """A 64 px slice whose 32x32 lesion square the model saw at 32 px: a perfect model-size prediction, resized
    back (bilinear), is the stored mask exactly; an empty one finds nothing."""
    from bonemet.data.bmseg import SegSlice
    from bonemet.data.images import write_image
    from bonemet.evaluation.seg_eval import score_native

    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    write_image(tmp_path / "image.png", np.full((64, 64), 100, np.uint8))
    write_image(tmp_path / "lesion.png", mask)
    write_image(tmp_path / "healthy.png", np.zeros((80, 80), bool))
    write_image(tmp_path / "image80.png", np.full((80, 80), 100, np.uint8))
    slices = [SegSlice("a", tmp_path / "image.png", tmp_path / "lesion.png", None, "P"),
              SegSlice("b", tmp_path / "image80.png", tmp_path / "healthy.png", None, "P")]
    model_size = np.zeros((2, 32, 32), np.float32)
    model_size[0, 8:24, 8:24] = 1.0
    s = score_native(model_size, slices)
    assert s["F1"] == 1.0 and s["Dice"] == 1.0  # the 80 px healthy slice: empty and empty, Dice 1
    s = score_native(np.zeros((2, 32, 32), np.float32), slices)
    assert s["F1"] == 0.0 and s["Sens"] == 0.0 and s["Dice"] == 0.5
