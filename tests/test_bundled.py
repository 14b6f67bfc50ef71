"""Bundled models: packaged from a run with a SHA-256 manifest, refused when altered, used by predict without
--seg, listed by ``bonemet models``, and re-built by ``bonemet models build``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

import bonemet
from bonemet.errors import BonemetError
from bonemet.runs import bundled
from conftest import invoke
from test_cli import assert_clean_failure


@pytest.fixture()
def bundle_root(seg_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package folder of bundled models holding ``seg_run`` packaged as the default model."""
    root = tmp_path / "pretrained"
    bundled.package_run(seg_run, root / "tiny", "tiny", "a test model", default=True)
    monkeypatch.setattr(bundled, "BUNDLE_DIR", root)
    return root


def test_a_packaged_run_predicts_as_the_run_and_predict_uses_it_without_seg(phantom, seg_run, bundle_root,
                                                                             tmp_path):
    b = bundled.bundled_model("tiny")
    assert b.default and b.problems() == [] and b.manifest["members"] == 2
    assert sorted(b.manifest["files"]) == ["config.json", "fold0/done.json", "fold0/last.pt", "fold1/done.json",
                                           "fold1/last.pt", "splits.json"]
    assert json.loads((bundle_root / "tiny" / "fold0" / "done.json").read_text())["checkpoint"] == "last.pt"
    scan = phantom / "volumes" / "P001" / "ct.nii.gz"
    img = nib.load(scan)
    by_run = bonemet.predict(img, seg=seg_run, probabilities=True, device="cpu")
    by_default = bonemet.predict(img, probabilities=True, device="cpu")  # no seg: the bundled default
    assert np.array_equal(by_run.lesion_probability, by_default.lesion_probability)
    r = invoke("predict", scan, "--out", tmp_path / "out", "--no-viewer")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["models"]["segmentation"]["run"] == str(bundle_root / "tiny")


def test_an_altered_bundled_file_is_refused_in_one_line(phantom, bundle_root, tmp_path):
    weights = bundle_root / "tiny" / "fold1" / "last.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte: torch would still load it, with one weight changed
    weights.write_bytes(bytes(data))
    with pytest.raises(BonemetError, match="fold1/last.pt does not match its SHA-256"):
        bundled.default_model()
    r = invoke("predict", phantom / "volumes" / "P001" / "ct.nii.gz", "--out", tmp_path / "out")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert_clean_failure(r, "bundled model 'tiny' is damaged", "reinstall bonemet")
    assert not (tmp_path / "out").exists()
    listing = invoke("models")
    assert listing.returncode == 0 and "DAMAGED" in listing.stdout and "fold1/last.pt" in listing.stdout


def test_without_a_bundled_default_predict_asks_for_seg(phantom, tmp_path, monkeypatch):
    monkeypatch.setattr(bundled, "BUNDLE_DIR", tmp_path / "none")
    r = invoke("predict", phantom / "volumes" / "P001" / "ct.nii.gz", "--out", tmp_path / "out")
    assert r.returncode == 2
    assert_clean_failure(r, "no bundled default model", "--seg")


def test_the_shipped_default_model_is_intact_and_has_its_card():
    shipped = bundled.bundled_models()
    if not shipped:
        pytest.skip(f"no model bundled in {bundled.BUNDLE_DIR}")
    defaults = [b for b in shipped if b.default]
    assert len(defaults) == 1
    b = defaults[0]
    assert b.problems() == []
    card = (b.folder / bundled.CARD).read_text()
    results = json.loads((b.folder / "results.json").read_text())
    assert "Not a medical device" in card and results["recipe_command"] in card
    assert f"Mean findings per scan: {results['leave_one_out_mean_findings']}" in card
    assert b.size_mb < 20
    listing = invoke("models")
    assert listing.returncode == 0 and b.name in listing.stdout and "ok" in listing.stdout
    shown = invoke("models", "card", b.name)
    assert shown.returncode == 0 and shown.stdout.strip() == card.strip()


