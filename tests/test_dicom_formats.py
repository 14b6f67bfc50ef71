"""Real-world DICOM: compressed transfer syntaxes, files without extension, DICOMDIR media, enhanced (multi-frame)
CT and folders that hold several series."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from bonemet.data.dicom import read_dicom_series
from bonemet.inference.scan import read_scan
from conftest import invoke
from test_cli import assert_clean_failure
from test_predict import _metastatic_patient

# transfer syntax UID -> the GDCM name of the same syntax (GDCM transcodes; pydicom decodes through GDCM)
GDCM_SYNTAXES = {
    "1.2.840.10008.1.2.4.70": "JPEGLosslessProcess14_1",  # JPEG Lossless, first-order prediction
    "1.2.840.10008.1.2.4.80": "JPEGLSLossless",
    "1.2.840.10008.1.2.4.90": "JPEG2000Lossless",
    "1.2.840.10008.1.2.5": "RLELossless",
}
DEFLATE = "1.2.840.10008.1.2.1.99"

# GDCM's Python objects must outlive each other within a process; a child process keeps that away from pytest
TRANSCODE = textwrap.dedent("""
    import sys, gdcm
    src, dst, syntax = sys.argv[1:4]
    files = sys.argv[4:]
    keep = []
    for name in files:
        reader = gdcm.ImageReader()
        reader.SetFileName(f"{src}/{name}")
        assert reader.Read(), name
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
        change.SetInput(reader.GetImage())
        assert change.Change(), syntax
        writer = gdcm.ImageWriter()
        writer.SetFileName(f"{dst}/{name}")
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write(), name
        keep.append((reader, change, writer))
