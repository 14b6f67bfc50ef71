"""Physical scale: slices resampled to a pixel size in mm, the field around the body, and predict's tiling back to
the scan's grid (a bone has the same size in pixels whatever the scanner's field of view)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import invoke
from bonemet.data.datasets import SegmentationDataset, resize_image
from bonemet.data.physical import (body_box, cut, physical_field, physical_shape, region_around, to_grid,
                                   union_box)
from bonemet.errors import DataError


def test_physical_shape_follows_the_spacing_of_each_axis() -> None:
    assert physical_shape((512, 512), (0.7, 0.7), 1.4) == (256, 256)
    assert physical_shape((100, 200), (2.0, 0.5), 1.0) == (200, 100)
    assert physical_shape((3, 3), (0.1, 0.1), 5.0) == (1, 1)


def _slice(n: int, pixel: float) -> torch.Tensor:
    """(3, n, n): a body disc of radius 40 mm (0.3) holding a bone disc of radius 10 mm (0.9), centred."""
    c = (np.arange(n) - (n - 1) / 2) * pixel
    r = np.hypot(*np.meshgrid(c, c, indexing="ij"))
    img = np.where(r <= 10, 0.9, np.where(r <= 40, 0.3, 0.0)).astype(np.float32)
    return torch.from_numpy(img).expand(3, -1, -1).clone()


def _bone_pixels(field: torch.Tensor) -> float:
    """The bone's area in pixels: each pixel's share of bone read from its intensity (0.3 body, 0.9 bone)."""
    return float(((field[0] - 0.3) / 0.6).clamp(0, 1).sum())


def test_a_bone_has_the_same_size_in_pixels_whatever_the_field_of_view() -> None:
    narrow, wide = _slice(512, 0.7), _slice(500, 1.0)  # 358 mm and 500 mm fields of view
    for t, pixel in ((narrow, 0.7), (wide, 1.0)):
        field, _ = physical_field(t, (pixel, pixel), 1.0, 128)
        rows, cols = torch.where(field[0] > 0.6)
        assert abs(float(rows.float().mean()) - 63.5) <= 1 and abs(float(cols.float().mean()) - 63.5) <= 1
        assert _bone_pixels(field) == pytest.approx(np.pi * 10 ** 2, rel=0.03)  # 1 mm pixels: pi r^2 in mm^2
    # the thesis' whole-slice resize: the same bone is about twice as large in pixels on the narrower field of
    # view ((500 / 358)^2 = 1.95; area pooling over windows that overlap counts the wide one's edges twice)
    thesis = [_bone_pixels(resize_image(t, 128)) for t in (narrow, wide)]
    assert 1.7 < thesis[0] / thesis[1] < 2.0


def test_cut_pads_with_zeros_and_cutting_back_restores_the_region() -> None:
    t = torch.arange(1, 1 + 6 * 8, dtype=torch.float32).reshape(1, 6, 8)
    window = cut(t, -2, 5, 4, 4)
    assert window.shape == (1, 4, 4)
    assert torch.equal(window[0, :2], torch.zeros(2, 4)) and torch.equal(window[0, 2:, 3], torch.zeros(2))
    assert torch.equal(window[0, 2:, :3], t[0, :2, 5:8])
    back = cut(window, 2, -5, 6, 8)  # the window's pixels where they came from, zero elsewhere
    assert torch.equal(back[0, :2, 5:8], t[0, :2, 5:8]) and float(back.sum()) == float(t[0, :2, 5:8].sum())


def test_the_region_holds_every_slices_body_and_at_least_one_window() -> None:
    img = torch.zeros(1, 100, 120)
    img[0, 30:50, 40:90] = 1.0
    assert body_box(img) == (30, 50, 40, 90)
    assert body_box(torch.zeros(1, 5, 5)) is None
    assert union_box([(30, 50, 40, 90), None, (20, 40, 60, 100)]) == (20, 50, 40, 100)
    assert region_around((20, 50, 40, 100), (100, 120), 32) == (19, 40, 32, 60)
    assert region_around(None, (100, 120), 32) == (0, 0, 100, 120)
    assert to_grid(torch.ones(2, 1, 10, 10), (5, 5)).shape == (2, 1, 5, 5)


def test_physical_scale_needs_each_slices_spacing(phantom: Path, tmp_path: Path) -> None:
    from bonemet.data.bmseg import load_bmseg

    rows = list(csv.DictReader(open(phantom / "bmseg" / "patients.csv", newline="")))
    ct = nib.load(phantom / "volumes" / rows[0]["patient"] / "ct.nii.gz")
    assert (float(rows[0]["row_mm"]), float(rows[0]["col_mm"])) == pytest.approx(ct.header.get_zooms()[1::-1], abs=1e-4)
    assert float(rows[0]["slice_mm"]) == pytest.approx(ct.header.get_zooms()[2], abs=1e-4)
    index = load_bmseg(phantom / "bmseg")
    assert index.slices[0].pixel_mm == pytest.approx((400 / 128, 400 / 128))
    bare = [s.__class__(s.name, s.image, s.lesion, s.bone, s.patient) for s in index.slices[:2]]
    with pytest.raises(DataError, match="no pixel spacing for this slice, which physical scale"):
        SegmentationDataset(bare, 64, pixel_mm=2.0)
    # the slice with the largest lesion, at half its resolution: the lesion keeps its area in mm^2
    from bonemet.data.images import read_mask

    s = max(index.slices, key=lambda s: int(read_mask(s.lesion).sum()))
    sample = SegmentationDataset([s], 64, pixel_mm=400 / 64)[0]
    assert sample["image"].shape == (3, 64, 64) and sample["lesion"].shape == sample["bone"].shape == (1, 64, 64)
    truth_mm2 = int(read_mask(s.lesion).sum()) * (400 / 128) ** 2
    assert truth_mm2 > 500 and float(sample["lesion"].sum()) * (400 / 64) ** 2 == pytest.approx(truth_mm2, rel=0.2)


def test_a_bad_spacing_in_patients_csv_is_one_problem(tmp_path: Path) -> None:
    from bonemet.data.bmseg import scan_bmseg
    from bonemet.data.images import write_image

    for d in ("image", "lesion mask"):
        write_image(tmp_path / d / "a.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "patients.csv").write_text("file,patient,row_mm,col_mm\na.png,P1,0.8,x\n")
    problems = [p.message for p in scan_bmseg(tmp_path).problems]
    assert "row a.png: row_mm,col_mm must be pixel sizes in mm, got '0.8','x'" in problems


def test_neighbouring_slices_lie_about_the_same_distance_away_whatever_the_slice_spacing() -> None:
    from bonemet.data.physical import context_neighbours, context_step

    # 10 mm at the real series' slice spacings and the phantom's: 10, 9, 8.5, 10, 8 and 22.7 mm away
    assert [context_step(10, s) for s in (2, 3, 4.25, 5, 8, 22.7)] == [5, 3, 2, 2, 1, 1]
    assert context_neighbours(0, range(10), 3) == (0, 0, 3)  # the first slice is its own neighbour below
    assert context_neighbours(8, range(10), 3) == (5, 8, 9)
    assert context_neighbours(5, [0, 1, 2, 3, 5, 8, 9], 2) == (3, 5, 8)  # a gap: the slice nearest to 7


def _series(root: Path, patient: str, slice_mm: float, levels: list[int]) -> Path:
    """A flat BM-Seg root of one series as ``data synth`` names it: slices PATIENT_s0000... of 16 x 16 pixels, slice k
    of one grey level, at ``slice_mm``."""
    from bonemet.data.images import write_image

    lines = ["file,patient,slice,row_mm,col_mm,slice_mm"]
    for k, level in enumerate(levels):
        name = f"{patient}_s{k:04d}.png"
        write_image(root / "image" / name, np.full((16, 16), level, np.uint8))
        write_image(root / "lesion mask" / name, np.zeros((16, 16), np.uint8))
        lines.append(f"{name},{patient},{k},1.0,1.0,{slice_mm}")
    (root / "patients.csv").write_text("\n".join(lines) + "\n")
    return root


def test_a_slices_input_holds_its_neighbours_of_its_own_series(tmp_path: Path) -> None:
    """Two copies of one patient with the same file names, merged as the default model's recipe merges them (a
    prefix each, one patient): a slice's neighbours come from its own copy only, about ``context_mm`` away at that
    copy's slice spacing, the end slice repeated past either end."""
    from bonemet.data.bmseg import merge_bmseg, scan_bmseg

    copies = [(_series(tmp_path / "c0", "B0", 2.5, [10, 20, 30, 40, 50, 60]), "copy0", "B0"),
              (_series(tmp_path / "c1", "B0", 5.0, [100, 110, 120]), "copy1", "B0")]
    merged = merge_bmseg(copies, tmp_path / "merged", {"window": "bone"})
    slices = {s.name: s for s in scan_bmseg(merged).slices}
    assert slices["copy0_B0_s0001"].slice_mm == 2.5 and slices["copy1_B0_s0000"].slice_mm == 5.0
    picked = [slices[n] for n in ("copy0_B0_s0001", "copy0_B0_s0004", "copy1_B0_s0001", "copy1_B0_s0002")]
    ds = SegmentationDataset(picked, 16, context_mm=5.0)  # 2 slices at 2.5 mm, 1 at 5 mm
    levels = [[round(float(ds[i]["image"][c].mean()) * 255) for c in range(3)] for i in range(len(ds))]
    assert levels == [[10, 20, 40], [30, 50, 60], [100, 110, 120], [110, 120, 120]]
    assert ds[0]["lesion"].shape == (1, 16, 16)
    assert SegmentationDataset(picked, 16)[0]["image"].shape == (3, 16, 16)  # without context: the slice alone
    bare = [s.__class__(s.name, s.image, s.lesion, s.bone, s.patient) for s in picked]
    with pytest.raises(DataError, match="neighbouring slices as context need slices named PATIENT_sNNNN with their "
                                        "slice spacing in patients.csv's column slice_mm"):
        SegmentationDataset(bare, 16, context_mm=5.0)