def test_a_builds_recorded_options_give_back_its_recipe(tmp_path):
    """recipe.json records every option that changes a build (what --resume compares and recipe_of reads back);
    an option an older build did not record reads back as its default."""
    from bonemet import recipe as rc

    given = rc.Recipe([(tmp_path / "ct.nii.gz", None)], [tmp_path / "real"],
                      [(tmp_path / "longer.nii.gz", tmp_path / "ct.nii.gz")], epochs=3, copies=2, window="multi",
                      real_in_every_member=True, lesion_prior=0.01, partial_bone=True, scale_aug=0.2, width=16,
                      pixel_mm=2.0, context_mm=10.0, lesion_dice=0.5, density_aug=1.5, phantom_patients=5,
                      phantom_thighs=True)
    assert rc._recipe_from(rc._inputs(given)) == given
    assert (given.size, rc.model_name(given)) == (192, "ehattunet-2mm-ctx10-v1")  # the 384 mm field at 2 mm pixels
    older = {k: v for k, v in rc._inputs(given).items()
             if k not in ("scale_aug", "width", "same_patient", "pixel_mm", "context_mm", "lesion_dice",
                          "density_aug", "phantom_patients", "phantom_thighs")}
    back = rc._recipe_from(older)
    assert (back.scale_aug, back.width, back.epochs, back.same_patient, back.context_mm) == (0.0, 8, 3, [], 0.0)
    assert (back.pixel_mm, back.size, rc.model_name(back)) == (3.0, 128, rc.NAME)
    assert rc._seg_config(given, tmp_path).size == 192 and rc._seg_config(back, tmp_path).pixel_mm == 3.0
    assert (rc._seg_config(given, tmp_path).context_mm, rc._seg_config(back, tmp_path).context_mm) == (10.0, 0.0)
    assert (rc._seg_config(given, tmp_path).lesion_dice, rc._seg_config(back, tmp_path).lesion_dice) == (0.5, 0.0)
    assert (rc._seg_config(given, tmp_path).density_aug, rc._seg_config(back, tmp_path).density_aug) == (1.5, 0.0)
    assert (given.phantom_patients, back.phantom_patients) == (5, 8)
    assert (given.phantom_thighs, back.phantom_thighs) == (True, False)


def test_a_recipe_without_phantom_patients_trains_on_real_ct_only(tmp_path):
    """--phantom-patients 0: no phantom is made and none is among the training sources (a real series' negatives
    still are); with --real-in-every-member, whose folds split the phantom patients only, it is refused."""
    from bonemet import recipe as rc
    from bonemet.errors import BonemetError

    real = tmp_path / "real.nii.gz"
    real.write_bytes(b"")  # never read: its negatives' folder is there already
    (tmp_path / "work" / "data" / "real0").mkdir(parents=True)
    sources, negatives = rc._sources(rc.Recipe([], [real], phantom_patients=0), tmp_path / "work")
    assert sources == [] and [v[1:] for v in negatives.values()] == [("real0", "N0")]
    assert not (tmp_path / "work" / "data" / "phantom").exists()
    with pytest.raises(BonemetError, match="needs --phantom-patients 1 or more"):
        rc._check(rc.Recipe([], [], real_in_every_member=True, phantom_patients=0))
    with pytest.raises(BonemetError, match="--phantom-thighs .* needs --phantom-patients 1 or more"):
        rc._check(rc.Recipe([], [], phantom_thighs=True, phantom_patients=0))


def test_a_recipe_with_phantom_thighs_trains_on_longer_phantom_scans(tmp_path):
    """--phantom-thighs: the training phantom's scans run on to mid-thigh at the recipe's slice spacing (more
    slices), and it is the phantom among the training sources."""
    from bonemet import recipe as rc
    from bonemet.phantom.anatomy import THIGH_REACH

    recipe = rc.Recipe([], [], phantom_thighs=True, quick=True)
    sources, _ = rc._sources(recipe, tmp_path / "work")
    described = json.loads((tmp_path / "work" / "data" / "phantom" / "phantom.json").read_text())
    slices = recipe.phantom_shape[1]
    assert (described["thighs"], described["slices"]) == (True, round(slices * (1 + THIGH_REACH)))
    assert [s[1] for s in sources] == ["ph"]


