"""Bad input gets one line, exit 2, no traceback, nothing written; what can be repaired is repaired and said."""

from __future__ import annotations

import base64
import csv
import gzip
import json
import os
import pickle
import re
import shutil
import stat
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from bonemet.data.ct import read_volume
from bonemet.data.volume import read_nifti
from bonemet.errors import DataError
from conftest import invoke
from test_cli import assert_clean_failure
from test_predict import _metastatic_patient


def raw_nifti(path: Path, data: np.ndarray, srow=None, shape=None) -> Path:
    """A NIfTI written field by field: any sform (zero, NaN, sheared) and any claimed shape."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(data.dtype)
    hdr.set_data_shape(shape or data.shape)
    hdr["vox_offset"] = 352
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    s = np.eye(4) if srow is None else np.asarray(srow, float)
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = s[0], s[1], s[2]
    raw = hdr.binaryblock + b"\0" * 4 + np.asarray(data).tobytes(order="F")
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def one_line_failure(r, *words: str) -> None:
    """Exit 2, one ``error:`` line naming what is wrong, nothing else of ours or of Python's."""
    assert_clean_failure(r, *words)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr


def test_damaged_run_folders_are_one_line(phantom, seg_run, tmp_path):
    series = phantom / "dicom" / _metastatic_patient(phantom)

    def broken(name: str, edit) -> Path:
        run = tmp_path / name
        shutil.copytree(seg_run, run)
        edit(run)
        return run

    def config(run: Path, **changes) -> None:
        cfg = json.loads((run / "config.json").read_text())
        cfg.update(changes)
        (run / "config.json").write_text(json.dumps(cfg))

    cases = [
        (broken("cfg", lambda r: (r / "config.json").write_text('{"data": "x", "model": ')), "config.json",
         "not valid JSON"),
        (broken("splits", lambda r: (r / "splits.json").write_text("{folds: [}")), "splits.json", "not valid JSON"),
        (broken("done", lambda r: (r / "fold0" / "done.json").write_text("nope")), "done.json", "not valid JSON"),
        (broken("model", lambda r: config(r, model="resnet-9000")), "config.json", "unknown model 'resnet-9000'"),
        (broken("size", lambda r: config(r, size=0)), "config.json", "size must be a multiple of 16"),
        (broken("field", lambda r: config(r, colour="blue")), "config.json", "fields it does not know (colour)"),
        (broken("shape", lambda r: config(r, width=8)), "last.pt", "does not fit the model"),
        (broken("ckname", lambda r: (r / "fold1" / "done.json").write_text('{"checkpoint": "../../x.pt"}')),
         "done.json", "names no checkpoint"),
    ]
    for k, (run, where, why) in enumerate(cases):
        r = invoke("predict", series, "--seg", run, "--out", tmp_path / f"o{k}")
        one_line_failure(r, where, why)
        assert not (tmp_path / f"o{k}").exists()
    r = invoke("seg", "evaluate", cases[0][0])
    one_line_failure(r, "config.json", "not valid JSON")


def test_a_checkpoint_that_is_code_is_refused_in_one_line(seg_run, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))

    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    torch.save({"model": Evil()}, run / "fold0" / "last.pt")
    r = invoke("predict", run.parent, "--seg", run, "--out", tmp_path / "o")  # the run check comes first
    one_line_failure(r)
    r = invoke("seg", "evaluate", run)
    one_line_failure(r, "last.pt", "refused", "posix.system", "never as code")
    assert "weights_only" not in r.stderr and not (tmp_path / "owned").exists()
    (run / "fold0" / "last.pt").write_bytes(pickle.dumps({"model": 1}, protocol=4)[:-5])  # damaged, not code
    r = invoke("seg", "evaluate", run)
    one_line_failure(r, "last.pt", "damaged")
    assert "refused" not in r.stderr


