"""Behaviour that had no test: predict's options end to end, gantry tilt, the learning-rate schedule, the
ensemble's no-leak guard, model selection, the sequential model and the ablation switches."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from bonemet.models import create_model, split_outputs
from conftest import invoke
from test_cli import assert_clean_failure
from test_predict import _metastatic_patient


def test_probability_maps_hold_the_slices_probabilities(phantom, seg_run, tmp_path):
    """--probabilities: 8-bit levels whose NIfTI scaling gives back each slice's highest lesion probability."""
    out = tmp_path / "o"
    src = phantom / "volumes" / _metastatic_patient(phantom) / "ct.nii.gz"
    r = invoke("predict", src, "--seg", seg_run, "--out", out, "--probabilities")
    assert r.returncode == 0, r.stderr
    img = nib.load(out / "lesion_probability.nii.gz")
    assert img.get_data_dtype() == np.uint8 and img.dataobj.slope == pytest.approx(1 / 255)
    maps = img.get_fdata()
    assert maps.shape == nib.load(src).shape and 0 <= maps.min() and maps.max() <= 1
    with open(out / "slices.csv", newline="") as fh:
        per_slice = [float(row["segmentation probability"]) for row in csv.DictReader(fh)]
    native = maps.max(axis=(0, 1))  # the NIfTI is in the input's own axis order: its third axis is the slice
    canonical_order = per_slice if nib.aff2axcodes(img.affine)[2] == "S" else per_slice[::-1]
    assert np.allclose(native, canonical_order, atol=1 / 255 + 1e-3)
    assert (out / "bone_probability.nii.gz").exists()


