"""The data CLI end to end, and bad input: one clear line, a non-zero exit, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom

from bonemet.data.images import write_image
from conftest import invoke, run_cli
from test_readers import make_bmseg


def assert_clean_failure(res, *words: str) -> None:
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    text = res.stderr.lower()
    for w in words:
        assert w.lower() in text, res.stderr


def test_synth_check_stats_split(phantom: Path, tmp_path):
    res = run_cli("data", "check", phantom)
    assert res.returncode == 0, res.stderr
    for layout in ("BM-Seg", "classification", "volumes", "DICOM"):
        assert layout in res.stdout
    res = invoke("data", "stats", phantom)
    assert res.returncode == 0, res.stderr
    assert "bone median" in res.stdout and "lesion pixel fraction" in res.stdout
    res = invoke("data", "split", phantom / "bmseg", tmp_path / "run" / "splits.json", "--folds", "2",
                 "--test-patients", "0.25")
    assert res.returncode == 0, res.stderr
    sp = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert len(sp["test_patients"]) == 1 and len(sp["folds"]) == 2
    res = invoke("data", "split", phantom / "bmseg", tmp_path / "paper.json", "--protocol", "paper")
    assert res.returncode == 0 and "patients leak" in json.loads((tmp_path / "paper.json").read_text())["label"]


def test_stats_compares_phantom_with_real_ct(phantom: Path, real_ct: Path):
    res = invoke("data", "stats", phantom / "volumes", "--reference", real_ct / "abdomen_3mm_ct.nii.gz",
                 "--reference-bone-mask", real_ct / "abdomen_3mm_bone_mask.nii.gz")
    assert res.returncode == 0, res.stderr
    ref = [line for line in res.stdout.splitlines() if "(reference)" in line][0]
    assert "| 170.0 |" in ref
    mean = [line for line in res.stdout.splitlines() if "healthy-bone mean" in line][0]
    median = float(mean.split("|")[3])
    assert 120 <= median <= 300


def test_synth_from_real_ct(real_ct: Path, tmp_path):
    res = invoke("data", "synth", tmp_path / "semi", "--from-ct", real_ct / "abdomen_3mm_ct.nii.gz",
                 "--bone-mask", real_ct / "abdomen_3mm_bone_mask.nii.gz", "--lesions", "3")
    assert res.returncode == 0, res.stderr
    assert invoke("data", "check", tmp_path / "semi").returncode == 0


def test_missing_mask(tmp_path):
    make_bmseg(tmp_path, {"A": 2}, grouped=False)
    (tmp_path / "lesion mask" / "A_1.png").unlink()
    res = invoke("data", "check", tmp_path)
    assert_clean_failure(res, "A_1.png", "without lesion mask")
    assert res.returncode == 2


def test_mask_of_wrong_size(tmp_path):
    make_bmseg(tmp_path, {"A": 2}, grouped=False)
    write_image(tmp_path / "bone mask" / "A_0.png", np.ones((20, 20), bool))
    res = invoke("data", "check", tmp_path)
    assert_clean_failure(res, "A_0.png", "does not match")


def test_truncated_jpeg(tmp_path):
    make_bmseg(tmp_path, {"A": 2}, grouped=False, size=64, ext="jpg")
    f = tmp_path / "image" / "A_1.jpg"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    res = invoke("data", "check", tmp_path)
    assert_clean_failure(res, "A_1.jpg", "unreadable")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    res = invoke("data", "check", tmp_path / "empty")
    assert_clean_failure(res, "empty folder")
    res = invoke("data", "convert", tmp_path / "empty", tmp_path / "out")
    assert_clean_failure(res, "empty folder")
    assert not (tmp_path / "out").exists(), "no half-written output"


def test_non_ct_dicom(phantom: Path, tmp_path):
    src = sorted((phantom / "dicom" / "P000").iterdir())[:3]
    mr = tmp_path / "mr"
    mr.mkdir()
    for f in src:
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.save_as(mr / f.name)
    res = invoke("data", "convert", mr, tmp_path / "out")
    assert_clean_failure(res, "no CT series", "MR")
    assert not (tmp_path / "out").exists()


def test_truncated_dicom_slice_is_named(phantom: Path, tmp_path):
    import shutil

    series = tmp_path / "series"
    shutil.copytree(phantom / "dicom" / "P001", series)
    files = sorted(series.iterdir())
    victim = files[len(files) // 2]
    victim.write_bytes(victim.read_bytes()[:2000])
    res = invoke("data", "convert", series, tmp_path / "out")
    assert_clean_failure(res, victim.name)