def test_nifti_headers_are_checked_before_the_data(tmp_path):
    tracemalloc.start()
    for name in ("claims.nii.gz", "claims.nii"):  # a few bytes claiming 500 MB
        path = raw_nifti(tmp_path / name, np.zeros(40, np.int16), shape=(512, 512, 1000))
        with pytest.raises(DataError, match=r"truncated: the header claims shape \(512, 512, 1000\)"):
            read_volume(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50e6, f"{peak / 1e6:.0f} MB allocated for a file that holds a few bytes"
    big = raw_nifti(tmp_path / "big.nii.gz", np.zeros(40, np.int16), shape=(1024, 1024, 1500))
    with pytest.raises(DataError, match="more than the limit of 1,500,000,000"):
        read_volume(big)
    os.environ["BONEMET_MAX_VOXELS"] = "1000"
    try:
        with pytest.raises(DataError, match="set BONEMET_MAX_VOXELS"):
            read_volume(raw_nifti(tmp_path / "small.nii.gz", np.zeros((16, 16, 8), np.int16)))
    finally:
        del os.environ["BONEMET_MAX_VOXELS"]
    data = np.zeros((8, 8, 8), np.float32)
    for name, srow, why in (("zero", np.zeros((4, 4)), "zero or singular"),
                            ("flat", np.diag([1.0, 1.0, 0.0, 1.0]), "zero or singular"),
                            ("nan", np.full((4, 4), np.nan), "NaN or infinite")):
        with pytest.raises(DataError, match=why):
            read_volume(raw_nifti(tmp_path / f"{name}.nii.gz", data, srow))


def test_sheared_grids_measure_the_true_voxel_volume(phantom, seg_run, tmp_path, caplog):
    pid = _metastatic_patient(phantom)
    ct = nib.load(phantom / "volumes" / pid / "ct.nii.gz")
    affine = ct.affine.copy()
    affine[:3, 2] += affine[:3, 0] * 2.0  # each slice shifted sideways by 2 columns: a sheared stack
    sheared = tmp_path / "sheared.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(ct.dataobj), affine), sheared)
    vol = read_nifti(sheared)
    det = abs(np.linalg.det(affine[:3, :3]))
    assert vol.voxel_volume_mm3 == pytest.approx(det) and np.prod(vol.spacing) > 1.1 * det
    assert "not orthogonal" in caplog.text
    r = invoke("predict", sheared, "--seg", seg_run, "--out", tmp_path / "o", "--threshold", "0.05",
               "--min-volume", "0")
    assert r.returncode == 0, r.stderr
    lesions = json.loads((tmp_path / "o" / "lesions.json").read_text())
    assert lesions, "the tiny model finds something at threshold 0.05"
    for les in lesions:
        assert les["volume_ml"] == pytest.approx(les["voxels"] * det / 1000, abs=1e-3)
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert any("sheared" in w for w in s["warnings"])


def test_non_finite_voxels(phantom, seg_run, tmp_path):
    pid = _metastatic_patient(phantom)
    ct = nib.load(phantom / "volumes" / pid / "ct.nii.gz")
    data = np.asarray(ct.dataobj).astype(np.float32)
    bone = np.asarray(nib.load(phantom / "volumes" / pid / "bone_mask.nii.gz").dataobj) > 0
    data[bone & (np.arange(data.shape[2]) % 2 == 0)] = np.nan  # NaN inside bone
    data[0, 0, :] = np.inf
    expected = int(np.count_nonzero(~np.isfinite(data)))
    nib.save(nib.Nifti1Image(data, ct.affine), tmp_path / "holes.nii.gz")
    r = invoke("predict", tmp_path / "holes.nii.gz", "--seg", seg_run, "--out", tmp_path / "o", "--threshold", "0.05",
               "--min-volume", "0")
    assert r.returncode == 0, r.stderr
    assert f"{expected} voxel(s)" in r.stderr and "NaN or infinite" in r.stderr
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["input"]["non_finite_voxels"] == expected
    assert any("NaN or infinite" in w for w in s["warnings"])

    def strict(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    for f in ("lesions.json", "summary.json", ".bonemet.json"):
        json.loads((tmp_path / "o" / f).read_text(), parse_constant=strict)
    for les in json.loads((tmp_path / "o" / "lesions.json").read_text()):
        assert np.isfinite(les["mean_hu"]) and np.isfinite(les["max_hu"])
    nib.save(nib.Nifti1Image(np.full(data.shape, np.nan, np.float32), ct.affine), tmp_path / "void.nii.gz")
    r = invoke("predict", tmp_path / "void.nii.gz", "--seg", seg_run, "--out", tmp_path / "o2")
    one_line_failure(r, "void.nii.gz", "100% of the voxels are not finite")
    assert not (tmp_path / "o2").exists()


def test_a_label_mask_given_as_the_ct_is_one_line(phantom, seg_run, tmp_path):
    """A bone or lesion mask passed where the CT goes is refused before any model runs (it would be read as
    anatomy and answered "no metastasis"); a CT whose values are few but many enough still reads."""
    pid = _metastatic_patient(phantom)
    ct = nib.load(phantom / "volumes" / pid / "ct.nii.gz")
    r = invoke("predict", phantom / "volumes" / pid / "bone_mask.nii.gz", "--seg", seg_run, "--out", tmp_path / "o")
    one_line_failure(r, "bone_mask.nii.gz", "only 2 distinct value(s) (0, 1): a label mask or a blank image, not a CT")
    assert not (tmp_path / "o").exists()
    import bonemet
    from bonemet.errors import DataError

    mask = nib.load(phantom / "volumes" / pid / "bone_mask.nii.gz")
    for given in (mask, np.asarray(mask.dataobj)):  # the Python API: a nibabel image, or an array and its affine
        with pytest.raises(DataError, match=r"only 2 distinct value\(s\) \(0, 1\): a label mask"):
            bonemet.predict(given, seg=seg_run, affine=None if given is mask else ct.affine)
    labels = np.zeros(ct.shape, np.int16)
    labels[:, :, ::2] = np.arange(ct.shape[0])[:, None, None] % 7 * 40 - 100  # 7 levels, some below 0, and 0
    nib.save(nib.Nifti1Image(labels, ct.affine), tmp_path / "labels.nii.gz")
    r = invoke("data", "convert", tmp_path / "labels.nii.gz", tmp_path / "conv")
    one_line_failure(r, "labels.nii.gz", "only 8 distinct value(s) (-100, -60, -20, 0, 20, 60, ...)")
    assert not (tmp_path / "conv").exists()
    from bonemet.data.ct import read_volume
    from bonemet.data.volume import LABEL_LEVELS

    steps = np.zeros(ct.shape, np.int16)
    steps[:] = (np.arange(ct.shape[0]) % (LABEL_LEVELS + 1) * 100 - 1000)[:, None, None]
    nib.save(nib.Nifti1Image(steps, ct.affine), tmp_path / "steps.nii.gz")
    assert len(np.unique(read_volume(tmp_path / "steps.nii.gz").array)) == LABEL_LEVELS + 1


def test_a_ct_not_in_hu_is_one_line(phantom, seg_run, tmp_path):
    """A CT whose values are not HU (stored without its rescale intercept, so air is 0; or in other units) has
    neither air nor fat below -100: refused before any model runs, from a file and from the Python API."""
    import bonemet
    from bonemet.errors import DataError

    ct = nib.load(phantom / "volumes" / _metastatic_patient(phantom) / "ct.nii.gz")
    hu = np.asarray(ct.dataobj).astype(np.int16)
    offset = np.clip(hu + 1024, 0, None).astype(np.uint16)
    nib.save(nib.Nifti1Image(offset, ct.affine), tmp_path / "offset.nii.gz")
    r = invoke("predict", tmp_path / "offset.nii.gz", "--seg", seg_run, "--out", tmp_path / "o")
    one_line_failure(r, "offset.nii.gz", "no value below -100 (the lowest is 0): no air and no fat, so not a CT in HU")
    assert not (tmp_path / "o").exists()
    with pytest.raises(DataError, match=r"no value below -100 \(the lowest is -1.024\): no air and no fat"):
        bonemet.predict(hu.astype(np.float32) / 1000.0, seg=seg_run, affine=ct.affine)  # HU / 1000: air at -1.024
    assert hu.min() == -1024  # the phantom's air; the same CT in HU reads (the tests above run it)


def test_write_json_never_writes_nan(tmp_path):
    from bonemet.fileio import write_json

    write_json(tmp_path / "x.json", {"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": np.int64(3)})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.5], "c": 3}