def test_a_series_of_a_backgrounds_patient_trains_in_its_fold_and_is_left_out_with_it(real_ct, tmp_path):
    """``--same-patient SERIES:BACKGROUND``: the series' slices are negatives named as the background's patient
    (so the patient-level folds keep them together), every training that leaves that background out leaves them
    out too, and it is never left out (measured) on its own; a series given twice or a background not given is
    refused."""
    from bonemet import recipe as rc

    abdomen = real_ct / "abdomen_3mm_ct.nii.gz"
    chest = real_ct / "chest_abdomen_dicom"
    torso = real_ct / "torso_3mm_ct.nii.gz"  # slices 82-111 are abdomen_3mm_ct's, voxel for voxel
    recipe = rc.Recipe([(chest, real_ct / "chest_abdomen_dicom_bone_mask.nii.gz"),
                        (abdomen, real_ct / "abdomen_3mm_bone_mask.nii.gz")], [], [(torso, abdomen)], quick=True)
    rc._check(recipe)
    sources, negatives = rc._sources(recipe, tmp_path)
    assert [(s[1], s[2]) for s in negatives.values()] == [("same-patient0", "B1")]
    rows = (negatives[torso][0] / "patients.csv").read_text().splitlines()[1:]
    assert len(rows) == 112 and {r.split(",")[1] for r in rows} == {"B1"}
    assert [s[1] for s in rc.without_patient(sources, negatives, "B1")] == ["ph", "background0-0"]
    assert [s[1] for s in rc.without_patient(sources, negatives, "B0")] == ["ph", "background1-0", "same-patient0"]
    for bad, message in (((torso, real_ct / "torso_3mm_ct.nii.gz"), "not a --background"),
                         ((abdomen, abdomen), "also a --background or a --real series")):
        with pytest.raises(BonemetError, match=message):
            rc._check(rc.Recipe(recipe.backgrounds, [], [bad], quick=True))
    missing = invoke("models", "build", tmp_path / "b", "--quick", "--background", chest, "--same-patient",
                     f"{tmp_path / 'none.nii.gz'}:{chest}")
    assert missing.returncode == 2 and not (tmp_path / "b").exists()
    assert_clean_failure(missing, "--same-patient series not found")
    # the same patient given as a held-out series is found by its slices and refused before anything is written
    leak = invoke("models", "build", tmp_path / "b", "--quick", "--background", abdomen, "--real", torso)
    assert leak.returncode == 2 and not (tmp_path / "b").exists()
    assert_clean_failure(leak, f"{torso}: shares 30 axial slice(s), voxel for voxel, with {abdomen}")


