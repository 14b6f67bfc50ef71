"""The bone mask predict reports (``bonemet.inference.bone``) and the fast exact morphology it rests on."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

import bonemet
from bonemet.data.bone import _ball, dilate, fill_holes_slices
from bonemet.data.ct import read_volume
from bonemet.data.volume import Volume
from bonemet.inference.bone import CUT, refine_bone
from conftest import invoke


@pytest.mark.parametrize("seed", range(12))
def test_dilate_and_fill_holes_equal_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(3, 24, 3))
    mask = rng.random(shape) < [0.01, 0.1, 0.5, 0.8][seed % 4]
    footprint = _ball(tuple(rng.uniform(0.5, 3.0, 3)), float(rng.uniform(0.5, 5.0)))
    assert (dilate(mask, footprint) == ndi.binary_dilation(mask, footprint)).all()
    by_slice = np.stack([ndi.binary_fill_holes(mask[:, :, k]) for k in range(shape[2])], axis=2)
    assert (fill_holes_slices(mask) == by_slice).all()


def _torso() -> tuple[Volume, np.ndarray, dict[str, np.ndarray]]:
    """Air; a body of 40 HU soft tissue (radius 60 mm) holding a 'vertebra' (800 HU cortex ring, radii 6-9 mm,
    around 60 HU marrow) and a 'rib' (800 HU disc of radius 4 mm); a 'table' below the body (300 HU, no dense voxel,
    apart from the body). 1 mm pixels, 5 slices of 2 mm. The network's bone probability: the cortex and a 2 mm rim of
    soft tissue around it at 0.9, the marrow at 0.2 (missed), the table at 0.8, the rib at 0.1 (missed)."""
    n = 160
    y, x = np.mgrid[:n, :n] + 0.5
    r_body, r_v, r_rib = np.hypot(x - 80, y - 70), np.hypot(x - 80, y - 90), np.hypot(x - 50, y - 60)
    parts = {"body": r_body <= 60, "cortex": (r_v <= 9) & (r_v > 6), "marrow": r_v <= 6,
             "rim": (r_v > 9) & (r_v <= 11), "rib": r_rib <= 4, "table": (y >= 140) & (y < 146) & (x > 20) & (x < 140)}
    hu = np.full((n, n), -1000.0)
    hu[parts["body"]] = 40.0
    hu[parts["marrow"]] = 60.0
    hu[parts["cortex"] | parts["rib"]] = 800.0
    hu[parts["table"]] = 300.0
    prob = np.zeros((n, n), np.float32)
    prob[parts["cortex"] | parts["rim"]] = 0.9
    prob[parts["marrow"]] = 0.2
    prob[parts["table"]] = 0.8
    prob[parts["rib"]] = 0.1
    vol = Volume(np.repeat(hu[:, :, None], 5, axis=2).astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))
    return vol, np.repeat(prob[:, :, None], 5, axis=2), parts


def test_refine_bone_keeps_bone_and_drops_rim_and_table() -> None:
    vol, prob, parts = _torso()
    bone = refine_bone(prob, vol)[:, :, 2]
    raw = (prob >= 0.5)[:, :, 2]
    assert raw[parts["rim"]].all() and raw[parts["table"]].all() and not raw[parts["marrow"]].any()
    assert bone[parts["cortex"]].all(), "the cortex the network found"
    assert bone[parts["marrow"]].all(), "marrow inside the ring (28 mm2 of hole) is filled"
    assert not bone[parts["rim"]].any(), "the 40 HU rim around the cortex is below the 100 HU floor"
    assert not bone[parts["table"]].any(), "the table lies outside every body component that holds sure bone"
    # the rib is sure bone by HU (0.05 mL of 800 HU), though the network missed it: all of it but the partial-volume
    # rim that the HU rule erodes
    assert bone[parts["rib"] & (ndi.distance_transform_edt(parts["rib"]) > 2)].all()
    assert not bone[~parts["body"]].any()


def test_refine_bone_fills_small_holes_only_and_cuts_at_cut() -> None:
    vol, prob, parts = _torso()
    y, x = np.mgrid[:160, :160] + 0.5
    r_small, r_large = np.hypot(x - 110, y - 60), np.hypot(x - 110, y - 100)
    small, large = (r_small > 4) & (r_small <= 6), (r_large > 8) & (r_large <= 10)  # 200 HU rings: no sure bone
    for ring in (small, large):
        vol.array[ring] = 200.0
        prob[ring] = CUT  # at the cut: kept
    bone = refine_bone(prob, vol)[:, :, 2]
    assert bone[small].all() and bone[large].all()
    assert bone[r_small <= 4].all(), "a hole of 50 mm2 is filled"
    assert not bone[r_large <= 8].any(), "a hole of 200 mm2 (more than HOLE_MM2) is not"
    prob[small] = CUT - 0.01
    assert not refine_bone(prob, vol)[:, :, 2][small].any()


def test_predict_reports_the_refined_bone_mask_and_raw_bone_gives_the_output(phantom, seg_run, tmp_path) -> None:
    scan = phantom / "volumes" / "P001" / "ct.nii.gz"
    refined = bonemet.predict(nib.load(scan), seg=seg_run, probabilities=True, device="cpu")
    raw = bonemet.predict(nib.load(scan), seg=seg_run, probabilities=True, device="cpu", refine_bone=False)
    assert np.array_equal(raw.bone_probability, refined.bone_probability)
    assert np.array_equal(raw.bone_mask, raw.bone_probability >= 0.5)
    assert np.array_equal(refined.bone_mask, refine_bone(refined.bone_probability, read_volume(scan)))
    assert not np.array_equal(refined.bone_mask, raw.bone_mask)
    assert refined.summary["options"]["bone mask"].startswith(f"the bone output at {CUT:g}, inside the body")
    r = invoke("predict", scan, "--seg", seg_run, "--out", tmp_path / "out", "--no-viewer", "--raw-bone")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["options"]["bone mask"] == "the bone output at the threshold, 0.5 (--raw-bone)"
    written = np.asarray(nib.load(tmp_path / "out" / "bone_mask.nii.gz").dataobj) > 0
    assert np.array_equal(written, raw.native_masks()["bone"][0] > 0)


def test_without_sure_bone_predict_falls_back_to_the_output_and_says_so(phantom, seg_run) -> None:
    vol, prob, parts = _torso()
    vol.array[vol.array > 500] = 500.0  # no cortex of 600 HU: the body rule would keep nothing
    assert refine_bone(prob, vol) is None
    img = nib.load(phantom / "volumes" / "P001" / "ct.nii.gz")
    soft = nib.Nifti1Image(np.minimum(np.asarray(img.dataobj), 500).astype(np.int16), img.affine)
    pred = bonemet.predict(soft, seg=seg_run, probabilities=True, device="cpu")
    assert pred.bone_mask is not None and np.array_equal(pred.bone_mask, pred.bone_probability >= 0.5)
    assert pred.summary["options"]["bone mask"].startswith("the bone output at the threshold, 0.5: no bone dense")
    assert any("no bone dense enough" in w for w in pred.summary["warnings"])
