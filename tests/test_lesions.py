"""Lesions from a predicted mask: known answers, and the same answers however the lesion is chunked."""

from __future__ import annotations

import numpy as np
import pytest

import bonemet.inference.lesions as lesions_module
from bonemet.inference.lesions import find_lesions


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A bone slab of 300 HU in soft tissue, a blastic 6x6x6 cube (900 HU) and a lytic 4x4x10 bar (-50 HU) in it,
    and a 2-voxel speck; probabilities 0.8 / 0.6 / 0.9 on them."""
    hu = np.full((40, 40, 30), 40, np.int16)
    bone = np.zeros(hu.shape, bool)
    bone[5:35, 5:35, 2:28] = True
    hu[bone] = 300
    mask = np.zeros(hu.shape, bool)
    prob = np.zeros(hu.shape, np.float16)
    mask[10:16, 10:16, 5:11] = True
    hu[10:16, 10:16, 5:11] = 900
    prob[10:16, 10:16, 5:11] = 0.8
    mask[22:26, 22:26, 8:18] = True
    hu[22:26, 22:26, 8:18] = -50
    prob[22:26, 22:26, 8:18] = 0.6
    mask[30, 30, 20:22] = True
    prob[30, 30, 20:22] = 0.9
    return mask, prob, hu, bone


def test_known_answers():
    mask, prob, hu, bone = _scene()
    found, kept = find_lesions(mask, prob, hu, bone, (0.5, 0.5, 2.0), min_voxels=10, min_volume_ml=0)
    assert [les.voxels for les in found] == [216, 160]  # largest first; the speck is noise
    cube, bar = found
    assert cube.volume_ml == pytest.approx(216 * 0.5 / 1000) and cube.mean_hu == 900 and cube.max_hu == 900
    assert cube.surrounding_bone_hu == 300 and cube.type == "blastic"
    assert bar.type == "lytic" and bar.mean_hu == -50 and bar.surrounding_bone_hu == 300
    assert (cube.slice_start, cube.slice_end, bar.slice_start, bar.slice_end) == (6, 11, 9, 18)
    assert cube.centroid_voxel == (12, 12, 8)  # centre (12.5, 12.5, 7.5), rounded half to even
    assert cube.mean_probability == pytest.approx(0.8, abs=1e-3)
    assert cube.diameter_mm == round(np.hypot(2.5, 2.5) + 0.5, 1)  # the corner-to-corner diagonal
    assert set(np.unique(kept)) == {0, 1, 2} and (kept == 1).sum() == 216 and not kept[30, 30, 20]
    # a sheared grid: the volume comes from the true voxel volume
    found, _ = find_lesions(mask, prob, hu, bone, (0.5, 0.5, 2.0), min_voxels=10, min_volume_ml=0, voxel_mm3=0.25)
    assert found[0].volume_ml == pytest.approx(216 * 0.25 / 1000)


def test_chunks_give_the_whole_lesion_answers(phantom, monkeypatch):
    """Lesions measured a few slices at a time equal those measured in one piece, on phantom lesions with noise."""
    from bonemet.data.volume import read_nifti
    from test_predict import _metastatic_patient

    patient = phantom / "volumes" / _metastatic_patient(phantom)
    ct = read_nifti(patient / "ct.nii.gz", dtype=None)
    truth = read_nifti(patient / "lesion_mask.nii.gz").array > 0
    bone = read_nifti(patient / "bone_mask.nii.gz").array > 0
    rng = np.random.default_rng(0)
    noisy = truth ^ (rng.random(truth.shape) < 0.002)
    prob = rng.random(truth.shape).astype(np.float16)
    assert truth.any()
    answers = []
    for chunk in (10**6, 2, 5):
        monkeypatch.setattr(lesions_module, "CHUNK", chunk)
        found, kept = find_lesions(noisy, prob, ct.array, bone, ct.spacing, min_voxels=3, min_volume_ml=0)
        answers.append(([les.as_row() for les in found], kept))
    assert len(answers[0][0]) >= 2
    for rows, kept in answers[1:]:
        assert rows == answers[0][0] and np.array_equal(kept, answers[0][1])


def test_match_truth_counts_found_missed_and_false_lesions():
    from bonemet.inference.lesions import match_truth

    truth = np.zeros((20, 20, 10), bool)
    truth[2:5, 2:5, 2:5] = True  # true lesion A
    truth[12:15, 12:15, 2:5] = True  # true lesion B, missed
    mask = np.zeros(truth.shape, bool)
    mask[3:7, 3:7, 3:6] = True  # overlaps A: 8 of its 48 voxels, so not localised
    mask[2:6, 14:18, 6:9] = True  # overlaps nothing
    prob = mask.astype(np.float16)
    found, kept = find_lesions(mask, prob, None, None, None, min_voxels=1)
    m = match_truth(found, kept, truth)
    assert m == {"true_lesions": 2, "found": 1, "lesion_recall": 0.5, "found_localised": 0, "localised_recall": 0.0,
                 "false_positive_lesions": 1, "off_target_lesions": 2, "predicted_lesions": 2}


def test_a_large_finding_that_only_touches_a_lesion_finds_it_but_is_not_localised():
    """Lesion A marked by a component twice its size (half of it in A: localised); lesion B touched by a long
    stretch of which B is a tenth (found by overlap, not localised, off target); lesion C marked by a component of
    exactly the cut's share (localised); no component overlaps nothing."""
    from bonemet.evaluation.metrics import lesions_found
    from bonemet.inference.lesions import match_truth

    truth = np.zeros((40, 40, 40), bool)
    truth[2:6, 2:6, 2:6] = True  # A: 64 voxels
    truth[20:22, 20:22, 20:25] = True  # B: 20 voxels
    truth[30:32, 2:4, 30:32] = True  # C: 8 voxels
    mask = np.zeros(truth.shape, bool)
    mask[2:6, 2:6, 2:10] = True  # 128 voxels, 64 in A
    mask[20:22, 20:22, 20:40] = True  # 80 voxels, 20 in B ...
    mask[20:22, 22:24, 20:40] = True  # ... and 80 beside: 160 voxels, 20 in B (1/8)
    mask[30:32, 2:10, 30:32] = True  # 32 voxels, 8 in C (exactly 1/4)
    found, kept = find_lesions(mask, mask.astype(np.float16), None, None, None, min_voxels=1)
    m = match_truth(found, kept, truth)
    assert (m["found"], m["found_localised"], m["false_positive_lesions"], m["off_target_lesions"]) == (3, 2, 0, 1)
    assert m["localised_recall"] == pytest.approx(2 / 3)
    tlab = np.zeros(truth.shape, np.int16)
    tlab[2:6, 2:6, 2:6], tlab[20:22, 20:22, 20:25], tlab[30:32, 2:4, 30:32] = 7, 8, 9
    hit, localised, off_target = lesions_found(kept, tlab, {les.id: les.voxels for les in found})
    stretch = next(les.id for les in found if les.voxels == 160)
    assert (hit, localised, off_target) == ({7, 8, 9}, {7, 9}, {stretch})