def test_deep_images_are_read_or_refused_never_saturated(phantom, seg_run, tmp_path):
    from PIL import Image

    from bonemet.data.images import read_image, read_mask

    pid = _metastatic_patient(phantom)
    eight = sorted((phantom / "bmseg" / "image").glob(f"{pid}_*"))[:4]
    fits, wide = tmp_path / "fits", tmp_path / "wide"
    fits.mkdir(), wide.mkdir()
    for f in eight:
        a = np.asarray(Image.open(f).convert("L")).astype(np.uint16)
        Image.fromarray(a).save(fits / f.name)  # 16-bit file, 8-bit values
        Image.fromarray(a * 200).save(wide / f.name)  # 16-bit values
        assert Image.open(wide / f.name).mode.startswith("I;16")
        assert np.array_equal(read_image(fits / f.name), np.asarray(Image.open(f).convert("L")))
    r = invoke("predict", wide, "--seg", seg_run, "--out", tmp_path / "o")
    one_line_failure(r, eight[0].name, "16-bit image with values")
    assert not (tmp_path / "o").exists()
    mask = np.zeros((8, 8), np.uint16)
    mask[2:4, 2:4] = 65535
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert np.array_equal(read_mask(tmp_path / "mask.png"), mask > 0)


def test_resume_refuses_other_options(phantom, tmp_path):
    run = tmp_path / "run"
    base = ["seg", "train", "--data", phantom / "bmseg", "--model", "unet", "--folds", "2", "--test-patients", "0.25",
            "--epochs", "1", "--size", "32", "--width", "2", "--neg-ratio", "0.2", "--out", run]
    assert invoke(*base).returncode == 0
    argv = [str(a) for a in base]
    changed = argv[:]
    changed[changed.index("--epochs") + 1] = "3"
    changed[changed.index("--folds") + 1] = "3"
    changed[changed.index("--model") + 1] = "attunet"
    r = invoke(*changed, "--resume")
    one_line_failure(r, "config.json", "model unet in the run, attunet now", "epochs 1 in the run, 3 now",
                     "folds 2 in the run, 3 now")
    r = invoke(*argv, "--resume")  # the same options: nothing to do, the run's own fold count reported
    assert r.returncode == 0, r.stderr
    assert "trained 2 fold models" in r.stdout
    r = invoke("seg", "train", "--data", phantom / "bmseg", "--out", run, "--resume")  # options left at defaults
    assert r.returncode == 0 and "trained 2 fold models" in r.stdout, r.stderr