""")


@pytest.fixture(scope="module")
def series(phantom: Path) -> Path:
    return phantom / "dicom" / _metastatic_patient(phantom)


def _first_slices(series: Path, n: int, dst: Path) -> list[Path]:
    """Copies of ``n`` neighbouring slices of ``series`` (a short, uniform series)."""
    files = [Path(f) for f in read_dicom_series(series, canonical=False).meta["slice_files"]][:n]
    dst.mkdir()
    for f in files:
        shutil.copy(f, dst / f.name)
    return [dst / f.name for f in files]


def test_compressed_transfer_syntaxes_read_like_the_uncompressed_series(series, tmp_path):
    plain = _first_slices(series, 6, tmp_path / "plain")
    reference = read_dicom_series(tmp_path / "plain")
    for uid, name in GDCM_SYNTAXES.items():
        out = tmp_path / name
        out.mkdir()
        subprocess.run([sys.executable, "-c", TRANSCODE, str(tmp_path / "plain"), str(out), name,
                        *[f.name for f in plain]], check=True, timeout=120)
    out = tmp_path / "deflate"
    out.mkdir()
    for f in plain:
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = DEFLATE
        ds.save_as(out / f.name, enforce_file_format=True)
    for uid, folder in [*((u, tmp_path / n) for u, n in GDCM_SYNTAXES.items()), (DEFLATE, out)]:
        assert {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                for f in folder.iterdir()} == {uid}
        vol = read_dicom_series(folder)
        assert vol.meta["skipped_files"] == [], vol.meta["skipped_files"]
        assert np.array_equal(vol.array, reference.array), uid  # lossless: the same HU, voxel for voxel
        assert np.allclose(vol.affine, reference.affine)


def test_files_without_extension_and_a_dicomdir_medium(series, seg_run, tmp_path):
    from pydicom.fileset import FileSet

    reference = read_dicom_series(series)
    fs = FileSet()
    for f in series.iterdir():
        fs.add(pydicom.dcmread(f))
    fs.write(tmp_path / "media")  # DICOMDIR plus PT000000/ST000000/SE000000/IM000000...: no extensions
    images = [p for p in (tmp_path / "media").rglob("*") if p.is_file() and p.name != "DICOMDIR"]
    assert images and not any(p.suffix for p in images)
    for path in (tmp_path / "media", tmp_path / "media" / "DICOMDIR"):
        scan = read_scan(path)
        assert scan.kind == "dicom" and np.array_equal(scan.volume.array, reference.array)
        assert not scan.volume.meta["ignored_non_dicom"]  # the DICOMDIR is the medium's index, not a stray file
    r = invoke("predict", tmp_path / "media" / "DICOMDIR", "--seg", seg_run, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["input"]["kind"] == "dicom"


def test_enhanced_multiframe_ct_reads_and_gets_a_seg(series, seg_run, tmp_path):
    import highdicom as hd

    sources = [pydicom.dcmread(f) for f in sorted(series.iterdir())]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=sources, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1)
    (tmp_path / "mf").mkdir()
    enhanced.save_as(tmp_path / "mf" / "ct.dcm")
    single, multi = read_dicom_series(series), read_dicom_series(tmp_path / "mf")
    assert multi.meta["multiframe"] and sorted(multi.meta["slice_frames"]) == list(range(1, len(sources) + 1))
    assert np.array_equal(single.array, multi.array) and np.allclose(single.affine, multi.affine)

    for name, src in (("single", series), ("multi", tmp_path / "mf")):
        r = invoke("predict", src, "--seg", seg_run, "--out", tmp_path / name, "--threshold", "0.05", "--include-phi")
        assert r.returncode == 0, r.stderr
    with open(tmp_path / "multi" / "slices.csv", newline="") as fh:  # one SOP instance: its frames name the slices
        names = [row["name"] for row in csv.DictReader(fh)]
    assert len(set(names)) == len(sources) and all(n.startswith(f"{enhanced.SOPInstanceUID} frame ") for n in names)
    a = nib.load(tmp_path / "single" / "lesion_mask.nii.gz")
    b = nib.load(tmp_path / "multi" / "lesion_mask.nii.gz")
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.allclose(a.affine, b.affine)
    seg = hd.seg.segread(tmp_path / "multi" / "lesions_seg.dcm")
    assert {uid for _, _, uid in seg.get_source_image_uids()} == {str(enhanced.SOPInstanceUID)}
    native = read_dicom_series(tmp_path / "mf", canonical=False)
    lesion = np.asarray(b.dataobj) > 0
    k = int(np.argmax(lesion.sum(axis=(0, 1))))
    assert lesion[:, :, k].any()
    frame = seg.get_pixels_by_source_frame(source_sop_instance_uid=str(enhanced.SOPInstanceUID),
                                           source_frame_numbers=[native.meta["slice_frames"][k]],
                                           segment_numbers=[1])[0, :, :, 0]
    assert np.array_equal(frame > 0, lesion[:, :, k].T)


def test_series_uid_picks_one_of_several_series(phantom, seg_run, tmp_path):
    both = tmp_path / "both"
    pids = sorted(p.name for p in (phantom / "dicom").iterdir())[:2]
    uids = {}
    for pid in pids:
        shutil.copytree(phantom / "dicom" / pid, both / pid)
        uids[pid] = str(pydicom.dcmread(next((both / pid).iterdir()), stop_before_pixels=True).SeriesInstanceUID)
    r = invoke("predict", both, "--seg", seg_run, "--out", tmp_path / "default")
    assert r.returncode == 0, r.stderr
    assert "2 series found" in r.stderr and "--series-uid" in r.stderr and all(u in r.stderr for u in uids.values())
    for pid in pids:
        scan = read_scan(both, series_uid=uids[pid])
        assert np.array_equal(scan.volume.array, read_dicom_series(phantom / "dicom" / pid).array)
    r = invoke("predict", both, "--seg", seg_run, "--out", tmp_path / "picked", "--series-uid", uids[pids[1]])
    assert r.returncode == 0 and "series found" not in r.stderr, r.stderr
    r = invoke("predict", both, "--seg", seg_run, "--out", tmp_path / "none", "--series-uid", "1.2.3.4")
    assert_clean_failure(r, "no series with UID 1.2.3.4", uids[pids[0]])
    assert not (tmp_path / "none").exists()