def test_rough_site_on_a_drawn_body():
    """A round body (40 HU) in air, a vertebra behind its centre on every slice, a wide bony ring (the pelvis)
    on the lower slices: each place gets its site."""
    from bonemet.inference.lesions import rough_site

    n = 20
    i, j = np.meshgrid(np.arange(100), np.arange(100), indexing="ij")
    body = (i - 50) ** 2 + (j - 50) ** 2 <= 40 ** 2
    hu = np.where(body[:, :, None], 40, -1000).repeat(n, axis=2).astype(np.int16)
    bone = np.zeros(hu.shape, bool)
    bone[46:55, 70:79, :] = True  # a vertebral body, midline and posterior (LPS: j runs to posterior)
    bone[15:86, 60:64, :7] = True  # the pelvic ring's width on the lower slices
    hu[bone] = 400
    assert rough_site((50.0, 74.0, 15.0), bone, hu) == "spine"
    assert rough_site((13.0, 50.0, 15.0), bone, hu) == "rib"  # at the body's edge
    assert rough_site((50.0, 30.0, 15.0), bone, hu) == "other"  # anterior, deep inside
    assert rough_site((50.0, 62.0, 3.0), bone, hu) == "pelvis"
    assert rough_site((50.0, 74.0, 15.0), None, hu) == "spine"  # bone from HU > 150 when no mask is given