def test_damaged_dicom_is_named_as_damaged(phantom, seg_run, tmp_path):
    series = tmp_path / "series"
    shutil.copytree(phantom / "dicom" / _metastatic_patient(phantom), series)
    from bonemet.data.dicom import read_dicom_series

    files = [Path(f) for f in read_dicom_series(series, canonical=False).meta["slice_files"]]
    files[-1].write_bytes(files[-1].read_bytes()[:200])  # the preamble and the start of the file meta survive
    files[0].write_bytes(files[0].read_bytes()[:1000])  # the data set breaks off inside an element
    r = invoke("predict", series, "--seg", seg_run, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    for f in (files[0], files[-1]):
        assert f"{f.name} (damaged DICOM" in r.stderr
    assert "non-DICOM" not in r.stderr
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["input"]["slices"] == len(files) - 2


def test_library_warnings_stay_behind_verbose(phantom, seg_run, tmp_path, monkeypatch):
    import uuid
    import warnings

    import bonemet.inference.predict as predict_module

    original = predict_module.read_scan

    def warning_reader(*args, **kwargs):  # stands for pydicom / numpy / nibabel warning while a scan is read
        warnings.warn(f"a library's remark {uuid.uuid4()}", UserWarning)
        return original(*args, **kwargs)

    monkeypatch.setattr(predict_module, "read_scan", warning_reader)
    series = phantom / "dicom" / _metastatic_patient(phantom)
    for flags, shown in (((), False), (("--verbose",), True)):
        with warnings.catch_warnings(record=True) as seen:  # what would reach the terminal, this process's way
            r = invoke(*flags, "predict", series, "--seg", seg_run, "--out", tmp_path / f"out{len(flags)}")
        assert r.returncode == 0, r.stderr
        assert any("a library's remark" in str(w.message) for w in seen) == shown


def test_outputs_share_one_mode_and_leave_phi_out_unless_asked(phantom, seg_run, tmp_path):
    series = tmp_path / "Doe_Jane_4711"  # folder names carry identifiers too
    shutil.copytree(phantom / "dicom" / _metastatic_patient(phantom), series)
    phi = {"PatientName": "Doe^Jane", "PatientID": "MRN4711", "PatientBirthDate": "19580317"}
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        for key, value in phi.items():
            setattr(ds, key, value)
        ds.save_as(f)
    out = tmp_path / "o"
    assert invoke("predict", series, "--seg", seg_run, "--out", out).returncode == 0
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o666 & ~umask}, modes
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    s = json.loads((out / "summary.json").read_text())
    assert str(series) not in json.dumps(s) and "left out" in s["input"]["path"]
    # the viewer: its embedded NIfTI files carry no identifier in their headers; the vendored NiiVue bundle and
    # the base64 image data are left out of the text check (random base64 can spell anything)
    from bonemet.reporting.viewer import niivue_js

    report = (out / "report.html").read_text()
    data_json = re.search(r"<script type='application/json' id='viewer-data'>(.*?)</script>", report).group(1)
    for layer in json.loads(data_json)["layers"].values():
        header = gzip.decompress(base64.b64decode(layer))[:352]
        assert all(v.encode() not in header for v in (*phi.values(), "Doe", "4711")), header
    texts = {f: (out / f).read_text() for f in ("summary.json", "slices.csv", "lesions.csv")}
    texts["report.html"] = report.replace(niivue_js(), "").replace(data_json, "")
    shown = {f: re.sub(r"base64,[A-Za-z0-9+/=]+", "", t) for f, t in texts.items()}  # not inside embedded images
    for f, text in shown.items():
        for value in (*phi.values(), "Doe", "4711"):
            assert value not in text, (f, value)
    uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in series.iterdir()}
    with open(out / "slices.csv", newline="") as fh:
        assert not {r["name"] for r in csv.DictReader(fh)} & uids
    r = invoke("predict", series, "--seg", seg_run, "--out", tmp_path / "phi", "--include-phi")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "phi" / "summary.json").read_text())["input"]["path"] == str(series)
    report = (tmp_path / "phi" / "report.html").read_text()
    assert "Doe^Jane" in report and "MRN4711" in report and "19580317" in report
    with open(tmp_path / "phi" / "slices.csv", newline="") as fh:
        assert {r["name"] for r in csv.DictReader(fh)} == uids