@pytest.fixture(scope="module")
def physical_run(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two folds of 1 epoch at 6.25 mm pixels (half the phantom's resolution), a 32 px (200 mm) field: the
    phantom's body is wider, so predict tiles it with several windows."""
    run = tmp_path_factory.mktemp("physical") / "run"
    r = invoke("seg", "train", "--data", phantom / "bmseg", "--folds", "2", "--test-patients", "0.25", "--epochs", "1",
               "--size", "32", "--width", "4", "--pixel-mm", "6.25", "--out", run)
    assert r.returncode == 0, r.stderr
    return run


def test_physical_run_predicts_the_same_anatomy_alike_on_a_wider_field_of_view(phantom: Path, physical_run: Path,
                                                                               tmp_path: Path) -> None:
    import bonemet

    cfg = json.loads((physical_run / "config.json").read_text())
    assert cfg["pixel_mm"] == 6.25 and cfg["preprocessing"]["scale"].startswith("physical: 6.25 mm pixels, a 200 mm")
    img = nib.load(phantom / "volumes" / "P001" / "ct.nii.gz")
    hu = np.asanyarray(img.dataobj)
    wide = np.full((hu.shape[0] + 64, hu.shape[1] + 64, hu.shape[2]), -1000, hu.dtype)  # 32 voxels of air each side
    wide[32:-32, 32:-32] = hu
    affine = img.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([32, 32, 0])
    a = bonemet.predict(img, seg=physical_run, device="cpu", probabilities=True)
    b = bonemet.predict(wide, affine=affine, seg=physical_run, device="cpu", probabilities=True)
    pa, pb = a.lesion_probability.astype(np.float32), b.lesion_probability.astype(np.float32)
    assert pb.shape == wide.shape  # the canonical grid of each input (the padding is symmetric: flips keep it)
    assert float(np.abs(pb[32:-32, 32:-32] - pa).max()) < 2e-3  # float16 storage
    assert float(pb[:32].max()) < 0.5 and np.array_equal(b.lesion_mask[32:-32, 32:-32], a.lesion_mask)


class _Identity(torch.nn.Module):
    """A "model" whose lesion and bone probabilities are its input's first channel."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = torch.logit(x[:, :1].clamp(1e-4, 1 - 1e-4))
        return logit, logit


def test_tiling_puts_every_window_back_where_it_came_from(phantom: Path, physical_run: Path) -> None:
    """A model that returns its input, tiled at 6.25 mm over a 3.125 mm scan, gives each slice resampled there and
    back: the windows, their blending and the way back to the scan's grid add nothing and move nothing."""
    from bonemet.data.datasets import image_to_tensor
    from bonemet.inference.runners import SegRunner
    from bonemet.inference.scan import read_scan

    scan = read_scan(phantom / "volumes" / "P001" / "ct.nii.gz")
    runner = SegRunner(physical_run, paths=())
    runner.models = [_Identity()]
    lesion, bone = runner.predict(scan)
    assert np.array_equal(lesion, bone)
    for k in (0, scan.n_slices // 2):
        img = image_to_tensor(scan.model_slice(k, "bone"), 3)[:1]
        expected = to_grid(to_grid(img, (64, 64)), (128, 128))[0].clamp(1e-4, 1 - 1e-4).numpy()
        assert float(np.abs(lesion[k].astype(np.float32) - expected).max()) < 0.03  # 0 beyond the region


class _Neighbours(torch.nn.Module):
    """A "model" whose lesion probability is its input's first channel and whose bone probability is its last."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.logit(x[:, c:c + 1].clamp(1e-4, 1 - 1e-4)) for c in (0, 2))


def test_predict_gives_a_context_model_the_slices_it_trained_with(phantom: Path, tmp_path: Path) -> None:
    """``seg train --context-mm``: the run records it, and predict feeds each slice with the slices that far below
    and above (the first slice as its own neighbour below), as training did."""
    from bonemet.data.datasets import image_to_tensor
    from bonemet.inference.runners import SegRunner
    from bonemet.inference.scan import read_scan

    run = tmp_path / "run"
    r = invoke("seg", "train", "--data", phantom / "bmseg", "--folds", "2", "--test-patients", "0.25", "--epochs", "1",
               "--size", "32", "--width", "4", "--pixel-mm", "6.25", "--context-mm", "30", "--out", run)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["context_mm"] == 30.0  # and predict's summary says it, from the run's preprocessing
    assert cfg["preprocessing"]["context"] == ("the slices about 30 mm below and above as the first and last "
                                               "channels, in grey")
    scan = read_scan(phantom / "volumes" / "P001" / "ct.nii.gz")
    step = round(30 / scan.volume.spacing[2])  # 13.2 mm slices: 2
    assert step >= 2
    runner = SegRunner(run, paths=())
    runner.models = [_Neighbours()]
    lesion, bone = runner.predict(scan)
    for k, below, above in ((0, 0, step), (scan.n_slices // 2, scan.n_slices // 2 - step, scan.n_slices // 2 + step)):
        for probs, j in ((lesion, below), (bone, above)):
            img = image_to_tensor(scan.model_slice(j, "bone"), 1)
            expected = to_grid(to_grid(img, (64, 64)), (128, 128))[0].clamp(1e-4, 1 - 1e-4).numpy()
            assert float(np.abs(probs[k].astype(np.float32) - expected).max()) < 0.03
    r = invoke("seg", "train", "--data", phantom / "bmseg", "--epochs", "1", "--context-mm", "30",
               "--out", tmp_path / "thesis-scale")
    assert r.returncode == 2 and "context_mm) need physical scale (pixel_mm) and 3 channels" in r.stderr
    assert not (tmp_path / "thesis-scale").exists()


def test_physical_run_refuses_image_slices_and_native_size_scoring(phantom: Path, physical_run: Path,
                                                                   tmp_path: Path) -> None:
    from bonemet.data.images import write_image

    for k in range(3):
        write_image(tmp_path / "pngs" / f"s{k}.png", np.full((64, 64), 40 * k, np.uint8))
    r = invoke("predict", tmp_path / "pngs", "--seg", physical_run, "--out", tmp_path / "out")
    assert r.returncode == 2 and not (tmp_path / "out").exists()
    assert r.stderr.strip() == (
        f"error: {tmp_path / 'pngs'}: these models work at physical scale (a pixel size in mm) and need the scan's "
        "pixel spacing: give a DICOM series or a NIfTI volume, not image slices")
    r = invoke("seg", "evaluate", physical_run, "--native-size")
    assert r.returncode == 2 and "this run works at physical scale" in r.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine (runs where one is)")
def test_physical_run_predicts_on_the_gpu_as_on_the_cpu(phantom: Path, physical_run: Path) -> None:
    import bonemet

    path = phantom / "volumes" / "P001" / "ct.nii.gz"
    cpu = bonemet.predict(path, seg=physical_run, device="cpu", paths=(), probabilities=True)
    gpu = bonemet.predict(path, seg=physical_run, device="cuda", paths=(), probabilities=True)
    diff = np.abs(gpu.lesion_probability.astype(np.float32) - cpu.lesion_probability.astype(np.float32))
    assert float(diff.max()) < 1e-3  # TF32 convolutions on the GPU
