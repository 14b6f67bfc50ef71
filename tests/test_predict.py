"""The CAD pipeline: predict on DICOM, NIfTI and image folders; DICOM-SEG; lesion list; report; bad input."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from conftest import invoke, run_cli
from bonemet.reporting.viewer import niivue_js
from test_cli import assert_clean_failure


def _metastatic_patient(phantom: Path) -> str:
    with open(phantom / "patients.csv", newline="") as fh:
        return next(r["patient"] for r in csv.DictReader(fh) if r["status"] == "metastatic")


def test_predict_dicom_writes_every_output(phantom, seg_run, cls_run, tmp_path):
    pid = _metastatic_patient(phantom)
    out = tmp_path / "pred"
    truth = phantom / "volumes" / pid / "lesion_mask.nii.gz"
    r = run_cli("predict", phantom / "dicom" / pid, "--seg", seg_run, "--cls", cls_run, "--out", out,
                "--truth", truth, "--threshold", "0.3", "--min-volume", "0")
    assert r.returncode == 0, r.stderr
    for f in ("lesion_mask.nii.gz", "bone_mask.nii.gz", "lesions_seg.dcm", "lesions.csv", "lesions.json",
              "slices.csv", "summary.json", "report.html"):
        assert (out / f).exists(), f
    s = json.loads((out / "summary.json").read_text())
    # lesion-level recall, recomputed from the written mask and the truth on the input's grid
    from scipy import ndimage

    from bonemet.data.dicom import read_dicom_series as read_series
    from bonemet.data.volume import read_mask_like

    truth_on_grid = read_mask_like(truth, read_series(phantom / "dicom" / pid, canonical=False), allow_empty=True)
    written = np.asarray(nib.load(out / "lesion_mask.nii.gz").dataobj) > 0
    components, n_true = ndimage.label(truth_on_grid, np.ones((3, 3, 3), bool))
    found = len(set(np.unique(components[written & (components > 0)]).tolist()))
    assert n_true > 0 and s["truth"]["true_lesions"] == n_true and s["truth"]["found"] == found
    assert s["truth"]["lesion_recall"] == pytest.approx(found / n_true)
    # the verdict rule, recomputed from lesions.json and slices.csv
    with open(out / "slices.csv", newline="") as fh:
        cls_probs = sorted(float(r["classifier probability"]) for r in csv.DictReader(fh))
    kept = json.loads((out / "lesions.json").read_text())
    assert s["evidence"]["classification"] == pytest.approx(np.mean(cls_probs[-3:]), abs=1e-4)
    if kept:
        assert s["evidence"]["segmentation"] == pytest.approx(max(les["max_probability"] for les in kept), abs=1e-4)
    else:
        assert s["evidence"]["segmentation"] < 0.3
    expected = np.mean([s["evidence"]["segmentation"], s["evidence"]["classification"]])
    assert s["probability"] == pytest.approx(expected, abs=1e-4)
    assert s["verdict"] == ("metastatic" if s["probability"] >= 0.3 else "no metastasis found")
    assert s["models"]["segmentation"]["members"] == 2 and s["models"]["classification"]["members"] == 1
    assert set(s["evidence"]) == {"segmentation", "classification"}
    # masks on the input's grid: the DICOM series read without reorientation has the same shape and affine
    from bonemet.data.dicom import read_dicom_series

    native = read_dicom_series(phantom / "dicom" / pid, canonical=False)
    img = nib.load(out / "lesion_mask.nii.gz")
    assert img.shape == native.shape and np.allclose(img.affine, native.affine, atol=1e-4)
    with open(out / "slices.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == native.n_slices and "classifier probability" in rows[0]
    lesions = json.loads((out / "lesions.json").read_text())
    assert len(lesions) == s["lesions"]
    for les in lesions:
        assert les["type"] in ("lytic", "blastic", "mixed", "n/a") and les["volume_ml"] > 0
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert not re.search(r"<script[^>]*\bsrc=|https?://", html.replace(niivue_js(), ""))  # nothing fetched
    patient = native.meta["patient"]
    for phi in (patient["PatientName"], patient["PatientID"], patient["PatientBirthDate"]):
        if phi:
            assert phi not in html, phi
    # nothing of the temporary build is left beside the output
    assert [p.name for p in tmp_path.iterdir()] == ["pred"]


def test_dicom_seg_reads_back_and_references_the_source(phantom, seg_run, tmp_path):
    import highdicom as hd

    pid = _metastatic_patient(phantom)
    out = tmp_path / "pred"
    r = invoke("predict", phantom / "dicom" / pid, "--seg", seg_run, "--out", out, "--threshold", "0.01")
    assert r.returncode == 0, r.stderr
    seg = hd.seg.segread(out / "lesions_seg.dcm")
    ds = pydicom.dcmread(out / "lesions_seg.dcm")
    assert ds.Modality == "SEG" and len(seg.SegmentSequence) == 2
    source_uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in (phantom / "dicom" / pid).iterdir()}
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced and referenced <= source_uids
    # frame content equals the NIfTI lesion mask on the same source slice
    lesion = nib.load(out / "lesion_mask.nii.gz").get_fdata() > 0
    from bonemet.data.dicom import read_dicom_series

    native = read_dicom_series(phantom / "dicom" / pid, canonical=False)
    uids = native.meta["slice_uids"]
    k = int(np.argmax(lesion.sum(axis=(0, 1))))
    assert lesion[:, :, k].any()
    frame = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uids[k]], segment_numbers=[1])[0, :, :, 0]
    assert np.array_equal(frame > 0, lesion[:, :, k].T)


def test_an_empty_specific_character_set_still_gets_a_seg(phantom, seg_run, tmp_path):
    """An empty SpecificCharacterSet (seen in a public series) means the default repertoire; highdicom refuses the
    empty value, so it is dropped from the headers the SEG copies."""
    import highdicom as hd

    src = tmp_path / "series"
    src.mkdir()
    for f in sorted((phantom / "dicom" / _metastatic_patient(phantom)).iterdir()):
        ds = pydicom.dcmread(f)
        ds.SpecificCharacterSet = ""
        ds.save_as(src / f.name)
    r = invoke("predict", src, "--seg", seg_run, "--out", tmp_path / "pred", "--no-viewer")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert not any("DICOM-SEG" in w for w in summary["warnings"]), summary["warnings"]
    assert hd.seg.segread(tmp_path / "pred" / "lesions_seg.dcm").Modality == "SEG"


def test_dicom_seg_survives_negated_direction_cosines(phantom, tmp_path):
    """A series stored right-to-left and posterior-to-anterior: SEG frames must follow the source pixels."""
    from bonemet.data.dicom import read_dicom_series
    from bonemet.data.export import write_dicom_series
    from bonemet.data.volume import read_nifti
    from bonemet.inference.dicomseg import frames_for_sources

    pid = _metastatic_patient(phantom)
    ct = read_nifti(phantom / "volumes" / pid / "ct.nii.gz")
    flipped = ct.reoriented(("R", "A", "S"))
    files = write_dicom_series(flipped, tmp_path / "series", pid)
    assert np.allclose(pydicom.dcmread(files[0]).ImageOrientationPatient[:2], [-1, 0])
    vol = read_dicom_series(tmp_path / "series")  # canonical LPS again
    truth = read_nifti(phantom / "volumes" / pid / "lesion_mask.nii.gz").array > 0
    sources = [pydicom.dcmread(f) for f in vol.meta["slice_files"]]
    frames = frames_for_sources(truth, vol, sources)
    for ds, frame in zip(sources, frames):
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        if frame.any():  # lesion pixels of the frame are exactly where the file's own pixels hold the lesion
            k = vol.meta["slice_uids"].index(ds.SOPInstanceUID)
            assert np.array_equal(frame, truth[:, :, k].T[::-1, ::-1])
            assert np.allclose(hu[frame].mean(), vol.axial(k)[truth[:, :, k].T].mean(), atol=1)


def test_seg_frames_match_a_coordinate_for_each_pixel_on_any_geometry():
    """The SEG's frame sampler keeps indices that move with one pixel axis as vectors: on axis-aligned, flipped,
    permuted and oblique grids, partly outside the volume, it gives what a voxel coordinate for each pixel gives."""
    from types import SimpleNamespace

    from bonemet.data.dicom import LPS_TO_RAS
    from bonemet.data.volume import Volume
    from bonemet.inference.dicomseg import frame_for_source

    rng = np.random.default_rng(0)
    affine = np.array([[-0.8, 0, 0, 30.0], [0, -0.8, 0, 20.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])
    vol = Volume(rng.random((40, 36, 12)).astype(np.float32), affine)
    mask = rng.random(vol.shape) > 0.5

    def reference(ds) -> np.ndarray:
        to_index = np.linalg.inv(affine)
        r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
        iop = np.asarray(ds.ImageOrientationPatient, float)
        lps = (np.asarray(ds.ImagePositionPatient, float)[:, None] + np.outer(iop[:3], c.ravel() * ds.PixelSpacing[1])
               + np.outer(iop[3:], r.ravel() * ds.PixelSpacing[0]))
        ijk = np.rint(to_index[:3, :3] @ (LPS_TO_RAS[:3, :3] @ lps) + to_index[:3, 3:4]).astype(int)
        inside = np.all((ijk >= 0) & (ijk < np.asarray(vol.shape)[:, None]), axis=0)
        vals = np.zeros(ds.Rows * ds.Columns, bool)
        vals[inside] = mask[ijk[0, inside], ijk[1, inside], ijk[2, inside]]
        return vals.reshape(ds.Rows, ds.Columns)

    a, t = np.radians(25), np.radians(20)  # a grid turned 25 degrees in the axial plane and tilted 20
    oblique = [np.cos(a), np.sin(a), 0, -np.sin(a) * np.cos(t), np.cos(a) * np.cos(t), np.sin(t)]
    # positions off the half-voxel ties, where rounding may go either way whatever the order of the sums
    grids = {"axial": ([1, 0, 0, 0, 1, 0], [-34.0, -22.2, -20.0]), "flipped": ([-1, 0, 0, 0, -1, 0], [0.3, 0.0, -30.0]),
             "coronal": ([1, 0, 0, 0, 0, -1], [-30.0, -10.2, -10.0]), "oblique": (oblique, [-20.0, -25.0, -30.0])}
    for name, (iop, ipp) in grids.items():
        ds = SimpleNamespace(Rows=48, Columns=44, ImageOrientationPatient=iop, ImagePositionPatient=ipp,
                             PixelSpacing=[0.8, 0.8])
        want = reference(ds)
        assert want.any() and not want.all(), name  # a grid that sees the mask, partly outside the volume
        assert np.array_equal(frame_for_source(mask, vol, ds), want), name


def test_predict_nifti_keeps_the_input_affine_and_png_folder_says_na(phantom, seg_run, tmp_path):
    pid = _metastatic_patient(phantom)
    src = phantom / "volumes" / pid / "ct.nii.gz"
    r = invoke("predict", src, "--seg", seg_run, "--out", tmp_path / "nii", "--threshold", "0.01")
    assert r.returncode == 0, r.stderr
    a, b = nib.load(src), nib.load(tmp_path / "nii" / "lesion_mask.nii.gz")
    assert a.shape == b.shape and np.allclose(a.affine, b.affine)
    assert not (tmp_path / "nii" / "lesions_seg.dcm").exists()

    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for f in sorted((phantom / "bmseg" / "image").glob(f"{pid}_*"))[:12]:
        shutil.copy(f, pngs / f.name)
    r = invoke("predict", pngs, "--seg", seg_run, "--out", tmp_path / "png", "--threshold", "0.01",
               "--min-volume", "0")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "png" / "summary.json").read_text())
    assert s["input"]["kind"] == "images" and s["total_lesion_volume_ml"] is None
    assert "not available" in s["input"]["measurements"]
    assert len(list((tmp_path / "png" / "lesion_mask").glob("*.png"))) == 12
    for les in json.loads((tmp_path / "png" / "lesions.json").read_text()):
        assert les["volume_ml"] == "n/a" and les["mean_hu"] == "n/a" and les["area_px_max"] > 0


def test_predict_bad_inputs_one_line(phantom, seg_run, cls_run, tmp_path):
    (tmp_path / "empty").mkdir()
    r = invoke("predict", tmp_path / "empty", "--seg", seg_run, "--out", tmp_path / "o1")
    assert_clean_failure(r, "empty folder")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    (junk / "data.bin").write_bytes(b"\x00\x01" * 100)
    r = invoke("predict", junk, "--seg", seg_run, "--out", tmp_path / "o2")
    assert_clean_failure(r, "no DICOM file")
    mr = tmp_path / "mr"
    mr.mkdir()
    for f in sorted((phantom / "dicom" / "P000").iterdir())[:3]:
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.save_as(mr / f.name)
    r = invoke("predict", mr, "--seg", seg_run, "--out", tmp_path / "o3")
    assert_clean_failure(r, "no CT series")
    # a classification run is not a segmentation run
    r = invoke("predict", phantom / "dicom" / "P000", "--seg", cls_run, "--out", tmp_path / "o4")
    assert_clean_failure(r, "not a segmentation run")
    # models trained on images of unknown window cannot be fed HU
    other = tmp_path / "other_run"
    shutil.copytree(seg_run, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["preprocessing"]["window"] = "unknown (images used as given)"
    (other / "config.json").write_text(json.dumps(cfg))
    r = invoke("predict", phantom / "dicom" / "P000", "--seg", other, "--out", tmp_path / "o5")
    assert_clean_failure(r, "window", "config.json")
    r = invoke("predict", phantom / "dicom" / "P000", "--seg", seg_run, "--out", tmp_path / "o6",
               "--fast", "fold_bn,onnx,compile")
    assert_clean_failure(r, "does not combine")
    for k in range(1, 7):
        assert not (tmp_path / f"o{k}").exists(), "no half-written output"


def test_truncated_dicom_slice_is_never_dropped_silently(phantom, seg_run, tmp_path):
    series = tmp_path / "series"
    shutil.copytree(phantom / "dicom" / "P001", series)
    from bonemet.data.dicom import read_dicom_series

    ordered = [Path(f) for f in read_dicom_series(series, canonical=False).meta["slice_files"]]
    last = ordered[-1]
    last.write_bytes(last.read_bytes()[:2000])  # the end slice: no gap, so the scan is still usable
    r = invoke("predict", series, "--seg", seg_run, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert last.name in r.stderr
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert any(last.name in w for w in s["warnings"])
    middle = ordered[len(ordered) // 2]
    middle.write_bytes(middle.read_bytes()[:2000])  # a hole in the series: refused, naming the file
    r = invoke("predict", series, "--seg", seg_run, "--out", tmp_path / "out2")
    assert_clean_failure(r, middle.name)


def test_predict_on_real_ct_reports_bone_dice(real_ct, seg_run, tmp_path):
    out = tmp_path / "real"
    r = invoke("predict", real_ct / "chest_abdomen_dicom", "--seg", seg_run, "--out", out,
               "--bone-truth", real_ct / "chest_abdomen_dicom_bone_mask.nii.gz")
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    from bonemet.data.dicom import read_dicom_series
    from bonemet.data.volume import read_mask_like

    ref = read_mask_like(real_ct / "chest_abdomen_dicom_bone_mask.nii.gz",
                         read_dicom_series(real_ct / "chest_abdomen_dicom", canonical=False))
    written = np.asarray(nib.load(out / "bone_mask.nii.gz").dataobj) > 0  # the same grid: the input's own
    dice = 2 * (ref & written).sum() / (ref.sum() + written.sum())
    assert s["bone_truth"]["dice"] == pytest.approx(dice, abs=1e-4)
    assert s["bone_truth"]["truth_voxels"] == int(ref.sum()) > 0
    assert s["input"]["kind"] == "dicom" and s["input"]["slices"] == 20
    assert "bone Dice" in r.stdout
    # this anonymised series has empty Study / Series Instance UIDs: no SEG, and the summary says why
    assert not (out / "lesions_seg.dcm").exists()
    assert any("SeriesInstanceUID" in w for w in s["warnings"])


def test_report_without_viewer_opens_in_headless_chromium(phantom, seg_run, tmp_path):
    """The still-image report (--no-viewer); the viewer's own checks are in test_viewer.py."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium) : the report was not opened in a browser")
    import subprocess

    out = tmp_path / "pred"
    r = invoke("predict", phantom / "dicom" / _metastatic_patient(phantom), "--seg", seg_run, "--out", out,
               "--threshold", "0.2", "--min-volume", "0", "--no-viewer")
    assert r.returncode == 0, r.stderr
    url = (out / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "bone metastasis CAD report" in dom.stdout and "<img" in dom.stdout
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,1600", url], capture_output=True,
                   timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 5  # rendered content, not a blank page


def test_viewer_left_out_from_a_sample_of_slices_only_when_clearly_over_the_limit(phantom, monkeypatch):
    """A CT clearly above --viewer-max-mb is judged from a tenth of its slices and never compressed whole; near the
    limit the whole CT is compressed and its true size decides."""
    from bonemet.inference.scan import read_scan
    from bonemet.reporting import viewer

    scan = read_scan(phantom / "volumes" / _metastatic_patient(phantom) / "ct.nii.gz")
    full = scan.volume.array.size
    exact = viewer.payload_mb(viewer.viewer_layers(scan.volume, None, None, None)[0])
    assert viewer.estimated_ct_mb(scan.volume) == pytest.approx(exact, rel=0.03)
    sizes: list[int] = []
    compress = viewer.nifti_base64
    monkeypatch.setattr(viewer, "nifti_base64", lambda a, affine: sizes.append(a.size) or compress(a, affine))
    body, css, _ = viewer.viewer_section(scan, None, None, None, [], max_mb=exact / 2)
    assert css == "" and f"take about {exact:.0f} MB" in body and "more than the" in body
    assert sizes and max(sizes) <= full // 4  # every 4th of the 40 slices
    sizes.clear()
    body, css, _ = viewer.viewer_section(scan, None, None, None, [], max_mb=exact * 0.97)
    assert css == "" and f"take {exact:.0f} MB" in body and max(sizes) == full
    body, css, _ = viewer.viewer_section(scan, None, None, None, [], max_mb=exact * 1.03)
    assert css and "viewer-data" in body


@pytest.mark.slow
def test_distilled_student_is_a_run_predict_can_use(phantom, seg_run, tmp_path):
    student = tmp_path / "student"
    r = invoke("seg", "distill", seg_run, "--out", student, "--student", "unet", "--width", "4", "--epochs", "1")
    assert r.returncode == 0, r.stderr
    table = (student / "distill.md").read_text()
    assert "ensemble of 2 hybrid-attunet++" in table and "student unet (width 4)" in table and "cost ratio" in table
    assert "teacher member 0 alone" in table and "teacher member 1 alone" in table and "member 1 " in table
    alone = json.loads((student / "distill_ratio.json").read_text())["members alone"]
    assert len(alone) == 2 and all(set(a) == {"student F1 / ensemble F1", "95 % CI"} for a in alone)
    with open(student / "distill.csv", newline="") as fh:
        gmac = {r["model"]: float(r["GMAC / 64px slice"]) for r in csv.DictReader(fh)}
    assert gmac["teacher member 0 alone"] == pytest.approx(gmac["ensemble of 2 hybrid-attunet++"] / 2, abs=0.01)
    split = json.loads((student / "splits.json").read_text())
    assert not set(split["test_patients"]) & set(split["folds"][0]["train_patients"])
    from bonemet.inference.fast import default_paths  # the CLI has the teacher label through predict's fast path

    record = json.loads((student / "distilled_from.json").read_text())
    assert record["teacher_path"] == "+".join(default_paths())
    r = invoke("predict", phantom / "dicom" / _metastatic_patient(phantom), "--seg", student, "--out", tmp_path / "p",
               "--no-dicom-seg")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert s["models"]["segmentation"]["members"] == 1 and not (tmp_path / "p" / "bone_mask.nii.gz").exists()

    # score the finished student again, on a fresh phantom's patients (unseen by teacher and student)
    from bonemet.phantom.synth import synthesize

    synthesize(tmp_path / "fresh", patients=2, seed=9, size=64, slices=16, formats=("bmseg",))
    r = invoke("seg", "distill", seg_run, "--out", student, "--score-only", "--score-data", tmp_path / "fresh" / "bmseg")
    assert r.returncode == 0, r.stderr
    fresh = (student / "distill_fresh.md").read_text()
    assert "All 2 patients" in fresh and "student unet (width 4)" in fresh and "Student F1 / ensemble F1" in fresh
    ratio = json.loads((student / "distill_fresh_ratio.json").read_text())
    assert ratio["patients"] == 2 and 0 < ratio["cost ratio"] < 1
    if ratio["student F1 / ensemble F1"] is None:  # a barely trained teacher can score F1 0: no ratio then
        assert "n/a (ensemble F1 is 0)" in fresh
    else:
        assert f"Student F1 / ensemble F1 = {ratio['student F1 / ensemble F1']:.3f}" in fresh
    r = invoke("seg", "distill", seg_run, "--out", student, "--score-only", "--score-data", phantom / "bmseg")
    assert r.returncode == 2 and "the teacher trained on" in r.stderr and "Traceback" not in r.stderr
    r = invoke("seg", "distill", seg_run, "--out", tmp_path / "none", "--score-only")
    assert r.returncode == 2 and "no distilled student" in r.stderr

    # more slices for the student: the fresh phantom's scans, labelled by the teacher alone
    from bonemet.training.distill import scan_unlabelled

    extra = tmp_path / "fresh" / "bmseg"
    assert all(s.lesion is None and s.bone is None for s in scan_unlabelled(extra))  # its masks are never read
    student2 = tmp_path / "student2"
    r = invoke("seg", "distill", seg_run, "--out", student2, "--student", "unet", "--width", "4", "--epochs", "1",
               "--hard-weight", "0.5", "--extra-data", extra, "--bf16", "--calibrate", "rate", "--pos-weight", "2")
    assert r.returncode == 0, r.stderr
    cfg2 = json.loads((student2 / "config.json").read_text())
    assert cfg2["bf16"] is True and cfg2["pos_weight"] == 2.0  # trained in bf16, scored in fp32
    record = json.loads((student2 / "distilled_from.json").read_text())
    assert record["hard_weight"] == 0.5  # half the lesion loss on its labelled slices against their true masks
    # one of the 2 fresh patients trains the student, the other sets its lesion threshold (--calibration 0.2)
    assert record["extra_slices"] == 16 and record["labelled_slices"] > 0 and "(16 unlabelled)" in r.stderr
    assert len(record["calibration"]["patients"]) == 1 and record["calibration"]["slices"] == 16
    assert 0.05 <= record["calibration"]["threshold"] <= 0.95 and "lesion threshold" in r.stderr
    cal = record["calibration"]
    assert cal["method"] == "rate" and cal["threshold"] == cal["rate threshold"]
    other = json.loads((student2 / "distill_ratio.json").read_text())["other calibration"]
    if cal["agreement threshold"] == cal["threshold"]:
        assert other is None
    else:  # the student is also scored as if the agreement method had set its threshold
        assert other["method"] == "agreement" and other["threshold"] == cal["agreement threshold"]
        assert f"At the agreement threshold {other['threshold']:.2f} instead" in (student2 / "distill.md").read_text()
    trained = set(json.loads((student2 / "splits.json").read_text())["folds"][0]["train_patients"])
    assert "Student lesion threshold" in (student2 / "distill.md").read_text()
    r = invoke("seg", "distill", seg_run, "--out", student2, "--score-only", "--score-data", extra)
    assert r.returncode == 2 and "the student trained on this data" in r.stderr
    calib_patient = record["calibration"]["patients"][0]
    assert calib_patient.startswith("extra:") and calib_patient not in trained
    assert not set(split["test_patients"]) & trained  # extra patients are named apart from the teacher's
    for bad, why in ((phantom / "bmseg", "teacher's own data root"), (extra, "cannot be scored on the data")):
        r = invoke("seg", "distill", seg_run, "--out", tmp_path / "s3", "--extra-data", bad, "--score-data", extra)
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "s3" / "config.json").exists()
    r = invoke("seg", "distill", seg_run, "--out", tmp_path / "s3", "--extra-data", extra, "--calibrate", "median")
    assert r.returncode == 2 and "unknown calibration method 'median'" in r.stderr and "Traceback" not in r.stderr

    # a student that starts from a teacher member: its lesion decoder (attunet++ of the hybrid's width)
    for args, why in ((("--init-member", "2"), "members 0-1, not 2"), (("--init-member", "best"), "not 'best'"),
                      (("--init-member", "auto"), "give --extra-data and --calibration > 0"),
                      (("--epochs", "0"), "give --init-member"),
                      (("--student", "unet++", "--init-member", "0"), "cannot start from a hybrid-attunet++ member")):
        r = invoke("seg", "distill", seg_run, "--out", tmp_path / "s4", "--epochs", "1", *args)
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "s4").exists()
    r = invoke("seg", "distill", seg_run, "--out", tmp_path / "s4", "--student", "attunet++", "--init-member", "auto",
               "--epochs", "1", "--extra-data", extra)
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "s4" / "distilled_from.json").read_text())
    closest = record["closest_member"]  # picked on the calibration patient, by agreement with the ensemble
    assert record["init_member"] == closest["member"] == int(np.argmax(closest["agreement F1"]))
    assert len(closest["agreement F1"]) == 2 and f"student starts from member {closest['member']}" in r.stderr
    assert "student attunet++ (width 4)" in (tmp_path / "s4" / "distill.md").read_text()
    assert "(the member whose masks agree best" in (tmp_path / "s4" / "distill.md").read_text()
    # --epochs 0: the member's lesion decoder as it is (no calibration without extra data): the same lesion logits;
    # heldout: the member with the best lesion F1 on its own fold's held-out patients
    r = invoke("seg", "distill", seg_run, "--out", tmp_path / "s5", "--student", "attunet++", "--init-member",
               "heldout", "--epochs", "0")
    assert r.returncode == 0, r.stderr
    picked = json.loads((tmp_path / "s5" / "distilled_from.json").read_text())
    k = picked["init_member"]
    assert k == int(np.argmax(picked["closest_member"]["held-out F1"]))
    assert (f"started from teacher member {k}'s weights (the member with the best lesion F1 on its own fold's "
            "held-out patients), and was trained no further") in r.stdout
    import torch

    from bonemet.runs.seg import load_member, load_run

    member = load_member(load_run(seg_run)[0], seg_run, k).eval()
    pruned = load_member(load_run(tmp_path / "s5")[0], tmp_path / "s5", 0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(pruned(x), member(x)[0])


@pytest.mark.slow
def test_int8_graphs_are_stored_once_and_checked_against_the_checkpoint(phantom, seg_run, tmp_path):
    from bonemet.inference.quantize import stored_int8
    from bonemet.inference.runners import SegRunner
    from bonemet.inference.scan import read_scan
    from bonemet.runs.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    r = invoke("seg", "quantize", run, "--slices", "4")
    assert r.returncode == 0, r.stderr
    test_p = set(json.loads((run / "splits.json").read_text())["test_patients"])
    for k in (0, 1):
        meta = json.loads((run / f"fold{k}" / "int8.json").read_text())
        assert len(meta["calibration slices"]) == 4 and meta["checkpoint"] == "last.pt"
        assert not any(name.split("_")[0] in test_p for name in meta["calibration slices"])  # training slices only
        assert stored_int8(run, k) == (run / f"fold{k}" / "int8.onnx").read_bytes()
    scan = read_scan(phantom / "volumes" / _metastatic_patient(phantom) / "ct.nii.gz")
    eager = SegRunner(run, paths=()).predict(scan)
    int8 = SegRunner(run, paths=("fold_bn", "int8"))
    assert int8.calibrated_on_scan == [] and "int8 calibration" not in int8.describe()
    for a, b in zip(eager, int8.predict(scan)):
        assert float((np.abs(a - b) <= 0.02).mean()) >= 0.99 and float(((a > 0.5) == (b > 0.5)).mean()) >= 0.995
    # a retrained member's stored graph is stale: that member is calibrated on the scan instead
    ck = load_checkpoint(run / "fold1" / "last.pt")
    ck["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ck["model"].items()}
    save_checkpoint(run / "fold1" / "last.pt", **ck)
    assert stored_int8(run, 0) is not None and stored_int8(run, 1) is None
    runner = SegRunner(run, paths=("fold_bn", "int8"))
    assert runner.calibrated_on_scan == [1] and "'bonemet seg quantize RUN'" in runner.describe()["int8 calibration"]
    eager = SegRunner(run, paths=()).predict(scan)
    for a, b in zip(eager, runner.predict(scan)):
        assert float((np.abs(a - b) <= 0.02).mean()) >= 0.99 and float(((a > 0.5) == (b > 0.5)).mean()) >= 0.995
    r = invoke("seg", "quantize", run, "--data", tmp_path / "nowhere")
    assert r.returncode == 2 and "nowhere" in r.stderr and "Traceback" not in r.stderr


def test_flip_tta_averages_the_plain_and_the_mirrored_pass(phantom, seg_run):
    """predict --tta: each member's probabilities are the mean of its pass on the slices and, mirrored back, its
    pass on the left-right mirrored slices. Known answer with a member whose logits are the image plus a
    left-to-right ramp (a trained member's asymmetry is too faint to tell the two apart in float16)."""
    import torch

    from bonemet.inference.runners import SegRunner
    from bonemet.inference.scan import read_scan

    class Ramp(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 4 * x[:, :1] + torch.linspace(-3, 3, x.shape[-1])

    scan = read_scan(phantom / "volumes" / "P001" / "ct.nii.gz")
    runner = SegRunner(seg_run, paths=())
    runner.models = [Ramp()]
    plain, _ = runner.predict(scan)
    tta, _ = runner.predict(scan, flip=True)
    # by hand: the mirrored pass sees the image mirrored and the ramp as it is; mirrored back, the ramp runs
    # right to left, so the two passes average to the image term with the ramp cancelled out
    assert np.abs(plain.astype(np.float32) - tta.astype(np.float32)).max() > 0.2
    x = torch.stack([torch.from_numpy(np.ascontiguousarray(scan.model_slice(k, runner.cfg.preprocessing["window"])))
                     for k in range(scan.n_slices)]).float() / 255
    ramp = torch.linspace(-3, 3, runner.cfg.size)
    small = torch.nn.functional.interpolate(x[:, None],
                                            size=(runner.cfg.size, runner.cfg.size), mode="area")[:, :1]
    mean = (torch.sigmoid(4 * small + ramp) + torch.sigmoid(4 * small - ramp)) / 2
    expected = torch.nn.functional.interpolate(mean, size=plain.shape[1:], mode="bilinear",
                                               align_corners=False)[:, 0].numpy()
    assert np.abs(tta.astype(np.float32) - expected).max() < 5e-3


def test_a_predictor_of_some_members_averages_those_alone(phantom, seg_run):
    """``Predictor(opts, members=[k])``: member k's own probabilities; the two alone average to the ensemble."""
    from bonemet.inference.predict import PredictOptions, Predictor
    from bonemet.inference.scan import read_scan

    scan = read_scan(phantom / "dicom" / _metastatic_patient(phantom))
    opts = PredictOptions(seg=seg_run, viewer=False, dicom_seg=False, device="cpu")
    probs = [np.asarray(Predictor(opts, members=m).analyse(scan, keep_probabilities=True).lesion_probability,
                        np.float32) for m in ([0], [1], None)]
    assert not np.allclose(probs[0], probs[1])
    np.testing.assert_allclose((probs[0] + probs[1]) / 2, probs[2], atol=2e-3)  # float16 probabilities