def test_checkpoint_loading_is_device_free(seg_run):
    from bonemet.runs.checkpoint import load_checkpoint

    ck = load_checkpoint(seg_run / "fold0" / "last.pt")
    assert all(v.device == torch.device("cpu") for v in ck["model"].values())


def test_models_that_learn_bone_refuse_data_without_bone_masks(tmp_path):
    from test_readers import make_bmseg

    root = tmp_path / "nobone"
    make_bmseg(root, {"A": 3, "B": 3, "C": 3, "D": 3}, grouped=False)
    shutil.rmtree(root / "bone mask")
    for model in ("hybrid-attunet++", "sequential"):
        r = invoke("seg", "train", "--data", root, "--model", model, "--out", tmp_path / model, "--folds", "2",
                   "--epochs", "1", "--size", "32", "--width", "2")
        one_line_failure(r, "12 of 12 slices have no bone mask", f"{model} learns bone too", "lesion-only model")
        assert not (tmp_path / model).exists()
    r = invoke("seg", "train", "--data", root, "--model", "attunet++", "--out", tmp_path / "lesion-only", "--folds",
               "2", "--test-patients", "0.25", "--epochs", "1", "--size", "32", "--width", "2")
    assert r.returncode == 0, r.stderr
    # a partial bone label (data convert --partial-bone) serves Hybrid-AttUnet++'s bone term, not the sequential
    # model, which multiplies its input by the whole mask
    partial = tmp_path / "partial"
    make_bmseg(partial, {"A": 3, "B": 3, "C": 3, "D": 3}, grouped=False)
    lines = (partial / "patients.csv").read_text().splitlines()
    (partial / "patients.csv").write_text("\n".join([lines[0] + ",bone"] + [f"{x},partial" for x in lines[1:]]) + "\n")
    r = invoke("seg", "train", "--data", partial, "--model", "sequential", "--out", tmp_path / "seq", "--folds", "2",
               "--epochs", "1", "--size", "32", "--width", "2")
    one_line_failure(r, "12 of 12 slices have no full bone mask", "sequential learns bone too")
    assert not (tmp_path / "seq").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_build_on_a_gpu_this_machine_lacks_is_one_line_and_writes_nothing(phantom, tmp_path):
    out = tmp_path / "build"
    r = invoke("models", "build", out, "--background", phantom / "bmseg", "--device", "cuda", "--quick")
    one_line_failure(r, "--device cuda: no CUDA GPU is visible")
    assert not out.exists()