@pytest.mark.slow
def test_models_build_makes_a_verified_bundle_with_its_card(real_ct, tmp_path):
    """The recipe end to end at toy size: two backgrounds (each left out once; the second without a bone mask, so
    its lesions are placed by HU and it has no bone label), one real series as negatives (left out once) with a
    partial bone label, the bundle, its card and results; then the refusals."""
    from bonemet.recipe import model_card, recipe_of, sensitivity_table

    left_out = real_ct.parent / "real_ct_more" / "ibsi-sts-001" / "CT_image.nii.gz"  # another patient's thigh
    if not left_out.exists():
        pytest.skip(f"real CT test data not found at {left_out} (it sits beside the repository in CI)")
    backgrounds = [f"{real_ct / 'abdomen_3mm_ct.nii.gz'}:{real_ct / 'abdomen_3mm_bone_mask.nii.gz'}",
                   str(real_ct / "chest_abdomen_dicom")]
    out = tmp_path / "build"
    r = invoke("models", "build", out, "--quick", "--background", backgrounds[0], "--background", backgrounds[1],
               "--real", left_out, "--real-in-every-member", "--lesion-prior", "0.01", "--partial-bone",
               "--scale-aug", "0.2", "--lesion-dice", "0.5", "--density-aug", "0.5", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    b = bundled.bundled_models(out)[0]
    assert b.problems() == [] and b.default and b.manifest["members"] == 2
    results = json.loads((b.folder / "results.json").read_text())
    card = (b.folder / bundled.CARD).read_text()
    assert results["recipe_command"].startswith("bonemet models build") and results["recipe_command"] in card
    assert [row["series"] for row in results["leave_one_out"]] == ["ibsi-sts-001/CT_image.nii.gz"]
    assert len(results["phantom_test"]) == 2
    n = results["leave_one_out"][0]["findings"]
    assert f"| ibsi-sts-001/CT_image.nii.gz | 59 | {n} |" in card
    # each left-out model never saw its series; the shipped one trained on all, real slices without a bone mask
    work = out / "work"
    for folder, patient in (("without-real0", "N0"), ("without-background0", "B0"), ("without-background1", "B1")):
        assert f'"{patient}"' not in (work / folder / "seg" / "splits.json").read_text(), folder
        assert f'"{patient}"' in (work / "all" / "seg" / "splits.json").read_text()
    # --real-in-every-member: both members learn from every real series; the folds split the phantom only
    for fold in json.loads((work / "all" / "seg" / "splits.json").read_text())["folds"]:
        assert {"B0", "B1", "N0"} <= set(fold["train_patients"])
        assert all(p.startswith("P") for p in fold["val_patients"])
    rows = (work / "all" / "mixed" / "patients.csv").read_text().splitlines()
    assert sum(line.endswith(",partial") for line in rows) == 59  # the negatives: a partial bone label by HU
    assert sum(line.endswith(",none") for line in rows) == 20  # the maskless background: no bone label
    assert sum(line.startswith("background1-0_") and line.endswith(",none") for line in rows) == 20
    # the left-out backgrounds: each inserted lesion (by its id: two that touch are one component for predict's
    # own match) found when the lesion mask predict wrote overlaps it
    assert [row["series"] for row in results["leave_background_out"]] == ["real_ct/abdomen_3mm_ct.nii.gz",
                                                                           "real_ct/chest_abdomen_dicom"]
    for i, row in enumerate(results["leave_background_out"]):
        done = work / f"without-background{i}" / "predict-inserted"
        truth = json.loads((done / "summary.json").read_text())["truth"]
        ids = np.asarray(nib.load(work / "data" / f"inserted-test{i}" / "volumes" / "T" / "lesion_mask.nii.gz").dataobj)
        written = np.asarray(nib.load(done / "lesion_mask.nii.gz").dataobj) > 0
        assert len(row["lesions"]) == 3 == len(set(np.unique(ids).tolist()) - {0})
        assert sum(les["found"] for les in row["lesions"]) == len(set(np.unique(ids[written]).tolist()) - {0})
        assert truth["found"] <= sum(les["found"] for les in row["lesions"])
        assert row["false_positives"] == truth["false_positive_lesions"]
        # localised: some component of the written mask that overlaps it has a quarter of its voxels in lesions
        comp, n = ndimage.label(written, np.ones((3, 3, 3), bool))
        share = {c: ((comp == c) & (ids > 0)).sum() / (comp == c).sum() for c in range(1, n + 1)}
        ids_in_order = sorted(set(np.unique(ids).tolist()) - {0})
        assert [les["localised"] for les in row["lesions"]] == [
            any(share[c] >= 0.25 for c in set(np.unique(comp[ids == i]).tolist()) - {0}) for i in ids_in_order]
        assert row["off_target"] == sum(v < 0.25 for v in share.values()) == truth["off_target_lesions"]
    assert 0.0 <= results["leave_background_out"][0]["bone Dice"] <= 1.0
    assert "bone Dice" not in results["leave_background_out"][1] and "| real_ct/chest_abdomen_dicom | - |" in card
    assert "(no bone mask: placed by HU, no bone label)" in card
    localised = [les["localised"] for row in results["leave_background_out"] for les in row["lesions"]
                 if les["diameter_mm"] >= 10.0]
    assert results["inserted_localised_sensitivity_10mm"] == round(sum(localised) / len(localised), 3)
    assert f"does not\ncount): {results['inserted_localised_sensitivity_10mm']}." in card
    assert "every real series trains both members" in card
    assert "The lesion head's bias starts at the log-odds of 0.01" in card
    assert "every slice a negative (a partial bone label from HU alone" in card
    assert json.loads((out / "recipe.json").read_text())["inputs"]["partial_bone"] is True
    assert {json.loads(c.read_text())["lesion_prior"] for c in work.glob("*/seg/config.json")} == {0.01}
    assert {json.loads(c.read_text())["scale_aug"] for c in work.glob("*/seg/config.json")} == {0.2}
    assert {json.loads(c.read_text())["lesion_dice"] for c in work.glob("*/seg/config.json")} == {0.5}
    assert {json.loads(c.read_text())["density_aug"] for c in work.glob("*/seg/config.json")} == {0.5}
    assert "blur or sharpening), bone density (HU above 100) scaled by up to 0.5 either way." in " ".join(card.split())
    assert "lesion pos-weight 10.0 plus 0.5 x a soft Dice loss over the batch," in card
    assert results["device"].startswith("cpu (") and f"trained on\n{results['device']}, bonemet" in card
    assert "rotations and flips, zoom by up to 0.2 either way" in card
    assert len(list(work.glob("*/seg/config.json"))) == 4  # without-real0, without-background0 and 1, all
    cells = [c for row in results["inserted_sensitivity"] for k, c in row.items() if k == "all" and c != "-"]
    assert sum(int(c.split("/")[1]) for c in cells) == 6
    # the card's first table counts the localised ones, by band
    every = [les for row in results["leave_background_out"] for les in row["lesions"]]
    assert results["inserted_localised_sensitivity"] == sensitivity_table(every, "localised")
    marked = [{**row, "all": f"{i}/9"} for i, row in enumerate(results["inserted_localised_sensitivity"])]
    made = model_card(recipe_of(out), {**results, "inserted_localised_sensitivity": marked},
                      json.loads((work / "all" / "seg" / "config.json").read_text()))
    first, second = made.split("does not count), by largest axial diameter")[1].split("Found by any overlap")
    assert all(f"| {row['size']} |" in first and f"| {row['all']} |" in first for row in marked)
    assert not any(f"| {row['all']} |" in second for row in marked)
    # the manifest's hashes are the files' own, and the bundle is a run predict can use
    assert all(bundled.sha256(b.folder / f) == h for f, h in b.manifest["files"].items())
    pred = bonemet.predict(left_out, seg=b.verified(), device="cpu")
    assert pred.summary["input"]["slices"] == 59
    # a second build into the same folder is refused, and so is resuming it with other inputs; a background
    # cannot be left out
    again = invoke("models", "build", out, "--quick", "--background", backgrounds[0])
    assert again.returncode == 2
    assert_clean_failure(again, "output folder exists")
    other = invoke("models", "build", out, "--quick", "--resume", "--background", backgrounds[0])
    assert other.returncode == 2
    assert_clean_failure(other, "--resume with other backgrounds")
    window = invoke("models", "build", out, "--quick", "--resume", "--background", backgrounds[0], "--background",
                    backgrounds[1], "--real", left_out, "--real-in-every-member", "--window", "multi")
    assert window.returncode == 2
    assert_clean_failure(window, "--resume with other backgrounds, real series, --epochs, --copies, --window")
    same = invoke("models", "build", tmp_path / "b2", "--quick", "--background", backgrounds[0], "--real",
                  real_ct / "abdomen_3mm_ct.nii.gz")
    assert same.returncode == 2 and not (tmp_path / "b2").exists()
    assert_clean_failure(same, "is also a background")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine (runs where one is)")
def test_models_build_trains_and_measures_on_the_gpu(real_ct, tmp_path):
    """``models build --device cuda``: every training runs on the GPU in mixed precision, and the card says where."""
    out = tmp_path / "build"
    r = invoke("models", "build", out, "--quick", "--device", "cuda", "--background",
               f"{real_ct / 'abdomen_3mm_ct.nii.gz'}:{real_ct / 'abdomen_3mm_bone_mask.nii.gz'}")
    assert r.returncode == 0, r.stderr
    results = json.loads((out / "work" / "results.json").read_text())
    assert results["device"].startswith("cuda") and results["phantom_test"]
    assert {json.loads(c.read_text())["bf16"] for c in (out / "work").glob("*/seg/config.json")} == {True}


def test_models_build_window_reaches_every_training_image(real_ct, tmp_path):
    """``--window multi``: the phantom, the inserted-lesion copies and the real negatives are all written in the
    three windows (bone, soft, wide as channels, which differ), and the merged data says so (the training reads
    the window from there and stores it with the model)."""
    from PIL import Image

    from bonemet.data.windows import PRESETS, to_uint8
    from bonemet.inference.scan import read_scan
    from bonemet.recipe import Recipe, _merge, _sources

    scan = real_ct / "torso_3mm_ct.nii.gz"
    recipe = Recipe([(real_ct / "abdomen_3mm_ct.nii.gz", real_ct / "abdomen_3mm_bone_mask.nii.gz")], [scan],
                    window="multi", quick=True)
    sources, negatives = _sources(recipe, tmp_path)
    data = _merge(recipe, tmp_path / "m", sources + list(negatives.values()))
    assert json.loads((data / "conversion.json").read_text())["window"] == "multi"
    images = sorted((data / "image").glob("*.png"))
    for prefix in ("ph_", "background0-0_", "real0_"):
        img = np.asarray(Image.open(next(p for p in images if p.name.startswith(prefix))))
        assert img.ndim == 3 and img.shape[2] == 3, prefix
        assert not np.array_equal(img[..., 0], img[..., 1]) and not np.array_equal(img[..., 1], img[..., 2]), prefix
    # a real negative's first slice is its first axial slice (canonical order, rows along the second axis) in the
    # three windows, in that order: a known answer
    hu = read_scan(scan).volume.array[:, :, 0].T
    first = np.asarray(Image.open(next(p for p in images if p.name.startswith("real0_"))))
    for c, name in enumerate(("bone", "soft", "wide")):
        assert np.array_equal(first[..., c], to_uint8(PRESETS[name](hu))), name


def test_sensitivity_table_counts_each_lesion_in_its_band_and_type():
    from bonemet.recipe import sensitivity_table

    lesions = [{"kind": "lytic", "diameter_mm": 9.9, "found": False, "localised": False},
               {"kind": "lytic", "diameter_mm": 10.0, "found": True, "localised": False},
               {"kind": "blastic", "diameter_mm": 15.0, "found": False, "localised": False},
               {"kind": "mixed", "diameter_mm": 25.0, "found": True, "localised": True},
               {"kind": "lytic", "diameter_mm": 31.0, "found": True, "localised": False}]
    assert sensitivity_table(lesions, "localised") == [
        {"size": "under 10 mm", "blastic": "-", "lytic": "0/1", "mixed": "-", "all": "0/1"},
        {"size": "10-20 mm", "blastic": "0/1", "lytic": "0/1", "mixed": "-", "all": "0/2"},
        {"size": "20 mm or more", "blastic": "-", "lytic": "0/1", "mixed": "1/1", "all": "1/2"}]
    assert sensitivity_table(lesions) == [
        {"size": "under 10 mm", "blastic": "-", "lytic": "0/1", "mixed": "-", "all": "0/1"},
        {"size": "10-20 mm", "blastic": "0/1", "lytic": "1/1", "mixed": "-", "all": "1/2"},
        {"size": "20 mm or more", "blastic": "-", "lytic": "1/1", "mixed": "1/1", "all": "2/2"}]
