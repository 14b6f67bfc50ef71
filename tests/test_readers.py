"""Layout readers, windows, splits and torch datasets on small hand-made folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bonemet.data.bmseg import load_bmseg, scan_bmseg
from bonemet.data.classification import load_classification
from bonemet.data.datasets import ClassificationDataset, SegmentationDataset
from bonemet.data.images import write_image
from bonemet.data.splits import check_no_leakage, paper_splits, patient_splits
from bonemet.data.windows import PRESETS, apply_window


def make_bmseg(root: Path, patients: dict[str, int], grouped: bool, size: int = 32, ext: str = "png") -> None:
    rng = np.random.default_rng(0)
    rows = ["file,patient"]
    for pid, n in patients.items():
        base = root / pid if grouped else root
        for k in range(n):
            name = f"{pid}_{k}.{ext}"
            img = rng.integers(0, 255, (size, size), dtype=np.uint8)
            les = np.zeros((size, size), bool)
            les[4 + k: 10 + k, 5:12] = True
            write_image(base / "image" / name, img)
            write_image(base / "lesion mask" / name, les)
            write_image(base / "bone mask" / name, np.ones((size, size), bool))
            rows.append(f"{name},{pid}")
    if not grouped:
        (root / "patients.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("grouped", [False, True])
def test_bmseg_layouts(tmp_path, grouped):
    make_bmseg(tmp_path, {"A": 3, "B": 2}, grouped)
    idx = load_bmseg(tmp_path, require_patients=True)
    assert idx.layout == ("grouped" if grouped else "flat")
    assert idx.patients == ["A", "B"] and len(idx.slices) == 5
    ds = SegmentationDataset(idx.slices, size=16, channels=3)
    s = ds[0]
    assert s["image"].shape == (3, 16, 16) and s["lesion"].shape == (1, 16, 16)
    assert set(torch.unique(s["lesion"]).tolist()) <= {0.0, 1.0} and s["lesion"].sum() > 0
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0


def test_a_slice_may_lack_its_bone_mask_only_when_patients_csv_says_so(tmp_path):
    """A real negative nobody outlined the bones of: patients.csv's ``bone`` column says ``none``; the same missing
    file without it is a lost file, and the data check refuses it."""
    make_bmseg(tmp_path, {"A": 2, "B": 2}, grouped=False)
    (tmp_path / "bone mask" / "B_1.png").unlink()
    with pytest.raises(Exception, match="B_1.png: image without bone mask"):
        load_bmseg(tmp_path, require_patients=True)
    lines = (tmp_path / "patients.csv").read_text().splitlines()
    rows = [lines[0] + ",bone"] + [line + (",none" if line.startswith("B_1.png") else ",") for line in lines[1:]]
    (tmp_path / "patients.csv").write_text("\n".join(rows) + "\n")
    idx = load_bmseg(tmp_path, require_patients=True)
    assert {s.name: s.bone is None for s in idx.slices} == {"A_0": False, "A_1": False, "B_0": False, "B_1": True}
    assert idx.patients == ["A", "B"]
    ds = SegmentationDataset(idx.slices, size=16, channels=3)
    assert [bool(ds[i]["has_bone"]) for i in range(4)] == [True, True, True, False]


def test_flat_without_patients_says_so(tmp_path, caplog):
    make_bmseg(tmp_path, {"A": 2}, grouped=False)
    (tmp_path / "patients.csv").unlink()
    idx = scan_bmseg(tmp_path)
    assert not idx.has_patients
    assert any("patient-level splits are impossible" in p.message for p in idx.problems)
    with pytest.raises(Exception, match="patient-level splits are impossible"):
        load_bmseg(tmp_path, require_patients=True)


def test_jpeg_mask_threshold(tmp_path):
    mask = np.zeros((32, 32), bool)
    mask[8:20, 8:20] = True
    write_image(tmp_path / "image" / "a.jpg", (mask * 200).astype(np.uint8))
    write_image(tmp_path / "lesion mask" / "a.jpg", mask, quality=30)
    write_image(tmp_path / "bone mask" / "a.jpg", mask, quality=30)
    from bonemet.data.images import read_mask

    loose = read_mask(tmp_path / "lesion mask" / "a.jpg", 0)
    strict = read_mask(tmp_path / "lesion mask" / "a.jpg", 127)
    assert loose.sum() >= strict.sum()
    assert abs(int(strict.sum()) - int(mask.sum())) <= 12


def test_classification_layout_with_synonyms(tmp_path):
    img = np.full((20, 20), 90, np.uint8)
    for k in range(3):
        write_image(tmp_path / "healthy" / "n1" / f"{k}.png", img)
        write_image(tmp_path / "Metastasis" / "m1" / "Normal" / f"{k}.png", img)
    write_image(tmp_path / "Metastasis" / "m1" / "metastatic" / "x.png", img)
    idx = load_classification(tmp_path)
    assert idx.patients == {"n1": 0, "m1": 1}
    assert sum(s.label for s in idx.slices) == 1 and len(idx.slices) == 7
    x, y = ClassificationDataset(idx.slices, size=24)[0]
    assert x.shape == (3, 24, 24) and y in (0, 1)


def test_windows_are_pure_and_bounded():
    hu = np.array([-1000, -160, 40, 240, 400, 1300, 3000], float)
    soft = apply_window(hu, "soft")
    assert soft[0] == 0 and soft[1] == 0 and soft[3] == 1 and soft[2] == pytest.approx(0.5)
    bone = apply_window(hu, "bone")
    assert bone[4] == pytest.approx(0.5) and bone[-1] == 1 and np.all(np.diff(bone) >= 0)
    multi = apply_window(hu.reshape(1, -1), "multi")
    assert multi.shape == (1, 7, 3)
    np.testing.assert_allclose(multi[0, :, 0], bone)
    assert set(PRESETS) == {"bone", "soft", "wide"}
    with pytest.raises(ValueError):
        apply_window(hu, "lung")


def test_patient_splits_have_no_leakage():
    patients = [f"p{i // 10}" for i in range(120)]  # 12 patients, 10 slices each
    items = [f"s{i:03d}" for i in range(120)]
    sp = patient_splits(items, patients, folds=3, test_fraction=0.25, seed=1)
    check_no_leakage(sp)
    assert len(sp["test_patients"]) == 3
    test = set(sp["test_patients"])
    for fold in sp["folds"]:
        assert not test & set(fold["train_patients"]) and not test & set(fold["val_patients"])
        assert not set(fold["train_patients"]) & set(fold["val_patients"])
    val_all = sorted(p for f in sp["folds"] for p in f["val_patients"])
    assert val_all == sorted(set(patients) - test), "each non-test patient validates exactly once"
    assert json.loads(json.dumps(sp)) == sp
    # stratified by patient status when labels are given
    labels = [int(p in {"p0", "p1", "p2", "p3", "p4", "p5"}) for p in patients]
    sp2 = patient_splits(items, patients, folds=3, seed=1, labels=labels)
    check_no_leakage(sp2)


def test_patients_to_train_on_always_are_in_every_fold_and_nowhere_else():
    """``always`` (the default model's real data): in every fold's training part, never validated or tested; the
    other patients split as before, each validated once; without it the split is the one it always was."""
    from bonemet.data.splits import add_inner_validation
    from bonemet.errors import BonemetError

    patients = [f"p{i // 10}" for i in range(120)]
    items = [f"s{i:03d}" for i in range(120)]
    always = ["p10", "p11"]
    sp = patient_splits(items, patients, folds=3, test_fraction=0.25, seed=1, always=always)
    check_no_leakage(sp)
    assert sp["always_train_patients"] == always and len(sp["test_patients"]) == 2  # a quarter of the other 10
    assert not set(always) & set(sp["test_patients"])
    for fold in sp["folds"]:
        assert set(always) <= set(fold["train_patients"]) and not set(always) & set(fold["val_patients"])
        assert {f"s{i:03d}" for i in range(100, 120)} <= set(fold["train"])
    rest = set(patients) - set(always) - set(sp["test_patients"])
    assert sorted(p for f in sp["folds"] for p in f["val_patients"]) == sorted(rest)
    add_inner_validation(sp, 0.5, 0)
    assert all(not set(always) & set(f["inner_val_patients"]) and set(always) <= set(f["fit_patients"])
               for f in sp["folds"])
    plain = patient_splits(items, patients, folds=3, test_fraction=0.25, seed=1)
    assert {k: v for k, v in plain.items() if k != "always_train_patients"} == \
        {k: v for k, v in patient_splits(items, patients, folds=3, test_fraction=0.25, seed=1, always=[]).items()
         if k != "always_train_patients"}
    with pytest.raises(BonemetError, match="not in the data: p99"):
        patient_splits(items, patients, folds=3, always=["p99"])


def test_leakage_check_catches_a_leak():
    sp = {"test_patients": ["a"], "folds": [{"train_patients": ["a", "b"], "val_patients": ["c"]}]}
    with pytest.raises(AssertionError):
        check_no_leakage(sp)


def test_paper_protocol_reproduces_sklearn_kfold():
    from sklearn.model_selection import KFold

    items = [f"img{i}.jpg" for i in (5, 3, 9, 1, 7, 2, 8, 4, 6, 0)]
    sp = paper_splits(items)
    names = np.array(sorted(items))
    expected = [names[va].tolist() for _, va in KFold(5, shuffle=True, random_state=42).split(names)]
    assert [f["val"] for f in sp["folds"]] == expected
    assert "leak" in sp["label"] and sp["protocol"] == "paper"


def test_dicom_folder_with_two_series_reads_the_larger_ct(phantom, tmp_path, caplog):
    import logging
    import shutil

    import pydicom

    from bonemet.data.dicom import read_dicom_series

    folder = tmp_path / "mixed"
    shutil.copytree(phantom / "dicom" / "P001", folder)
    extra = sorted((phantom / "dicom" / "P000").iterdir())[:5]
    for f in extra:  # a second, shorter CT series in the same folder
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.3.4.5"
        ds.SeriesDescription = "scout"
        ds.save_as(folder / f"z_{f.name}")
    (folder / "notes.txt").write_text("not dicom")
    with caplog.at_level(logging.WARNING, logger="bonemet"):
        vol = read_dicom_series(folder)
    assert vol.n_slices == 40 and vol.meta["series_uid"] != "1.2.3.4.5"
    assert any("2 series found" in r.getMessage() for r in caplog.records)
    assert vol.meta["ignored_non_dicom"][0].endswith("notes.txt")


def test_empty_mask_only_where_allowed_and_on_the_image_grid(tmp_path):
    """A healthy patient's all-zero lesion truth is accepted for --truth, but never off the image grid."""
    import nibabel as nib

    from bonemet.data.volume import read_mask_like, read_nifti
    from bonemet.errors import DataError

    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), affine), tmp_path / "ct.nii.gz")
    ct = read_nifti(tmp_path / "ct.nii.gz", canonical=False)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), affine), tmp_path / "empty.nii.gz")
    with pytest.raises(DataError, match="empty"):
        read_mask_like(tmp_path / "empty.nii.gz", ct)
    got = read_mask_like(tmp_path / "empty.nii.gz", ct, allow_empty=True)
    assert got.shape == ct.shape and not got.any()
    shifted = affine.copy()
    shifted[:3, 3] = 500.0  # the same grid moved far away from the image
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), shifted), tmp_path / "far.nii.gz")
    with pytest.raises(DataError, match="does not line up"):
        read_mask_like(tmp_path / "far.nii.gz", ct, allow_empty=True)


