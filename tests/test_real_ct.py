"""Readers against real CT (../shared/data/real_ct): HU, orientation, conversion, lesion insertion."""

from __future__ import annotations

import numpy as np
import pytest

from bonemet.data.bmseg import load_bmseg, load_seg_slice, scan_bmseg
from bonemet.data.convert import convert_to_bmseg
from bonemet.data.dicom import read_dicom_series
from bonemet.data.stats import hu_stats
from bonemet.data.volume import read_mask_like, read_nifti, resample_like
from bonemet.phantom.lesions import insert_lesions


def test_dicom_reader_gives_hu(real_ct):
    vol = read_dicom_series(real_ct / "chest_abdomen_dicom")
    assert vol.shape == (512, 512, 20)
    assert vol.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert vol.axcodes == ("L", "P", "S")
    air = vol.array[:20, :20, :]
    assert abs(np.median(air) + 1000) < 50, "air near -1000 HU: slope and intercept applied"
    assert (vol.array > 300).sum() > 10_000, "bone present above 100 HU"
    # ordered by position along the normal, not by file name
    z = [float(v) for v in vol.affine[2, 2:4]]
    assert z[0] > 0
    assert len(vol.meta["slice_uids"]) == 20


def test_bone_mask_lines_up_with_dicom_pixels(real_ct):
    vol = read_dicom_series(real_ct / "chest_abdomen_dicom")
    mask = read_mask_like(real_ct / "chest_abdomen_dicom_bone_mask.nii.gz", vol)
    frac = (vol.array[mask] > 100).mean()
    assert frac >= 0.75, f"only {frac:.0%} of bone-mask voxels above 100 HU: orientation is wrong"
    # a reader that ignores orientation (raw array order) puts the mask upside down
    raw = read_nifti(real_ct / "chest_abdomen_dicom_bone_mask.nii.gz", canonical=False).array > 0
    assert (vol.array[raw] > 100).mean() < 0.5


def test_nifti_mask_and_ct_share_grid(real_ct):
    ct = read_nifti(real_ct / "abdomen_3mm_ct.nii.gz")
    bone = read_mask_like(real_ct / "abdomen_3mm_bone_mask.nii.gz", ct)
    st = hu_stats(ct.array, bone)
    assert 150 <= st["bone median"] <= 190  # about 170 HU
    assert 0.78 <= st["bone >100 HU"] <= 0.88  # about 83 %
    # resampling a volume onto its own grid changes nothing
    np.testing.assert_array_equal(resample_like(ct, ct), ct.array)


def test_convert_dicom_with_mask_gives_bright_bone(real_ct, tmp_path):
    out = tmp_path / "conv"
    summary = convert_to_bmseg(real_ct / "chest_abdomen_dicom", out,
                               bone_mask=real_ct / "chest_abdomen_dicom_bone_mask.nii.gz", window="bone")
    assert summary["slices"] == 20 and summary["bone_voxels"] > 10_000
    idx = scan_bmseg(out)  # no lesion masks were given: readable, but not trainable
    assert len(idx.slices) == 20 and idx.has_patients
    inside, outside = [], []
    for s in idx.slices[::4]:
        image, _, bone, _ = load_seg_slice(s)
        assert bone is not None and bone.any()
        grey = image if image.ndim == 2 else image.mean(-1)
        inside.append(grey[bone].mean())
        outside.append(grey[~bone].mean())
    assert np.mean(inside) > np.mean(outside) + 40


def test_convert_lesion_free_scan_is_trainable(real_ct, tmp_path):
    out = tmp_path / "conv"
    convert_to_bmseg(real_ct / "abdomen_3mm_ct.nii.gz", out, bone_mask=real_ct / "abdomen_3mm_bone_mask.nii.gz",
                     lesion_free=True)
    idx = load_bmseg(out, require_patients=True)
    assert len(idx.slices) == 30 and idx.patients == ["abdomen_3mm_ct"]
    _, lesion, bone, _ = load_seg_slice(idx.slices[15])
    assert not lesion.any() and bone.any()


def test_lesion_insertion_into_real_ct_stays_in_bone(real_ct):
    ct = read_nifti(real_ct / "abdomen_3mm_ct.nii.gz")
    bone = read_mask_like(real_ct / "abdomen_3mm_bone_mask.nii.gz", ct)
    rng = np.random.default_rng(0)
    hu, labels, infos = insert_lesions(ct.array, bone, ct.spacing, rng, 6, types=["lytic", "blastic", "mixed"] * 2)
    assert len(infos) == 6
    assert (labels > 0).any()
    assert not ((labels > 0) & ~bone).any(), "every inserted lesion voxel lies inside the bone mask"
    for info in infos:
        m = labels == info.lesion_id
        if info.kind == "lytic":
            assert hu[m].mean() < info.surrounding_bone_hu
        elif info.kind == "blastic":
            assert hu[m].mean() > info.surrounding_bone_hu
    # outside the lesions the CT is untouched
    np.testing.assert_array_equal(hu[labels == 0], ct.array[labels == 0])
