"""Segmentation training: it learns, it resumes exactly, a 2-fold run gives the full table set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bonemet.data.bmseg import load_bmseg
from bonemet.data.datasets import SegmentationDataset
from bonemet.data.export import write_bmseg_slices
from bonemet.data.volume import Volume
from bonemet.evaluation.metrics import dice_image
from bonemet.fileio import write_csv
from bonemet.phantom.synth import make_patient
from bonemet.training import loop as loop_mod
from bonemet.training import seg as seg_mod
from bonemet.runs.seg import SegConfig
from bonemet.runs.seg import predict_probs
from bonemet.training.seg import train_fold, train_segmentation


@pytest.fixture(scope="module")
def lesion_crops(tmp_path_factory) -> Path:
    """A few 64 px crops around phantom lesions (256 px slices, 1.56 mm pixels), BM-Seg layout."""
    root = tmp_path_factory.mktemp("crops") / "bmseg"
    p = make_patient(0, seed=4, status="metastatic", size=256, n_slices=48)
    lesion = p.lesion > 0
    areas = lesion.sum(axis=(0, 1))
    ks = [int(k) for k in np.argsort(areas)[::-1][:4] if areas[k] > 0]
    rows = []
    for k in ks:
        ii, jj = np.nonzero(lesion[:, :, k])
        ci, cj = int(np.clip(ii.mean(), 32, 224)), int(np.clip(jj.mean(), 32, 224))
        crop = (slice(ci - 32, ci + 32), slice(cj - 32, cj + 32), slice(k, k + 1))
        vol = Volume(p.ct.array[crop], p.ct.affine)
        rows += write_bmseg_slices(root, f"P{k}", vol, lesion[crop], p.bone[crop])
    write_csv(root / "patients.csv", rows)
    return root


@pytest.mark.slow
def test_tiny_hybrid_overfits_phantom_slices(lesion_crops, tmp_path):
    idx = load_bmseg(lesion_crops, require_patients=True)
    cfg = SegConfig(data=str(lesion_crops), model="hybrid-attunet++", epochs=90, size=64, width=4, batch_size=4,
                    augment=False, lr_scale=0.3)
    train_fold(cfg, tmp_path, 0, idx.slices, [], [], resume=False)
    model = seg_mod.build_model(cfg)
    model.load_state_dict(torch.load(tmp_path / "fold0" / "last.pt", weights_only=True)["model"])
    ds = SegmentationDataset(idx.slices, 64, 3)
    probs, bone = predict_probs([model], ds)
    dices = [dice_image(probs[i] > 0.5, ds[i]["lesion"][0].numpy() > 0.5) for i in range(len(ds))]
    assert bone is not None
    assert np.mean(dices) > 0.8, dices


def test_bf16_seg_step_follows_the_fp32_gradient(lesion_crops) -> None:
    """seg train --bf16: both heads' loss and gradient stay close to fp32's, with fp32 master weights."""
    from bonemet.training.loop import training_precision, train_input

    ds = SegmentationDataset(load_bmseg(lesion_crops, require_patients=True).slices, 64, 3)
    batch = {k: torch.stack([ds[i][k] for i in range(len(ds))]) for k in ("image", "lesion", "bone")}
    cfg = SegConfig(data=str(lesion_crops), width=4, pos_weight=10.0)
    losses, grads = {}, {}
    for bf16 in (False, True):
        torch.manual_seed(1)
        model = seg_mod.build_model(cfg)
        with training_precision(model, bf16):
            lo, bo = seg_mod.forward(model, train_input(batch["image"], bf16))
            loss = seg_mod.seg_loss(lo, bo, batch, cfg)
        assert lo.dtype == (torch.bfloat16 if bf16 else torch.float32) and loss.dtype == torch.float32
        loss.backward()
        losses[bf16] = float(loss.detach())
        grads[bf16] = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert abs(losses[True] - losses[False]) < 0.02 * losses[False], losses
    cosine = torch.nn.functional.cosine_similarity(grads[False], grads[True], dim=0)
    assert cosine > 0.9, float(cosine)


def test_two_fold_run_gives_tables_figures_and_no_leakage(phantom, tmp_path):
    from bonemet.evaluation.seg_eval import compare_runs, evaluate_run

    run = tmp_path / "run"
    cfg = SegConfig(data=str(phantom / "bmseg"), model="hybrid-attunet++", folds=2, test_patients=0.25, epochs=1,
                    size=64, width=4, neg_ratio=1.0)
    train_segmentation(cfg, run)
    split = json.loads((run / "splits.json").read_text())
    test = set(split["test_patients"])
    assert len(test) == 1
    with open(phantom / "patients.csv") as fh:
        status = dict(line.strip().split(",")[:2] for line in fh.readlines()[1:])
    assert all(status[p] == "metastatic" for p in test), "a test set needs lesions"
    for fold in split["folds"]:
        assert not test & set(fold["train_patients"]), "no test patient in any member's training set"
    s = evaluate_run(run)
    ev = run / "eval"
    for name in ("cv_table.md", "cv_table.csv", "per_fold_f1.md", "test_table.md", "test_table.csv", "detection.md",
                 "bone.md", "metrics.json", "curves.png", "members_vs_ensemble.png"):
        assert (ev / name).exists() and (ev / name).stat().st_size > 0, name
    table = (ev / "test_table.md").read_text()
    assert "EH-AttUnet++ (2 members)" in table and "fold 2" in table
    assert "| F1 | Dice | IoU | Acc | Spec | Sens | Prec |" in (ev / "cv_table.md").read_text()
    assert s["test_patients"] == sorted(test)
    res = compare_runs([run], tmp_path / "cmp")
    assert "Held-out test patients" in res["markdown"] and (tmp_path / "cmp" / "visual_comparison.png").exists()
    lines = res["markdown"].splitlines()
    # Table 4.4's columns: the hybrid's fold models have MB and DD, the ensemble all three
    assert any(line.startswith("| Hybrid-AttUnet++ | ✓ | ✓ |  | patient") for line in lines), res["markdown"]
    assert any(line.startswith("| EH-AttUnet++ (2 members) | ✓ | ✓ | ✓ |") for line in lines)
    # Table 4.3 with its mean column: the mean of the two folds' F1 as written in metrics.json
    f1s = [f["F1"] for f in s["cv"]["per_fold"]]
    fold_line = next(line for line in lines if line.startswith("| Hybrid-AttUnet++ | ") and "fold" not in line
                     and line.count("|") == 5)
    assert fold_line.rstrip(" |").endswith(f"{100 * np.nanmean(f1s):.2f}"), fold_line


def test_resume_after_interruption_matches_uninterrupted(phantom, tmp_path, monkeypatch, capsys):
    """Interrupted after fold 0 saved its second epoch, a resumed run trains only what was left (fold 0's third
    epoch, then fold 1) and ends with the weights of an uninterrupted run."""
    cfg = dict(data=str(phantom / "bmseg"), model="unet", folds=2, test_patients=0.25, epochs=3, size=32, width=2,
               neg_ratio=0.5)
    train_segmentation(SegConfig(**cfg), tmp_path / "full")

    saved = {"n": 0}
    real_end = loop_mod.end_epoch

    def stop_after_two(*a, **k):
        best = real_end(*a, **k)  # the epoch's last.pt is written
        saved["n"] += 1
        if saved["n"] == 2:
            raise KeyboardInterrupt
        return best

    monkeypatch.setattr(loop_mod, "end_epoch", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        train_segmentation(SegConfig(**cfg), tmp_path / "cut")
    monkeypatch.setattr(loop_mod, "end_epoch", real_end)
    assert not (tmp_path / "cut" / "fold0" / "done.json").exists()
    assert torch.load(tmp_path / "cut" / "fold0" / "last.pt", weights_only=True)["epoch"] == 1
    ran = []
    real_train_epoch = loop_mod.train_epoch

    def counted(model, opt, loader, label, step):
        ran.append(label)
        return real_train_epoch(model, opt, loader, label, step)

    monkeypatch.setattr(loop_mod, "train_epoch", counted)
    capsys.readouterr()
    train_segmentation(SegConfig(**cfg), tmp_path / "cut", resume=True)
    assert ran == ["fold 0 epoch 3/3", "fold 1 epoch 1/3", "fold 1 epoch 2/3", "fold 1 epoch 3/3"]
    assert "fold 0: resuming after epoch 1" in capsys.readouterr().err
    for k in range(2):
        a = torch.load(tmp_path / "full" / f"fold{k}" / "last.pt", weights_only=True)
        b = torch.load(tmp_path / "cut" / f"fold{k}" / "last.pt", weights_only=True)
        assert a["epoch"] == b["epoch"] == 2
        for name, t in a["model"].items():
            torch.testing.assert_close(t, b["model"][name], msg=name)
        rows = (tmp_path / "cut" / f"fold{k}" / "metrics.csv").read_text().strip().splitlines()
        assert len(rows) == 4  # header + 3 epochs, none twice


def test_run_folder_is_not_overwritten(phantom, tmp_path):
    from bonemet.errors import BonemetError

    cfg = SegConfig(data=str(phantom / "bmseg"), model="unet", folds=2, test_patients=0.25, epochs=1, size=32,
                    width=2, neg_ratio=0.2)
    train_segmentation(cfg, tmp_path / "r")
    with pytest.raises(BonemetError, match="--resume"):
        train_segmentation(cfg, tmp_path / "r")


def test_neg_ratio_epoch_keeps_every_positive_and_mixes_them_through_the_epoch():
    """--neg-ratio draws a share of the negatives; positives and negatives must stay mixed in every part
    of the epoch (a sampler that kept the permutation's order put all-positive batches at the end)."""
    from torch.utils.data import TensorDataset

    from bonemet.training.loop import epoch_loader

    flags = [i % 10 == 0 for i in range(1000)]  # 100 positives, 900 negatives
    ds = TensorDataset(torch.tensor(flags, dtype=torch.float32))
    labels = torch.cat([b for (b,) in epoch_loader(ds, 20, seed=3, flags=flags, neg_ratio=1.0)])
    assert len(labels) == 200 and int(labels.sum()) == 100
    quarters = labels.view(4, 50).mean(1)
    assert bool((quarters > 0.3).all() and (quarters < 0.7).all()), quarters
    again = torch.cat([b for (b,) in epoch_loader(ds, 20, seed=3, flags=flags, neg_ratio=1.0)])
    assert torch.equal(labels, again)  # seeded: a resumed run draws the same epoch


def test_calibration_thresholds_find_a_known_shift() -> None:
    from bonemet.training.teacher import choose_threshold

    rng = np.random.default_rng(0)
    teacher = rng.random((20, 32, 32)).astype(np.float32)
    student = np.clip(teacher + 0.2, 0, 1)  # the same ranking, 0.2 more confident
    c = choose_threshold(student, teacher)
    assert c["threshold"] == pytest.approx(0.7) and c["agreement F1"] == pytest.approx(1.0)
    assert c["agreement F1 at 0.5"] < 0.9 and c["rate threshold"] == pytest.approx(0.7)
    # a noisy student: agreement and rate can differ, and rate matches the teacher's positive-pixel count
    noisy = np.clip(student + rng.normal(0, 0.15, student.shape), 0, 1).astype(np.float32)
    r = choose_threshold(noisy, teacher, "rate")
    assert r["method"] == "rate" and r["threshold"] == r["rate threshold"]
    assert abs(r["student positive pixels"] - r["teacher positive pixels"]) < 0.02 * r["teacher positive pixels"]
    a = choose_threshold(noisy, teacher, "agreement")
    assert a["threshold"] == a["agreement threshold"] and a["agreement F1"] >= r["agreement F1"]


def test_a_calibrated_student_is_scored_at_the_other_methods_threshold_without_a_second_pass() -> None:
    from bonemet.training.teacher import other_calibration, shift_threshold

    z = np.random.default_rng(1).normal(0, 3, (4, 16, 16))
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    logit = lambda t: np.log(t / (1 - t))  # noqa: E731
    applied = sig(z - logit(0.6)).astype(np.float32)  # what the student outputs after calibration at 0.6
    moved = shift_threshold(applied, 0.6, 0.35)
    np.testing.assert_allclose(moved, sig(z - logit(0.35)), atol=1e-6)
    assert ((moved > 0.5) == (sig(z) > 0.35)).mean() > 0.999 and (moved > 0.5).sum() > (applied > 0.5).sum()
    assert other_calibration({"method": "rate", "threshold": 0.6, "rate threshold": 0.6,
                              "agreement threshold": 0.35}) == ("agreement", 0.35)
    assert other_calibration({"threshold": 0.5, "rate threshold": 0.5, "agreement threshold": 0.5}) is None
    assert other_calibration({"threshold": 0.54}) is None  # a record from before both thresholds were kept


def test_calibrated_student_agrees_with_its_teacher_at_half(lesion_crops) -> None:
    """The bias shift is exact: the calibrated student at 0.5 is the raw student at its threshold, and here,
    where the teacher is the student made more confident, that is the teacher's mask."""
    import copy

    from bonemet.models import create_model
    from bonemet.training.teacher import calibrate_student

    ds = SegmentationDataset(load_bmseg(lesion_crops).slices, 64, 3)
    torch.manual_seed(0)
    student = create_model("unet", width=4, in_channels=3)
    p, _ = predict_probs([student], ds)
    z = np.log(p / (1 - p)).astype(np.float64)
    with torch.no_grad():  # untrained logits barely vary: make them (z - median) / sd so thresholds tell them apart
        student.head.weight /= float(z.std())
        student.head.bias.copy_((student.head.bias - float(np.median(z))) / float(z.std()))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        teacher.head.bias += 1.0
    raw, _ = predict_probs([student], ds)
    result = calibrate_student(student, [teacher], ds, 4)
    assert result["threshold"] == pytest.approx(1 / (1 + np.exp(1.0)), abs=0.01)  # sigmoid(-1) = 0.27
    calibrated, _ = predict_probs([student], ds)
    teacher_p, _ = predict_probs([teacher], ds)
    assert np.array_equal(calibrated >= 0.5, raw >= result["threshold"])
    assert ((calibrated >= 0.5) == (teacher_p >= 0.5)).mean() > 0.999
    assert result["agreement F1"] > 0.99 > result["agreement F1 at 0.5"]


def test_a_student_warm_started_from_a_hybrid_member_is_its_lesion_decoder() -> None:
    """attunet++ from a two-decoder hybrid-attunet++ of its width: the same lesion logits before any training;
    a student whose tensors the member lacks is refused with a clear error."""
    from bonemet.errors import BonemetError
    from bonemet.models import create_model
    from bonemet.training.distill import warm_start

    torch.manual_seed(0)
    member = create_model("hybrid-attunet++", width=4, in_channels=3).eval()
    with torch.no_grad():  # BN statistics that differ from the defaults, so that they must be copied too
        for m in member.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    student = create_model("attunet++", width=4, in_channels=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = student(x)
        warm_start(student, member.state_dict(), "member 0")
        lesion, bone = member(x)
        after = student(x)
    assert not torch.allclose(before, lesion, atol=1e-3)
    assert torch.equal(after, lesion) and not torch.allclose(after, bone, atol=1e-3)
    for other in (create_model("unet", width=4, in_channels=3), create_model("attunet++", width=6, in_channels=3)):
        with pytest.raises(BonemetError, match="cannot start from member 0"):
            warm_start(other, member.state_dict(), "member 0")


def test_the_closest_member_is_the_one_whose_masks_match_the_ensemble(lesion_crops) -> None:
    """Three members: one that finds nothing, one in between, one that marks everything; the ensemble's masks
    are the middle one's, so it is picked, and the ensemble probabilities come back for calibration."""
    import copy

    from bonemet.models import create_model
    from bonemet.training.teacher import closest_member

    ds = SegmentationDataset(load_bmseg(lesion_crops).slices, 64, 3)
    torch.manual_seed(0)
    middle = create_model("unet", width=4, in_channels=3)
    p, _ = predict_probs([middle], ds)
    z = np.log(p / (1 - p)).astype(np.float64)
    with torch.no_grad():  # spread the untrained logits to (z - median) / sd: about half the pixels above 0.5
        middle.head.weight /= float(z.std())
        middle.head.bias.copy_((middle.head.bias - float(np.median(z))) / float(z.std()))
    members = []
    for shift in (-8.0, 0.0, 8.0):
        m = copy.deepcopy(middle)
        with torch.no_grad():
            m.head.bias += shift
        members.append(m)
    chosen, ensemble = closest_member(members, ds, 4)
    assert chosen["member"] == 1
    f1 = chosen["agreement F1"]
    assert f1[1] > 0.95 and f1[0] < 0.05 and f1[2] < 0.8
    np.testing.assert_allclose(ensemble, predict_probs(members, ds, 4)[0], atol=1e-6)


def test_the_hard_weight_moves_that_share_of_the_lesion_loss_to_the_true_masks(lesion_crops) -> None:
    """Labelled samples carry their true mask (augmented with the image), unlabelled ones do not count; at
    hard weight 1 a labelled batch's lesion loss is the teacher's own training loss against the truth."""
    import torch.nn.functional as F
    from torch.utils.data import default_collate

    from bonemet.training.augment import SegAugment
    from bonemet.training.distill import _SoftTargets, _truth_term
    from bonemet.training.seg import seg_loss

    base = SegmentationDataset(load_bmseg(lesion_crops).slices, 64, 3)
    n = len(base)
    truth = np.stack([base[i]["lesion"][0].numpy() for i in range(n)])
    soft = np.clip(truth * 0.7 + 0.1, 0, 1).astype(np.float32)
    aug = SegAugment(generator=torch.Generator().manual_seed(0))
    ds = _SoftTargets(base, soft, None, aug, labelled=n - 1)
    samples = [ds[i] for i in range(n)]
    assert [float(s["labelled"]) for s in samples] == [1.0] * (n - 1) + [0.0]
    for s in samples:  # truth and soft target turned with the same draw: soft = 0.7 truth + 0.1 inside the image
        inside = s["lesion"] > 0
        assert torch.allclose(s["lesion"][inside], s["truth"][inside] * 0.7 + 0.1)
    batch = default_collate(samples[:-1])
    cfg = SegConfig(data="-", model="unet")
    logits = torch.randn(n - 1, 1, 64, 64)
    full = seg_loss(logits, None, batch, cfg) + _truth_term(logits, batch, 10.0, cfg, False)
    assert torch.allclose(full, F.binary_cross_entropy_with_logits(logits, batch["truth"],
                                                                    pos_weight=torch.tensor(10.0)), atol=1e-6)
    unlabelled = default_collate(samples[-1:])
    assert float(_truth_term(logits[:1], unlabelled, 10.0, cfg, False)) == 0.0
    assert "truth" not in _SoftTargets(base, soft, None, None)[0]  # no hard weight: the soft targets alone


def test_heldout_member_is_picked_on_each_folds_own_held_out_f1(tmp_path):
    from bonemet.errors import BonemetError
    from bonemet.training.teacher import heldout_member

    # fold 0 keeps its last epoch (held-out F1 0.30), fold 1 the epoch of best inner-validation F1 (epoch 1: 0.50)
    runs = {0: ("last.pt", [("0.10", ""), ("", ""), ("0.30", "")]),
            1: ("best.pt", [("0.20", "0.3"), ("0.50", "0.6"), ("0.25", "0.4")])}
    for k, (ckpt, f1) in runs.items():
        fold = tmp_path / f"fold{k}"
        fold.mkdir()
        (fold / "done.json").write_text(json.dumps({"fold": k, "checkpoint": ckpt}))
        rows = "".join(f"{e},0.003,0.1,1.0,,{h},{v}\n" for e, (h, v) in enumerate(f1))
        (fold / "metrics.csv").write_text("epoch,lr,train_loss,seconds,heldout_loss,heldout_lesion_f1,"
                                          "select_lesion_f1\n" + rows)
    assert heldout_member(tmp_path, 2) == {"member": 1, "held-out F1": [0.3, 0.5]}
    (tmp_path / "fold1" / "done.json").write_text(json.dumps({"fold": 1, "checkpoint": "last.pt"}))
    assert heldout_member(tmp_path, 2) == {"member": 0, "held-out F1": [0.3, 0.25]}
    (tmp_path / "fold0" / "metrics.csv").write_text("epoch,lr,train_loss,seconds,heldout_loss,heldout_lesion_f1\n"
                                                   "0,0.003,0.1,1.0,,\n")
    with pytest.raises(BonemetError, match="member 0 has no held-out lesion F1 at its kept epoch"):
        heldout_member(tmp_path, 2)


def test_every_member_trains_even_when_its_fold_has_no_lesion(phantom, seg_run):
    """The shared tiny run's fold 0 trains on healthy patients only: --neg-ratio keeps every lesion slice and a
    share of the others per epoch, so it would keep nothing; the fold trains on all its slices instead."""
    import csv

    split = json.loads((seg_run / "splits.json").read_text())
    with open(phantom / "patients.csv", newline="") as fh:
        status = {r["patient"]: r["status"] for r in csv.DictReader(fh)}
    healthy_only = [k for k, f in enumerate(split["folds"])
                    if all(status[p] == "healthy" for p in f["train_patients"])]
    assert healthy_only, "the fixture no longer has a fold without lesions: this test checks nothing"
    for k in range(len(split["folds"])):
        with open(seg_run / f"fold{k}" / "metrics.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert rows and all(float(r["train_loss"]) > 0 for r in rows), f"fold {k} did not train"


def test_evaluate_native_size_adds_rows_beside_the_model_size_ones(seg_run, tmp_path):
    import shutil

    from conftest import invoke

    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    r = invoke("seg", "evaluate", run, "--native-size")
    assert r.returncode == 0, r.stderr
    cv = (run / "eval" / "cv_table.md").read_text()
    test = (run / "eval" / "test_table.md").read_text()
    assert "| Hybrid-AttUnet++ (native size) |" in cv and "stored size" in cv
    assert "| EH-AttUnet++ (2 members) (native size) |" in test and "| Hybrid-AttUnet++ fold 1 (native size) |" in test
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert len(m["cv"]["native size"]["per_fold"]) == 2
    assert set(m["test"]["EH-AttUnet++ (2 members)"]["native size"]) >= {"F1", "Dice", "IoU"}


@pytest.mark.parametrize("masks_follow", [True, False])
def test_augmentation_moves_masks_with_their_image_except_in_the_reference_run(masks_follow):
    from bonemet.training.augment import SegAugment

    image = torch.zeros(1, 32, 32)
    image[0, 4:10, 6:14] = 1.0  # an off-centre block: every flip and turn moves it
    mask = (image > 0).float()

    def centre(t: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(t[0] > 0.5).float().mean(0)

    for degrees, p_h, p_v in ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (35.0, 0.0, 0.0)):
        aug = SegAugment(degrees=degrees, p_rotate=1.0, p_hflip=p_h, p_vflip=p_v,
                         generator=torch.Generator().manual_seed(3), masks_follow=masks_follow)
        out = aug({"image": image, "lesion": mask, "bone": mask})
        assert float((centre(out["image"]) - centre(image)).abs().max()) > 2
        for key in ("lesion", "bone"):
            if masks_follow:  # the mask follows its image: the same place (flips exactly, a turn to half a pixel)
                assert float((centre(out[key]) - centre(out["image"])).abs().max()) < 0.5, (degrees, p_h, p_v)
            else:  # the reference code's masks never moved
                assert torch.equal(out[key], mask)


def test_zoom_scales_image_and_masks_alike_within_its_range():
    """--scale-aug S: each sample zoomed about the centre by a factor in [1/(1+S), 1+S], both ways over the draws;
    the masks follow the image, stay binary, and the block's area goes with the square of the factor; off (S = 0)
    the generator gives the rotation and flips the same draws as before, so older runs train as they did."""
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    from bonemet.training.augment import SegAugment

    image = torch.zeros(1, 64, 64)
    image[0, 16:48, 16:48] = 1.0  # a centred 32 px block
    mask = torch.zeros(1, 64, 64)
    mask[0, 24:40, 24:40] = 1.0  # a centred 16 px block: a quarter of the image block's area
    aug = SegAugment(degrees=0.0, p_hflip=0.0, p_vflip=0.0, scale=0.3, generator=torch.Generator().manual_seed(5))
    zooms = []
    for _ in range(30):
        out = aug({"image": image, "lesion": mask, "bone": mask})
        zoom = float((out["image"] > 0.5).sum()) ** 0.5 / 32
        assert set(out["lesion"].unique().tolist()) <= {0.0, 1.0} and torch.equal(out["lesion"], out["bone"])
        assert abs(float(out["lesion"].sum()) ** 0.5 / 16 - zoom) < 0.07  # the mask zoomed as its image
        zooms.append(zoom)
    assert 1 / 1.3 - 0.04 < min(zooms) < 0.9 and 1.1 < max(zooms) < 1.3 + 0.04
    plain = torch.rand(1, 32, 32)
    for seed in range(8):  # off: one draw for the rotation, one for its angle, one per flip, as before the zoom
        g = torch.Generator().manual_seed(seed)
        draw = lambda: float(torch.rand((), generator=g))  # noqa: E731
        assert draw() < 1.0
        expected = TF.rotate(plain, (draw() * 2 - 1) * 35.0, InterpolationMode.BILINEAR, fill=0.0)
        expected = TF.horizontal_flip(expected) if draw() < 0.5 else expected
        expected = TF.vertical_flip(expected) if draw() < 0.1 else expected
        assert torch.equal(SegAugment(generator=torch.Generator().manual_seed(seed))({"image": plain})["image"],
                           expected)


def test_density_scales_only_what_lies_above_the_pivot_each_channel_at_its_own():
    """--density-aug D: each channel's values above its pivot (100 HU in that channel's window) move about it by
    one factor per sample, drawn from [1/(1+D), 1+D] (both ways over the draws); soft tissue below stays as it is,
    the masks stay as they are, and a blastic lesion stays as much denser than its marrow in proportion."""
    from bonemet.data.windows import PRESETS
    from bonemet.training.augment import SegAugment, density_pivots

    bone = PRESETS["bone"]
    assert density_pivots("bone", 3) == [pytest.approx(600 / 1800)] * 3  # (100 - -500) / 1800
    assert density_pivots("multi", 3) == [pytest.approx(v) for v in (600 / 1800, 260 / 400, 1100 / 2400)]
    assert density_pivots("unknown (images used as given)", 3) is None and density_pivots("multi", 1) is None
    hu = torch.tensor([[40.0, 100.0, 200.0, 700.0]])  # muscle, the pivot, marrow, a blastic lesion
    image = torch.from_numpy(bone(hu.numpy())).view(1, 1, 4).repeat(3, 1, 1)
    mask = (hu > 600).float().view(1, 1, 4)
    aug = SegAugment(degrees=0.0, p_hflip=0.0, p_vflip=0.0, density=0.5, pivots=density_pivots("bone", 3),
                     generator=torch.Generator().manual_seed(1))
    factors = []
    for _ in range(40):
        out = aug({"image": image, "lesion": mask})
        back = out["image"] * 1800 - 500  # to HU
        assert torch.equal(out["lesion"], mask) and torch.allclose(back[0], back[2])
        assert torch.allclose(back[0, 0, :2], hu[0, :2], atol=0.01)
        k = float((back[0, 0, 2] - 100) / 100)
        assert float(back[0, 0, 3]) == pytest.approx(100 + 600 * k, abs=0.05)
        factors.append(k)
    assert 1 / 1.5 - 1e-4 < min(factors) < 0.8 and 1.25 < max(factors) < 1.5 + 1e-4
    multi = SegAugment(degrees=0.0, p_hflip=0.0, p_vflip=0.0, density=0.5, pivots=density_pivots("multi", 3),
                       generator=torch.Generator().manual_seed(1))
    three = torch.stack([torch.from_numpy(PRESETS[n](hu.numpy())) for n in ("bone", "soft", "wide")])
    out = multi({"image": three})["image"]
    for c, name in enumerate(("bone", "soft", "wide")):  # each channel about its own window's 100 HU
        w = PRESETS[name]
        back = out[c, 0] * w.width + w.low
        assert float(back[0]) == pytest.approx(40.0, abs=0.01) and float(back[1]) == pytest.approx(100.0, abs=0.01)
        assert float(back[2]) == pytest.approx(100 + 100 * factors[0], abs=0.05)  # the same seed: the same factor
    with pytest.raises(ValueError, match="pivot"):
        SegAugment(density=0.5)


def test_slices_without_a_bone_mask_add_nothing_to_the_bone_loss():
    """A real negative without a bone mask (has_bone false) must not teach the bone head "no bone here": the loss
    of a batch equals the lesion term of both slices plus the bone term of the slice that has a mask."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    lo, bo = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    batch = {"lesion": (torch.rand(2, 1, 8, 8) > 0.8).float(), "bone": torch.zeros(2, 1, 8, 8)}
    batch["bone"][0, :, 2:6, 2:6] = 1.0  # slice 1 has no mask: its zeros are "unknown", not "no bone"
    cfg = SegConfig(data="x")
    lesion = F.binary_cross_entropy_with_logits(lo, batch["lesion"])
    bone_first = F.binary_cross_entropy_with_logits(bo[:1], batch["bone"][:1])
    got = seg_mod.seg_loss(lo, bo, {**batch, "has_bone": torch.tensor([True, False])}, cfg)
    assert torch.allclose(got, cfg.lesion_weight * lesion + cfg.bone_weight * bone_first)
    both = seg_mod.seg_loss(lo, bo, {**batch, "has_bone": torch.tensor([True, True])}, cfg)
    assert torch.allclose(both, cfg.lesion_weight * lesion + cfg.bone_weight
                          * F.binary_cross_entropy_with_logits(bo, batch["bone"]))
    none = seg_mod.seg_loss(lo, bo, {**batch, "has_bone": torch.tensor([False, False])}, cfg)
    assert torch.allclose(none, cfg.lesion_weight * lesion)


def test_the_lesion_dice_term_is_the_batchs_soft_dice_added_to_the_bce():
    """``lesion_dice`` W: the lesion loss is BCE + W (1 - 2 sum(p t) / (sum p + sum t)) over every pixel of the
    batch at once (known answers by hand), so a lesion-free slice's false positives count against the lesions of
    the others; with W = 0 it is the BCE alone."""
    import torch.nn.functional as F

    lo = torch.tensor([[[[2.0, -1.0], [0.0, -3.0]]], [[[1.0, -2.0], [-2.0, -2.0]]]])
    t = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    p = torch.sigmoid(lo)
    dice = 1 - 2 * (p * t).sum() / (p.sum() + t.sum())
    bce = F.binary_cross_entropy_with_logits(lo, t)
    batch = {"lesion": t}
    assert torch.allclose(seg_mod.seg_loss(lo, None, batch, SegConfig(data="x", model="unet")), bce)
    got = seg_mod.seg_loss(lo, None, batch, SegConfig(data="x", model="unet", lesion_dice=0.5))
    assert torch.allclose(got, bce + 0.5 * dice, atol=1e-6)
    # by hand: sum p = 2.7858, sum t = 2, sum p t = 1.3808, so Dice 0.5770 and its loss 0.4230; BCE 0.3595
    assert abs(float(got) - (0.3595 + 0.5 * 0.4230)) < 1e-3
    # the lesion-free second slice's probabilities (0.73, 0.12, 0.12, 0.12) are in the sum: its first slice alone
    # has a Dice loss of 1 - 2 x 1.3808 / (1.6971 + 2) = 0.2530
    alone = seg_mod.seg_loss(lo[:1], None, {"lesion": t[:1]}, SegConfig(data="x", model="unet", lesion_dice=1.0))
    assert abs(float(alone - F.binary_cross_entropy_with_logits(lo[:1], t[:1])) - 0.2530) < 1e-3


def test_a_partial_bone_label_adds_only_the_pixels_it_knows_to_the_bone_loss():
    """A partial bone label (a real series' sure bone and sure no-bone by HU): its unknown pixels add nothing to the
    bone term, whatever the bone head says there; its known pixels count as a whole mask's pixels do."""
    import torch.nn.functional as F

    from bonemet.data.datasets import UNKNOWN_BONE_TARGET

    torch.manual_seed(0)
    lo, bo = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    bone = torch.zeros(2, 1, 8, 8)
    bone[:, :, 2:6, 2:6] = 1.0
    bone[1, :, :, 6:] = UNKNOWN_BONE_TARGET  # slice 1: two columns of unknown
    batch = {"lesion": (torch.rand(2, 1, 8, 8) > 0.8).float(), "bone": bone,
             "has_bone": torch.tensor([True, True]), "bone_partial": torch.tensor([False, True])}
    cfg = SegConfig(data="x")
    lesion = F.binary_cross_entropy_with_logits(lo, batch["lesion"])
    known = F.binary_cross_entropy_with_logits(bo[1, :, :, :6], bone[1, :, :, :6])
    expected = cfg.lesion_weight * lesion + cfg.bone_weight * (
        F.binary_cross_entropy_with_logits(bo[0], bone[0]) + known) / 2
    got = seg_mod.seg_loss(lo, bo, batch, cfg)
    assert torch.allclose(got, expected)
    moved = bo.clone()
    moved[1, :, :, 6:] += 5.0  # the head changes its mind where the label does not know: no change
    assert torch.allclose(seg_mod.seg_loss(lo, moved, batch, cfg), got)
    moved[1, :, 0, 0] += 5.0  # and where it knows there is no bone: the loss rises
    assert seg_mod.seg_loss(lo, moved, batch, cfg) > got + 1e-3


def test_intensity_randomisation_changes_the_image_alone_within_its_ranges():
    """Domain randomisation: contrast about mid-window, offset, noise, blur or sharpening of the image; the masks
    stay as they are; the same seed gives the same image; each draw stays within its stated range."""
    from bonemet.training import augment

    ramp = torch.linspace(0.2, 0.8, 64).repeat(64, 1)
    image = torch.stack([ramp] * 3)
    mask = (image[:1] > 0.6).float()
    no_geometry = dict(degrees=0.0, p_hflip=0.0, p_vflip=0.0, intensity=True)
    outs = []
    for seed in range(40):
        aug = augment.SegAugment(generator=torch.Generator().manual_seed(seed), **no_geometry)
        out = aug({"image": image, "lesion": mask, "bone": mask})
        assert out["lesion"] is mask and out["bone"] is mask
        assert torch.equal(out["image"][0], out["image"][2])  # the channels of one slice change alike
        again = augment.SegAugment(generator=torch.Generator().manual_seed(seed), **no_geometry)(
            {"image": image, "lesion": mask})
        assert torch.equal(again["image"], out["image"])
        outs.append(out["image"][0])
    # the mean of 40 draws over the middle of the ramp stays near it (the offset and the noise average out),
    # while single draws differ from the image by the contrast, offset and noise stated in augment
    mid = (slice(8, 56), slice(8, 56))
    assert float((torch.stack(outs).mean(0)[mid] - ramp[mid]).abs().mean()) < 0.03
    diffs = [float((o[mid] - ramp[mid]).abs().mean()) for o in outs]
    assert min(diffs) > 0.0 and max(diffs) < (augment.CONTRAST[1] - 1) * 0.3 + augment.OFFSET + augment.NOISE
    off = augment.SegAugment(generator=torch.Generator().manual_seed(0), degrees=0.0, p_hflip=0.0, p_vflip=0.0)
    assert torch.equal(off({"image": image})["image"], image)  # off by default: the thesis' augmentation


def test_paper_protocol_reproduces_the_reference_run(phantom, tmp_path, monkeypatch):
    """Slice-level folds, a new Adam every epoch, the checkpoint with the best F1 on the scored fold, masks left
    unrotated, empty-empty Dice 0, and the per-fold ensemble row, each labelled leaky."""
    from bonemet.evaluation import seg_eval
    from bonemet.training import augment

    made = []
    real_make = seg_mod.make_optimizer
    monkeypatch.setattr(seg_mod, "make_optimizer", lambda *a, **k: made.append(1) or real_make(*a, **k))
    follow = []
    real_init = augment.SegAugment.__init__

    def init(self, *a, **k):
        follow.append(k.get("masks_follow", True))
        real_init(self, *a, **k)

    monkeypatch.setattr(augment.SegAugment, "__init__", init)
    cfg = SegConfig(data=str(phantom / "bmseg"), model="unet", protocol="paper", epochs=2, size=32, width=2,
                    neg_ratio=0.2, mask_resize="paper")
    run = train_segmentation(cfg, tmp_path / "paper")
    folds = json.loads((run / "splits.json").read_text())["folds"]
    assert len(folds) == 5 and len(made) == 5 * (1 + 2)  # one per fold, then one more every epoch
    assert follow == [False] * 5
    for k in range(5):
        done = json.loads((run / f"fold{k}" / "done.json").read_text())
        assert done["checkpoint"] == "best.pt" and "leaky" in done["selection"] and "scored fold" in done["selection"]
    s = seg_eval.evaluate_run(run)
    assert "leaky ensemble" in s["cv"] and len(s["cv"]["leaky ensemble"]["per_fold"]) == 5
    cv = (run / "eval" / "cv_table.md").read_text()
    assert "patients leak" in cv and "ensemble of Unet (leaky: 4 of its 5 members trained on each fold)" in cv
    assert "| Mean |" in (run / "eval" / "per_fold_f1.md").read_text()
    # the reference's Dice: a slice with no lesion and no prediction scores 0 (1 under bonemet's own protocol)
    from bonemet.data.datasets import SegmentationDataset

    idx = seg_mod.load_bmseg(phantom / "bmseg")
    healthy = [sl for sl in idx.slices if sl.patient == "P001"][:2]
    ds = SegmentationDataset(healthy, 32, 3)
    empty = np.zeros((2, 32, 32), np.float32)
    assert seg_eval.score(empty, None, ds).scores["Dice"] == 1.0
    assert seg_eval.score(empty, None, ds, empty_dice=0.0).scores["Dice"] == 0.0