def test_window_override_is_applied_and_said(phantom, seg_run, tmp_path):
    series = phantom / "dicom" / _metastatic_patient(phantom)
    outs = {}
    for window, metal in (("bone", ()), ("soft", ("--no-metal-rule", "--symmetry-hu", "25", "--min-contrast-hu",
                                                  "30"))):
        out = tmp_path / window
        r = invoke("predict", series, "--seg", seg_run, "--out", out, "--window", window, "--no-dicom-seg", *metal)
        assert r.returncode == 0, r.stderr
        assert ("overrides the window the models were trained with" in r.stderr) == (window == "soft")
        outs[window] = json.loads((out / "summary.json").read_text())
        assert outs[window]["options"]["window"] == window
        # the metal rule (the phantom has no metal: nothing dropped) is said, and so is switching it off
        assert outs[window]["options"]["metal rule"] == ("off" if metal else "a component of mean 2000 HU or more is "
                                                                              "metal, not a lesion; 0 dropped")
        symmetry = outs[window]["options"]["symmetry rule"]
        assert symmetry == "off" if not metal else symmetry.startswith(
            "a component whose mirror image across the body's midline (within 3 mm) has a mean within 25 HU")
        contrast = outs[window]["options"]["contrast rule"]
        assert contrast == "off" if not metal else contrast.startswith(
            "a component whose mean is within 30 HU of the bone around it shows no lesion on CT; ")
    from bonemet.inference.runners import _inputs
    from bonemet.inference.scan import read_scan

    scan = read_scan(series)  # what the models are fed: the slices in the window asked for
    soft, bone = (_inputs(scan, w, 3, 64, [scan.n_slices // 2]) for w in ("soft", "bone"))
    assert not torch.equal(soft, bone)
    r = invoke("predict", series, "--seg", seg_run, "--out", tmp_path / "x", "--window", "lung")
    assert_clean_failure(r, "unknown window 'lung'")


def test_gantry_tilted_series_gets_masks_but_no_seg(phantom, seg_run, tmp_path):
    from bonemet.data.export import write_dicom_series
    from bonemet.data.volume import Volume, read_nifti

    ct = read_nifti(phantom / "volumes" / _metastatic_patient(phantom) / "ct.nii.gz", dtype=None)
    tilted = ct.affine.copy()
    tilted[:3, 2] += tilted[:3, 1] * 0.25  # each slice a quarter pixel further along the columns: a tilted gantry
    write_dicom_series(Volume(ct.array, tilted), tmp_path / "tilted", "TILT")
    r = invoke("predict", tmp_path / "tilted", "--seg", seg_run, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert not (tmp_path / "o" / "lesions_seg.dcm").exists() and (tmp_path / "o" / "lesion_mask.nii.gz").exists()
    assert any("gantry-tilted" in w for w in s["warnings"]) and "gantry tilt" in r.stderr


def test_segmentation_schedule_is_the_thesis_thirds():
    from bonemet.training.schedule import PiecewiseLR

    lr = PiecewiseLR("seg", 60)
    assert [lr(e) for e in (0, 19, 20, 39, 40, 59)] == [0.01, 0.01, 0.005, 0.005, 0.001, 0.001]
    short = PiecewiseLR("seg", 30, scale_lr=0.3)  # a shorter run keeps the thirds; the scale multiplies
    assert [short(e) for e in (0, 9, 10, 19, 20, 29)] == pytest.approx([0.003, 0.003, 0.0015, 0.0015, 3e-4, 3e-4])


def test_evaluation_refuses_an_ensemble_whose_test_patients_trained_a_member(seg_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    split = json.loads((run / "splits.json").read_text())
    leaked = split["test_patients"][0]
    split["folds"][1]["train_patients"].append(leaked)
    (run / "splits.json").write_text(json.dumps(split))
    r = invoke("seg", "evaluate", run)
    assert_clean_failure(r, f"test patients ['{leaked}'] were in a member's training set")
    assert not (run / "eval" / "metrics.json").exists()


def test_select_best_keeps_the_inner_validation_epoch(phantom, tmp_path):
    run = tmp_path / "best"
    r = invoke("seg", "train", "--data", phantom / "bmseg", "--model", "unet", "--folds", "2", "--test-patients",
               "0", "--epochs", "2", "--size", "32", "--width", "2", "--select", "best", "--out", run)
    assert r.returncode == 0, r.stderr
    split = json.loads((run / "splits.json").read_text())
    for k, fold in enumerate(split["folds"]):
        done = json.loads((run / f"fold{k}" / "done.json").read_text())
        assert done["checkpoint"] == "best.pt" and "inner-validation" in done["selection"]
        inner = set(fold["inner_val_patients"])
        assert inner and not inner & set(fold["fit_patients"]) and not inner & set(split["test_patients"])
        with open(run / f"fold{k}" / "metrics.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        scores = [float(row["select_lesion_f1"]) for row in rows]
        best_epoch = int(np.argmax(scores))  # the first epoch of the best score: best.pt is not replaced by a tie
        saved = torch.load(run / f"fold{k}" / "best.pt", weights_only=True)
        assert saved["epoch"] == best_epoch


def test_sequential_model_multiplies_by_bone_and_trains():
    torch.manual_seed(0)
    model = create_model("sequential", width=2, lesion_model="attunet")
    x = torch.rand(2, 3, 32, 32)
    bone = torch.zeros(2, 1, 32, 32)
    bone[:, :, 8:24, 8:24] = 1
    lesion, bone_logits = split_outputs(model(x, bone))
    assert lesion.shape == bone_logits.shape == (2, 1, 32, 32)
    assert float(lesion[:, :, :4, :4].max()) < -10  # outside the (dilated) bone region the lesion output is off
    (lesion.mean() + bone_logits.mean()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("options", [{"block": "plain"}, {"dual_decoder": False}])
def test_ablation_switches_run_forward_and_backward(options):
    model = create_model("hybrid-attunet++", width=2, **options)
    lesion, bone = split_outputs(model(torch.rand(2, 3, 32, 32)))
    assert lesion.shape == (2, 1, 32, 32)
    assert (bone is None) == (options.get("dual_decoder") is False)  # one decoder: the lesion head alone
    (lesion.mean() + (bone.mean() if bone is not None else 0)).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.slow
def test_demo_quick_runs_every_stage(tmp_path, real_ct):
    from bonemet.runs.bundled import bundled_models

    out = tmp_path / "demo"
    scan = real_ct / "abdomen_3mm_ct.nii.gz"
    r = invoke("demo", "--quick", "--out", out, "--real-ct", scan)
    assert r.returncode == 0, r.stderr
    # the demo's model and, where the installation has one, the bundled default model, side by side on real CT
    shipped = any(b.default for b in bundled_models())
    for folder, name in (("demo-model", "the demo's model (phantom only)"),
                         ("default-model", "the bundled default model")):
        if folder == "default-model" and not shipped:
            assert "no bundled default model" in r.stderr and not (out / "real" / folder).exists()
            continue
        s = json.loads((out / "real" / folder / "summary.json").read_text())
        assert f"abdomen_3mm_ct.nii.gz, {name}: {s['verdict']}" in r.stdout
        assert f"{s['lesions']} finding(s)" in r.stdout
    for stage in ("== phantom", "== train Hybrid-AttUnet++", "== evaluate EH-AttUnet++", "== train a small_cnn16",
                  "== evaluate the classifier", "== predict on held-out patient"):
        assert stage in r.stderr, stage
    summary = next((out / "predict").iterdir()) / "summary.json"
    s = json.loads(summary.read_text())
    assert s["truth"] is not None and s["models"]["classification"] is not None
    assert (out / "seg" / "eval" / "test_table.md").exists() and (out / "cls" / "eval" / "table.md").exists()
    assert f"held-out patient {summary.parent.name}: {s['verdict']}" in r.stdout
    assert invoke("demo", "--quick", "--out", out).returncode == 2  # an existing demo needs --overwrite