def test_density_aug_on_images_of_unknown_window_is_one_line_and_writes_nothing(phantom, tmp_path):
    """--density-aug scales HU above 100, so it needs to know the HU of the images' values: a data root without
    bonemet's description of its window (BM-Seg's PNG slices) is refused before the run folder is made."""
    data, run = tmp_path / "bmseg", tmp_path / "run"
    shutil.copytree(phantom / "bmseg", data)  # without the phantom's description beside it
    r = invoke("seg", "train", "--data", data, "--out", run, "--density-aug", "0.5", "--epochs", "1")
    one_line_failure(r, "--density-aug needs images in a known CT window", "unknown (images used as given)")
    assert not run.exists()


def test_a_lesion_prior_outside_zero_to_one_is_one_line(phantom, tmp_path):
    run, build = tmp_path / "run", tmp_path / "build"
    r = invoke("seg", "train", "--data", phantom / "bmseg", "--out", run, "--lesion-prior", "1.5")
    one_line_failure(r, "lesion_prior must be a probability between 0 and 1, got 1.5")
    assert not run.exists()
    r = invoke("seg", "train", "--data", phantom / "bmseg", "--out", run, "--lesion-dice", "-1")
    assert r.returncode == 2 and "--lesion-dice" in r.stderr and "Traceback" not in r.stderr
    assert not run.exists()
    r = invoke("models", "build", build, "--background", phantom / "bmseg", "--lesion-prior", "0")
    one_line_failure(r, "--lesion-prior must be a probability between 0 and 1, got 0.0")
    assert not build.exists()
    r = invoke("models", "build", build, "--background", phantom / "bmseg", "--phantom-patients", "0",
               "--real-in-every-member")
    one_line_failure(r, "--real-in-every-member lets the folds split the phantom patients only")
    assert not build.exists()