def test_bone_gate_keeps_lesions_within_the_margin_of_bone_only() -> None:
    """Three cubes: in the bone, 4 mm from it, 10 mm from it (1 x 1 x 2 mm voxels): a 3 mm margin keeps the first,
    a 5 mm margin the first two, no gate all three."""
    bone = np.zeros((60, 30, 10), bool)
    bone[:20, :, :] = True  # bone up to i = 19
    mask = np.zeros(bone.shape, bool)
    mask[10:14, 10:14, 3:6] = True  # inside
    mask[23:27, 10:14, 3:6] = True  # nearest voxel i = 23: 4 mm from bone at i = 19
    mask[29:33, 20:24, 3:6] = True  # i = 29: 10 mm away
    prob = mask.astype(np.float16)
    counts = {}
    for margin in (None, 3.0, 5.0, 0.0):
        stats: dict = {}
        found, kept = find_lesions(mask, prob, None, bone, (1.0, 1.0, 2.0), min_voxels=1, min_volume_ml=0,
                                   bone_margin_mm=margin, stats=stats)
        counts[margin] = (len(found), stats.get("off_bone"))
        if margin == 5.0:
            assert kept[24, 11, 4] > 0 and kept[30, 21, 4] == 0
    assert counts == {None: (3, 0), 3.0: (1, 2), 5.0: (2, 1), 0.0: (1, 2)}
    # the margin is in mm: with 2 mm pixels the cube 4 voxels away is 8 mm away
    found, _ = find_lesions(mask, prob, None, bone, (2.0, 2.0, 2.0), min_voxels=1, min_volume_ml=0, bone_margin_mm=5)
    assert len(found) == 1


def test_metal_rule_drops_components_whose_mean_hu_is_metal() -> None:
    """Three cubes in bone: a blastic one (mean 1200 HU), a metal one (3000 HU), one whose mean is exactly the
    limit (2000 HU, half 1000 and half 3000); the rule drops the last two and counts them, off keeps all three,
    and without HU nothing can be judged."""
    shape = (40, 20, 8)
    bone = np.ones(shape, bool)
    hu = np.full(shape, 300.0, np.float32)
    mask = np.zeros(shape, bool)
    mask[2:6, 2:6, 2:6] = True
    hu[2:6, 2:6, 2:6] = 1200.0
    mask[12:16, 2:6, 2:6] = True
    hu[12:16, 2:6, 2:6] = 3000.0
    mask[24:28, 2:6, 2:6] = True
    hu[24:26, 2:6, 2:6], hu[26:28, 2:6, 2:6] = 1000.0, 3000.0
    prob = mask.astype(np.float16)
    spacing = (1.0, 1.0, 1.0)
    results = {}
    for limit in (None, 2000.0, 3001.0):
        stats: dict = {}
        found, kept = find_lesions(mask, prob, hu, bone, spacing, min_voxels=1, min_volume_ml=0, stats=stats,
                                   max_mean_hu=limit)
        results[limit] = (sorted(les.mean_hu for les in found), stats["metal"])
        if limit == 2000.0:
            assert kept[3, 3, 3] > 0 and kept[13, 3, 3] == 0 and kept[25, 3, 3] == 0
    every = [1200.0, 2000.0, 3000.0]
    assert results == {None: (every, 0), 2000.0: ([1200.0], 2), 3001.0: (every, 0)}
    found, _ = find_lesions(mask, prob, None, bone, spacing, min_voxels=1, min_volume_ml=0, max_mean_hu=2000.0)
    assert len(found) == 3


