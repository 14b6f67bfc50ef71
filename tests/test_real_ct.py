"""Readers against real CT (../shared/data/real_ct): HU, orientation, conversion, lesion insertion."""

from __future__ import annotations

import numpy as np
import pytest

from bonemet.data.bmseg import load_bmseg, load_seg_slice, scan_bmseg
from bonemet.data.convert import convert_to_bmseg
from bonemet.data.dicom import read_dicom_series
from bonemet.data.stats import hu_stats
from bonemet.data.volume import Volume, read_mask_like, read_nifti, resample_like
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


def _vertebra_and_aorta(pixel_mm: float) -> Volume:
    """40 HU soft tissue; a 'vertebra' (radius 12 mm: 3 mm of 800 HU cortex around 250 HU marrow) touched by an
    'aorta' (radius 10 mm of 250 HU contrast, no dense voxel); a dense speck too small to seed bone; 5 slices."""
    n = int(round(100 / pixel_mm))
    y, x = (np.mgrid[:n, :n] + 0.5) * pixel_mm
    r_v = np.hypot(x - 40, y - 50)
    r_a = np.hypot(x - 62, y - 50)  # 22 mm apart: the aorta's rim touches the vertebra's
    hu = np.full((n, n), 40.0)
    hu[r_a <= 10] = 250.0
    hu[r_v <= 12] = 250.0
    hu[(r_v <= 12) & (r_v > 9)] = 800.0
    hu[np.hypot(x - 80, y - 85) <= 1.0] = 900.0  # 3 mm^2 x 5 slices of 2 mm: 0.03 mL, below the 0.05 mL seed
    affine = np.diag([pixel_mm, pixel_mm, 2.0, 1.0])
    return Volume(np.repeat(hu[:, :, None], 5, axis=2).astype(np.float32), affine)


def test_hu_bone_rule_keeps_marrow_and_drops_an_aorta_that_touches_cortex():
    from bonemet.data.bone import insertion_bone_mask

    def at(mask, x_mm, y_mm, pixel_mm):
        return bool(mask[int(y_mm / pixel_mm), int(x_mm / pixel_mm), 2])  # rows along y

    fine = insertion_bone_mask(_vertebra_and_aorta(1.0))
    assert at(fine, 40, 50, 1.0), "marrow inside a closed cortex is bone (filled), even far from the cortex"
    assert at(fine, 40, 59.2, 1.0), "the cortex itself (9.5 mm from the centre)"
    assert not at(fine, 65, 50, 1.0), "the aorta's centre: 250 HU like marrow, but 5 mm from any dense voxel"
    assert not at(fine, 40, 61.2, 1.0), "the cortex's outer rim is eroded (partial volume): 11.5 mm"
    assert not fine[80:90, 75:85].any(), "a dense speck under 0.05 mL seeds nothing"
    assert not at(fine, 20, 20, 1.0)
    # coarse pixels: partial volume leaves few dense voxels, so the rule keeps whole components without the
    # near-cortex step; here the aorta touches the cortex, so it comes too (the 3 mm series has no contrast)
    coarse = insertion_bone_mask(_vertebra_and_aorta(3.0))
    assert at(coarse, 40, 50, 3.0) and at(coarse, 65, 50, 3.0)


def test_hu_bone_rule_puts_inserted_lesions_in_totalsegmentators_bone(real_ct):
    """The checked procedure: lesions inserted through the HU rule into the two series that have a bone mask land
    in that mask (the figures of docs/real-ct-findings.md: 90 % / 95 % of centres, 92 % / 97 % of lesions with at
    least 70 % of their voxels in it)."""
    from bonemet.data.bone import insertion_bone_mask
    from bonemet.data.ct import read_volume

    for ct, mask, centres, mostly in (("chest_abdomen_dicom", "chest_abdomen_dicom_bone_mask.nii.gz", 0.85, 0.85),
                                      ("abdomen_3mm_ct.nii.gz", "abdomen_3mm_bone_mask.nii.gz", 0.9, 0.9)):
        vol = read_volume(real_ct / ct)
        truth = read_mask_like(real_ct / mask, vol)
        sites = insertion_bone_mask(vol)
        inside, n = [], 0
        for seed in range(10):
            _, labels, infos = insert_lesions(vol.array, sites, vol.spacing, np.random.default_rng([seed, 10000]), 6,
                                              diameter_range=(5, 45))
            for info in infos:
                m = labels == info.lesion_id
                inside.append((bool(truth[info.center_voxel]), (m & truth).sum() / m.sum() >= 0.7))
                n += 1
        assert n == 60
        assert np.mean([c for c, _ in inside]) >= centres, ct
        assert np.mean([w for _, w in inside]) >= mostly, ct


def test_partial_bone_labels_against_totalsegmentators_masks(real_ct, tmp_path):
    """The partial bone label that ``data convert --partial-bone`` writes, on the two series that have a bone mask
    (docs/real-ct-findings.md): its "no bone" holds almost none of TotalSegmentator's bone and most voxels; its
    "bone" is mostly bone; the rest is unknown. Written as 0 / 128 / 255 and read back as 0 / unknown / 1."""
    import torch

    from bonemet.data.bone import BONE, NOT_BONE, UNKNOWN_BONE, partial_bone_labels
    from bonemet.data.ct import read_volume
    from bonemet.data.datasets import UNKNOWN_BONE_TARGET, SegmentationDataset

    for ct, mask, not_bone_share in (("chest_abdomen_dicom", "chest_abdomen_dicom_bone_mask.nii.gz", 0.85),
                                     ("abdomen_3mm_ct.nii.gz", "abdomen_3mm_bone_mask.nii.gz", 0.9)):
        vol = read_volume(real_ct / ct)
        truth = read_mask_like(real_ct / mask, vol)
        labels = partial_bone_labels(vol)
        assert set(np.unique(labels)) == {NOT_BONE, UNKNOWN_BONE, BONE}, ct
        assert (truth & (labels == NOT_BONE)).sum() <= 0.001 * truth.sum(), ct  # measured: 0.00 % and 0.01 %
        assert (labels == NOT_BONE).mean() >= not_bone_share, ct  # measured: 88 % and 95 %
        sure = labels == BONE
        assert (sure & truth).sum() >= 0.8 * sure.sum(), ct  # measured: 85 % and 88 %
    convert_to_bmseg(real_ct / "abdomen_3mm_ct.nii.gz", tmp_path / "c", lesion_free=True, partial_bone=True)
    index = load_bmseg(tmp_path / "c", require_patients=True)
    assert all(s.bone_partial for s in index.slices)
    k = int(np.argmax((labels == BONE).sum(axis=(0, 1))))
    sample = SegmentationDataset(index.slices, size=64, pixel_mm=3.0)[k]
    assert sample["bone_partial"] and sample["has_bone"]
    values = set(torch.unique(sample["bone"]).tolist())
    assert values == {0.0, UNKNOWN_BONE_TARGET, 1.0}