def test_decoded_images_are_kept_until_the_file_changes_or_the_budget_is_spent(tmp_path, monkeypatch):
    import os

    from bonemet.data import images
    from bonemet.errors import DataError

    cache = images.DecodedCache(max_bytes=2 * 64 * 64)  # two 64 px grey images
    monkeypatch.setattr(images, "DECODED", cache)
    decoded = []
    real_decode = images._decode
    monkeypatch.setattr(images, "_decode", lambda *a: decoded.append(a[0].name) or real_decode(*a))
    paths = [write_image(tmp_path / f"{i}.png", np.full((64, 64), 10 * i, np.uint8)) for i in range(3)]
    first = images.read_image(paths[0])
    again = images.read_image(paths[0])
    assert again is first and decoded == ["0.png"] and not first.flags.writeable
    with pytest.raises(ValueError):
        first[0, 0] = 1  # shared between callers: nobody may change it
    # rewritten in place (same name, another size or time): read again, never the old pixels
    paths[0].write_bytes(write_image(tmp_path / "other.png", np.full((64, 64), 99, np.uint8)).read_bytes())
    os.utime(paths[0], ns=(1, 1))
    assert images.read_image(paths[0])[0, 0] == 99 and decoded == ["0.png", "0.png"]
    # a mask read of the same file is another entry (a 16-bit mask's values differ from its image read)
    images.read_image(paths[0], mask=True)
    assert len(decoded) == 3 and cache.bytes == 2 * 64 * 64
    images.read_image(paths[1])  # over budget: the least recently used goes
    assert cache.bytes == 2 * 64 * 64 and len(decoded) == 4
    images.read_image(paths[0], mask=True)
    images.read_image(paths[0])
    assert decoded[-1] == "0.png" and len(decoded) == 5  # the mask entry stayed, the plain one had gone
    # no budget: nothing kept
    monkeypatch.setattr(images, "DECODED", images.DecodedCache(0))
    images.read_image(paths[2])
    images.read_image(paths[2])
    assert decoded[-2:] == ["2.png", "2.png"] and images.DECODED.bytes == 0
    monkeypatch.setenv(images.CACHE_ENV, "lots")
    with pytest.raises(DataError, match="BONEMET_IMAGE_CACHE_MB='lots' is not a number of megabytes"):
        images._cache_budget()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_decoded_cache_works_in_a_child_forked_while_its_lock_was_held():
    """A DataLoader worker is forked from a process whose other thread may be inside the cache: the child gets a
    lock of its own instead of one that nobody will release."""
    import os

    from bonemet.data.images import DecodedCache

    cache = DecodedCache(10**6)
    cache.put(("a",), np.zeros(4, np.uint8))
    import signal
    import time

    with cache._lock:
        pid = os.fork()
        if pid == 0:  # the child: a read must not wait on the parent's lock
            os._exit(0 if cache.get(("a",)) is not None else 1)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child waited on the parent's lock")
    assert os.waitstatus_to_exitcode(done[1]) == 0