def test_symmetry_rule_drops_a_component_whose_mirror_image_matches_it() -> None:
    """A body symmetric about column 35 (not the array's middle): two dense cubes mirror each other (normal
    anatomy), one has no match on the other side (a lesion), one straddles the midline (no other side to compare
    with). The midline is found from the dense voxels; the rule drops the matched pair, counts them, keeps the
    others; with the pair shifted 2 mm from the exact mirror position they still match; off, all four stay."""
    from bonemet.inference.lesions import sagittal_midline

    shape = (80, 40, 8)
    hu = np.full(shape, 40.0, np.float32)
    hu[5:66, 30:34, :] = 600.0  # a dense plate, symmetric about column 35: it places the midline
    mask = np.zeros(shape, bool)
    for cols in (slice(20, 24), slice(47, 51)):  # mirror images: 35 * 2 - 23 = 47 ... 35 * 2 - 20 = 50
        mask[cols, 5:9, 2:6] = True
        hu[cols, 5:9, 2:6] = 900.0
    mask[10:14, 15:19, 2:6] = True  # no match: its mirror (56-59) is soft tissue
    hu[10:14, 15:19, 2:6] = 800.0
    mask[33:38, 15:19, 2:6] = True  # across the midline
    hu[33:38, 15:19, 2:6] = 700.0
    assert sagittal_midline(hu) == 70
    prob = mask.astype(np.float16)
    bone, spacing = np.ones(shape, bool), (1.0, 1.0, 1.0)
    kept_hu = {}
    for rule in (None, 25.0):
        stats: dict = {}
        found, _ = find_lesions(mask, prob, hu, bone, spacing, min_voxels=1, min_volume_ml=0, stats=stats,
                                symmetry_hu=rule)
        kept_hu[rule] = (sorted(les.mean_hu for les in found), stats["symmetric"])
    assert kept_hu == {None: ([700.0, 800.0, 900.0, 900.0], 0), 25.0: ([700.0, 800.0], 2)}
    moved = mask.copy(), hu.copy()
    moved[0][47:51, 5:9, 2:6], moved[1][47:51, 5:9, 2:6] = False, 40.0
    moved[0][47:51, 7:11, 2:6], moved[1][47:51, 7:11, 2:6] = True, 900.0  # 2 mm from the exact mirror position
    found, _ = find_lesions(moved[0], moved[0].astype(np.float16), moved[1], bone, spacing, min_voxels=1,
                            min_volume_ml=0, symmetry_hu=25.0)
    assert sorted(les.mean_hu for les in found) == [700.0, 800.0]


def test_contrast_rule_drops_a_component_as_dense_as_the_bone_around_it() -> None:
    """Marrow of 200 HU holds three components: one of the marrow's own 200 HU (normal bone called a lesion), a
    lytic one of 60 HU and a blastic one of 700 HU; a fourth of 210 HU lies in soft tissue, with no bone around it.
    At 30 HU the rule drops the first (its mean equals the median of the bone around it), counts it, and keeps the
    lytic and blastic ones and the one it cannot judge; at 150 HU the lytic one (140 HU below) goes too; off, all
    four stay."""
    shape = (60, 30, 8)
    hu = np.full(shape, 40.0, np.float32)
    bone = np.zeros(shape, bool)
    bone[:40, 5:25, :] = True
    hu[bone] = 200.0
    mask = np.zeros(shape, bool)
    for cols, value in ((slice(4, 8), 200.0), (slice(16, 20), 60.0), (slice(28, 32), 700.0), (slice(50, 54), 210.0)):
        mask[cols, 12:16, 2:6] = True
        hu[cols, 12:16, 2:6] = value
    prob = mask.astype(np.float16)
    kept = {}
    for rule in (None, 30.0, 150.0):
        stats: dict = {}
        found, _ = find_lesions(mask, prob, hu, bone, (1.0, 1.0, 1.0), min_voxels=1, min_volume_ml=0, stats=stats,
                                bone_margin_mm=None, min_contrast_hu=rule)
        kept[rule] = (sorted(les.mean_hu for les in found), stats["faint"])
        assert all(les.surrounding_bone_hu == 200.0 for les in found if les.mean_hu != 210.0)
    assert kept == {None: ([60.0, 200.0, 210.0, 700.0], 0), 30.0: ([60.0, 210.0, 700.0], 1),
                    150.0: ([210.0, 700.0], 2)}
