"""The CT phantom: realistic HU, lesions where they belong, consistent labels, determinism."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from bonemet.data.bmseg import load_bmseg, load_seg_slice
from bonemet.data.classification import load_classification
from bonemet.data.stats import hu_stats
from bonemet.data.volume import read_nifti
from bonemet.phantom.anatomy import draw_patient, render_patient
from bonemet.phantom.synth import make_patient, synthesize


@pytest.fixture(scope="module")
def met_patient():
    return make_patient(0, seed=11, status="metastatic", size=128, n_slices=48)


@pytest.fixture(scope="module")
def healthy_patient():
    return make_patient(1, seed=11, status="healthy", size=128, n_slices=48)


def test_tissue_hu_ranges(healthy_patient):
    p = healthy_patient
    hu = p.ct.array.astype(float)
    assert hu.dtype == float and p.ct.array.dtype == np.int16
    # air around the body
    assert np.median(hu[:3, :3, :]) < -950
    # subcutaneous fat: a ring just inside the body outline
    body = hu > -500
    body = ndimage.binary_fill_holes(body[:, :, 10])
    width = max(2, int(p.params.fat_mm / p.ct.spacing[0]))
    rim = ndimage.binary_erosion(body, iterations=1) & ~ndimage.binary_erosion(body, iterations=width)
    assert -140 < np.median(hu[:, :, 10][rim]) < -50
    # lungs in the upper slices
    upper = hu[:, :, -5]
    lung = upper[(upper < -600) & ndimage.binary_fill_holes(upper > -500)]
    assert lung.size > 300 and -920 < np.median(lung) < -780
    # healthy bone like real CT (median 120-300 HU, 65-90 % above 100 HU)
    st = hu_stats(hu, p.bone)
    assert 120 <= st["bone median"] <= 300
    assert 0.65 <= st["bone >100 HU"] <= 0.92
    # soft tissue (muscle, organs): most non-bone, non-fat body voxels between -20 and 120 HU
    soft = hu[(hu > -50) & (hu < 300) & ~p.bone]
    assert 20 < np.median(soft) < 90


def test_lesions_inside_bone_and_contrast(met_patient):
    p = met_patient
    lesion = p.lesion > 0
    assert lesion.any() and len(p.lesions) >= 2
    assert not (lesion & ~p.bone).any(), "every lesion voxel must be a bone voxel"
    hu = p.ct.array.astype(float)
    for info in p.lesions:
        m = p.lesion == info.lesion_id
        assert m.any()
        ring = ndimage.binary_dilation(m, iterations=2) & p.bone & ~lesion
        around = np.median(hu[ring])
        inside = np.median(hu[m])
        if info.kind == "lytic":
            assert inside < around - 30, (info, inside, around)
            if m.sum() >= 30:  # small lesions are blurred with the cortex around them
                assert inside < 130
        elif info.kind == "blastic":
            assert inside > around + 100, (info, inside, around)
            if m.sum() >= 30:
                assert inside > 350


def test_every_lesion_type_behaves(tmp_path):
    """Force each type on one patient so that lytic and blastic are always checked."""
    from bonemet.phantom.lesions import insert_lesions

    rng = np.random.default_rng(5)
    params = draw_patient("X", "metastatic", rng)
    r = render_patient(params, size=128, n_slices=40)
    hu, labels, infos = insert_lesions(r.hu, r.bone, r.spacing, rng, 6, types=["lytic", "blastic"] * 3,
                                       site_map=r.site)
    assert len(infos) == 6
    assert not ((labels > 0) & ~r.bone).any()
    for info in infos:
        m = labels == info.lesion_id
        assert info.volume_ml > 0 and info.slice_start <= info.slice_end
        if info.kind == "lytic":
            assert hu[m].mean() < info.surrounding_bone_hu
        else:
            assert hu[m].mean() > info.surrounding_bone_hu + 200


def test_thighs_add_femoral_shafts_below_the_same_torso():
    """``thighs``: the scan runs on to mid-thigh at the same slice spacing; its torso slices are those of the scan
    without thighs, voxel for voxel, and below them two thighs each hold a femoral shaft whose thick cortex is as
    dense as real long-bone cortex (1300 HU and more, which no other phantom bone reaches) around a fatty canal that
    counts as bone (as in TotalSegmentator's femur)."""
    from bonemet.phantom.anatomy import SITE_LABEL, THIGH_REACH

    params = draw_patient("X", "healthy", np.random.default_rng(3))
    torso = render_patient(params, size=128, n_slices=40)
    both = render_patient(params, size=128, n_slices=round(40 * (1 + THIGH_REACH)), thighs=True)
    extra = both.hu.shape[2] - 40
    assert extra == 12 and np.allclose(both.spacing, torso.spacing)
    for a, b in ((torso.hu, both.hu), (torso.bone, both.bone), (torso.site, both.site)):
        assert np.array_equal(a, b[:, :, extra:])
    assert np.allclose(both.affine[:3, 3] + [0, 0, extra * both.spacing[2]], torso.affine[:3, 3])
    low = both.hu[:, :, 0]
    assert ndimage.label(low > -500)[1] == 2, "two thighs, apart at mid-thigh"
    bone = both.bone[:, :, 0]
    assert ndimage.label(bone)[1] == 2 and (both.site[:, :, 0][bone] == SITE_LABEL["long bone"]).all()
    assert (low[bone] >= 1300).sum() > 20 and (low[bone] < 0).sum() > 20, "dense cortex around a fatty canal"
    assert torso.hu[torso.bone].max() < 1300 <= low[bone].max()


def test_discs_present_and_not_bone(healthy_patient):
    p = healthy_patient
    assert p.disc.any(), "intervertebral discs must appear"
    disc_slices = np.flatnonzero(p.disc.any(axis=(0, 1)))
    assert len(disc_slices) >= 3
    hu = p.ct.array.astype(float)
    core = ndimage.binary_erosion(p.disc, structure=np.ones((3, 3, 1), bool))
    assert 40 < np.median(hu[core]) < 120, "discs are soft tissue (60-100 HU), the lytic look-alike"
    assert not (p.disc & p.bone).any()
    assert any(m["kind"] == "disc" for m in p.mimics)


def test_exports_consistent_with_masks(phantom: Path):
    """BM-Seg masks equal the volume masks slice by slice; classification labels follow the lesion mask."""
    idx = load_bmseg(phantom / "bmseg", require_patients=True)
    assert set(idx.patients) == {"P000", "P001", "P002", "P003"}
    by_name = {s.name: s for s in idx.slices}
    with open(phantom / "patients.csv", newline="") as fh:
        statuses = {r["patient"]: r["status"] for r in csv.DictReader(fh)}
    assert sorted(statuses.values()).count("metastatic") == 2
    cls = load_classification(phantom / "classification")
    cls_labels = {s.path.stem: (s.label, s.patient_label) for s in cls.slices}
    for pid, status in statuses.items():
        lesion = read_nifti(phantom / "volumes" / pid / "lesion_mask.nii.gz", dtype=np.uint8)
        bone = read_nifti(phantom / "volumes" / pid / "bone_mask.nii.gz", dtype=np.uint8)
        assert (status == "metastatic") == bool(lesion.array.any())
        for k in range(0, lesion.n_slices, 3):
            name = f"{pid}_s{k:04d}"
            _, les2d, bone2d, patient = load_seg_slice(by_name[name])
            assert patient == pid
            np.testing.assert_array_equal(les2d, lesion.axial(k) > 0)
            np.testing.assert_array_equal(bone2d, bone.axial(k) > 0)
            label, patient_label = cls_labels[name]
            assert label == int(lesion.axial(k).any())
            assert patient_label == int(status == "metastatic")
    with open(phantom / "lesions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["kind"] in ("lytic", "blastic", "mixed") for r in rows)
    assert {r["patient"] for r in rows} == {p for p, s in statuses.items() if s == "metastatic"}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix in (".csv", ".png", ".dcm") or f.name.endswith(".nii.gz"):
            h.update(f.relative_to(root).as_posix().encode())
            h.update(read_nifti(f).array.tobytes() if f.name.endswith(".nii.gz") else f.read_bytes())
    return h.hexdigest()


def test_determinism_per_seed(tmp_path):
    a = synthesize(tmp_path / "a", patients=2, seed=7, size=64, slices=16)
    b = synthesize(tmp_path / "b", patients=2, seed=7, size=64, slices=16)
    c = synthesize(tmp_path / "c", patients=2, seed=8, size=64, slices=16)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_patient_draws_follow_thesis():
    rng = np.random.default_rng(0)
    pats = [draw_patient(f"P{i}", "metastatic", rng) for i in range(300)]
    assert all(p.sex == "F" for p in pats if p.primary == "breast")
    assert all(p.sex == "M" for p in pats if p.primary == "prostate")
    lung = sum(p.primary == "lung" for p in pats) / len(pats)
    assert 0.2 < lung < 0.5  # 8 of 23 in BM-Seg
    assert 45 < np.mean([p.age for p in pats]) < 65


def test_bone_depth_on_the_bone_box_is_the_whole_volume_transform():
    """The depth map is computed on the bone's box; it must equal scipy's transform of the whole volume, with bone
    touching the volume's faces and bone far from them."""
    from scipy import ndimage

    from bonemet.phantom.lesions import bone_depth_mm

    rng = np.random.default_rng(0)
    spacing = (0.7, 0.9, 2.5)
    for trial in range(12):
        bone = np.zeros((30, 36, 14), bool)
        box = tuple(slice(int(rng.integers(0, s // 2)), int(rng.integers(s // 2, s + 1))) for s in bone.shape)
        bone[box] = rng.random(bone[box].shape) > 0.3
        expected = ndimage.distance_transform_edt(bone, sampling=spacing).astype(np.float32)
        assert np.array_equal(bone_depth_mm(bone, spacing), expected), trial
    assert not bone_depth_mm(np.zeros((4, 4, 4), bool), spacing).any()
