"""``bonemet predict``: one scan in, masks, a lesion list, slice probabilities, a verdict and a report out.

Everything is written into a temporary folder beside OUT and moved into place at the end, so OUT is
either complete or absent.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import __version__
from ..data.images import write_image
from ..data.volume import NON_FINITE_FILL, read_mask_like, save_nifti
from ..errors import BonemetError
from ..fileio import atomic_dir, check_output, write_csv, write_json
from ..log import console, logger
from ..reporting.report import write_report
from .bone import IN_WORDS as BONE_RULES
from .bone import NO_SURE_BONE, refine_bone
from .lesions import MIRROR_SHIFT_MM, find_lesions, match_truth
from .runners import ClsRunner, SegRunner
from .scan import Scan, read_scan

TOP_K_SLICES = 3


@dataclass
class PredictOptions:
    """What ``bonemet predict`` does besides its input and output."""

    seg: Path | None = None  # None: the bundled default model (runs.bundled.default_model)
    cls: Path | None = None
    threshold: float = 0.5
    batch_size: int | None = None  # None: fast.auto_batch
    window: str | None = None
    probabilities: bool = False
    include_phi: bool = False
    truth: Path | None = None
    bone_truth: Path | None = None
    min_volume_ml: float = 0.05
    min_voxels: int = 10
    dicom_seg: bool = True
    overwrite: bool = False
    paths: tuple[str, ...] | None = None  # None = the default fast path
    series_uid: str | None = None  # the series to read from a folder that holds several
    device: str = "auto"
    bone_margin_mm: float | None = 3.0  # a lesion must come this close to the predicted bone (None: no such rule)
    max_mean_hu: float | None = 2000.0  # a lesion this dense on average is metal, not bone (None: no such rule)
    symmetry_hu: float | None = None  # a lesion this close in HU to its mirror image is normal anatomy (None: off)
    min_contrast_hu: float | None = None  # a lesion this close in HU to the bone around it is not seen (None: off)
    refine_bone: bool = True  # the bone mask by inference.bone's HU rules (False: the bone output at threshold)
    tta: bool = False  # also run every model on the left-right mirrored slices and average
    viewer: bool = True  # the interactive viewer in report.html
    viewer_max_mb: float = 64.0  # embedded images above which the report keeps still images only

    def __post_init__(self) -> None:
        if self.seg is None:
            from ..runs.bundled import default_model

            self.seg = default_model()  # checked against its SHA-256 manifest


@dataclass
class Prediction:
    """What the pipeline found in one scan, in memory: the summary (``summary.json``), the lesions, and the
    masks on the scan's canonical (i, j, k) grid (``axial(k) = mask[:, :, k].T``; ``native_masks`` gives them
    in the input's own axis order with its affine)."""

    summary: dict
    lesions: list
    lesion_mask: np.ndarray  # bool
    bone_mask: np.ndarray | None
    scan: Scan
    lesion_probability: np.ndarray | None = None  # float16, with ``probabilities``
    bone_probability: np.ndarray | None = None
    slice_rows: list[dict] | None = None
    labels: np.ndarray | None = None  # lesion ids per voxel (0 = none)

    @property
    def verdict(self) -> str:
        return self.summary["verdict"]

    @property
    def probability(self) -> float:
        return self.summary["probability"]

    @property
    def largest_ml(self) -> float:
        """The volume of the largest kept lesion in mL (0 without one)."""
        return max((les.volume_ml for les in self.lesions), default=0.0)

    def native_masks(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The masks as (array, affine) in the input's own axis order (what ``lesion_mask.nii.gz`` holds)."""
        if self.scan.volume is None:
            raise BonemetError("image slices have no affine: use lesion_mask (one 2D mask per slice)")
        out = {"lesion": self.scan.volume.to_native(self.lesion_mask)}
        if self.bone_mask is not None:
            out["bone"] = self.scan.volume.to_native(self.bone_mask)
        return out


class Predictor:
    """The models of ``opts`` loaded once, on their device, ready for any number of scans (in the manner of
    nnU-Net's predictor that owns a trained model folder)."""

    def __init__(self, opts: PredictOptions, members: list[int] | None = None) -> None:
        """``members``: only these fold models of the run (all by default), e.g. to study one member alone or to
        use a run whose other members are still training."""
        from ..devices import resolve_device

        self.opts = opts
        self.device = resolve_device(opts.device)
        self.seg = SegRunner(opts.seg, members=members, paths=opts.paths, device=self.device)
        self.clf = ClsRunner(opts.cls, device=self.device) if opts.cls else None

    def predict(self, input_path: str | Path, out: str | Path) -> Prediction:
        """One scan into OUT (checked before any work, filled through a temporary folder beside it)."""
        opts = self.opts
        protect = [input_path, opts.seg, opts.cls, opts.truth, opts.bone_truth]
        with atomic_dir(out, overwrite=opts.overwrite, kind="predict", protect=protect) as tmp:
            t = time.perf_counter()
            scan = read_scan(Path(input_path), opts.series_uid)
            read_s = round(time.perf_counter() - t, 2)
            pred = self.analyse(scan)
            pred.summary["timings"] = {"read s": read_s, **pred.summary["timings"]}
            write_prediction(tmp, pred, opts)
            return pred

    def analyse(self, scan: Scan, keep_probabilities: bool | None = None) -> Prediction:
        """The pipeline on a scan already read, in memory (nothing written)."""
        return analyse(scan, self.opts, self.seg, self.clf, keep_probabilities)


def _to_volume(per_slice: np.ndarray) -> np.ndarray:
    """(N, rows, cols) slices as the canonical (i, j, k) array, ``axial(k) = array[:, :, k].T``: a view, not a copy."""
    return per_slice.transpose(2, 1, 0)


def _versions() -> dict:
    import timm
    import torch

    return {"bonemet": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}


def verdict(lesions: list, lesion_prob_max: float, cls_probs: np.ndarray | None, threshold: float) -> dict:
    """Patient verdict: segmentation evidence (the most confident kept lesion), classifier evidence (mean of the
    top-3 slice probabilities), and their mean when both exist."""
    p_seg = max((les.max_probability for les in lesions), default=min(lesion_prob_max, threshold - 1e-3))
    parts = {"segmentation": round(float(p_seg), 4)}
    if cls_probs is not None and len(cls_probs):
        parts["classification"] = round(float(np.sort(cls_probs)[-TOP_K_SLICES:].mean()), 4)
    p = float(np.mean(list(parts.values())))
    return {"verdict": "metastatic" if p >= threshold else "no metastasis found", "probability": round(p, 4),
            "evidence": parts, "threshold": threshold,
            "rule": ("segmentation: highest probability in a kept lesion (below the threshold when no lesion is kept); "
                     f"classification: mean of the top-{TOP_K_SLICES} slice probabilities; patient probability: mean "
                     "of the available parts")}


def _phi(scan: Scan) -> dict:
    return dict(scan.volume.meta.get("patient", {})) if scan.volume is not None else {}


def predict(input_path: str | Path, out: str | Path, opts: PredictOptions) -> dict:
    """Run the CAD pipeline on one scan; returns the summary (also written as OUT/summary.json).

    OUT is checked before any work (never the input or a folder holding it, never a run folder, and with
    ``overwrite`` only an earlier ``predict`` output), and filled through a temporary folder beside it.
    """
    check_output(out, "predict", opts.overwrite, [input_path, opts.seg, opts.cls, opts.truth, opts.bone_truth])
    return Predictor(opts).predict(input_path, out).summary


def analyse(scan: Scan, opts: PredictOptions, seg: SegRunner, clf: ClsRunner | None,
            keep_probabilities: bool | None = None) -> Prediction:
    """Segment, classify and measure ``scan``: everything ``predict`` writes, in memory."""
    times: dict[str, float] = {}
    warnings = []
    if scan.volume is not None:
        skipped = scan.volume.meta.get("skipped_files") or []
        if skipped:
            warnings.append(f"{len(skipped)} unreadable DICOM file(s) skipped: {', '.join(skipped)}")
        if scan.volume.meta.get("ignored_non_dicom"):
            warnings.append(f"{len(scan.volume.meta['ignored_non_dicom'])} non-DICOM file(s) ignored")
        if scan.volume.meta.get("non_finite_voxels"):
            warnings.append(f"{scan.volume.meta['non_finite_voxels']} voxel(s) were NaN or infinite: set to "
                            f"{NON_FINITE_FILL:g} HU (air) before analysis")
        if scan.volume.meta.get("shear_deg", 0) > 0.5:
            warnings.append(f"the voxel grid is sheared by {scan.volume.meta['shear_deg']:.1f} degrees: volumes use "
                            "the true voxel volume")
    n = scan.n_slices
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(f"segmentation ({seg.label})", total=n)
        t = time.perf_counter()
        lesion_p, bone_p = seg.predict(scan, opts.window, opts.batch_size, lambda k: bar.advance(task, k), opts.tta)
        times["segmentation s"] = round(time.perf_counter() - t, 2)
        cls_p = None
        if clf is not None:
            task = bar.add_task(f"classification ({clf.label})", total=n)
            t = time.perf_counter()
            cls_p = clf.predict(scan, opts.window, opts.batch_size, lambda k: bar.advance(task, k))
            times["classification s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    lesion_vol, bone_vol = _to_volume(lesion_p), (_to_volume(bone_p) if bone_p is not None else None)
    bone_mask, no_sure_bone = None, False
    if bone_vol is not None:
        if opts.refine_bone and scan.has_hu:
            bone_mask = refine_bone(bone_vol, scan.volume)
            no_sure_bone = bone_mask is None
            if no_sure_bone:
                warnings.append(f"{NO_SURE_BONE}: the bone mask is the network's output at the threshold")
        if bone_mask is None:
            bone_mask = bone_vol >= opts.threshold
    hu = scan.volume.array if scan.volume is not None else None
    spacing = scan.volume.spacing if scan.volume is not None else None
    gate: dict = {}
    lesions, kept = find_lesions(lesion_vol >= opts.threshold, lesion_vol, hu, bone_mask, spacing, opts.min_voxels,
                                 opts.min_volume_ml,
                                 voxel_mm3=scan.volume.voxel_volume_mm3 if scan.volume is not None else None,
                                 bone_margin_mm=opts.bone_margin_mm, stats=gate, max_mean_hu=opts.max_mean_hu,
                                 symmetry_hu=opts.symmetry_hu, min_contrast_hu=opts.min_contrast_hu)
    truth = None
    if opts.truth is not None:
        if scan.volume is None:
            raise BonemetError("--truth needs a CT input (DICOM or NIfTI)", opts.truth)
        truth = match_truth(lesions, kept, read_mask_like(opts.truth, scan.volume, allow_empty=True))
    bone_truth = None
    if opts.bone_truth is not None:
        if scan.volume is None or bone_mask is None:
            raise BonemetError("--bone-truth needs a CT input and a model with a bone output", opts.bone_truth)
        ref = read_mask_like(opts.bone_truth, scan.volume)
        inter = float((ref & bone_mask).sum())
        bone_truth = {"dice": round(2 * inter / max(1.0, float(ref.sum() + bone_mask.sum())), 4),
                      "truth_voxels": int(ref.sum()), "predicted_voxels": int(bone_mask.sum())}
    times["analysis s"] = round(time.perf_counter() - t, 2)

    slice_rows = _slice_rows(scan, lesion_p, kept, cls_p, opts.threshold, opts.include_phi)
    decision = verdict(lesions, float(lesion_p.max()) if lesion_p.size else 0.0, cls_p, opts.threshold)
    keep = opts.probabilities if keep_probabilities is None else keep_probabilities
    if not keep:  # the maps are not kept: free them before the masks and the DICOM-SEG are made
        lesion_vol = bone_vol = None
    del lesion_p, bone_p
    summary = {
        "input": {"path": str(scan.source) if opts.include_phi else "(left out: folder names often carry "
                          "patient identifiers; --include-phi keeps it)",
                  "kind": scan.kind,
                  "non_finite_voxels": scan.volume.meta.get("non_finite_voxels", 0) if scan.volume is not None else 0,
                  "slices": n, "slice_shape": list(scan.slice_shape),
                  "spacing_mm": [round(s, 4) for s in spacing] if spacing else None,
                  "hu_available": scan.has_hu,
                  "measurements": "HU, mm and mL" if scan.has_hu else
                  "not available: image slices carry no HU and no spacing (areas in pixels instead)"},
        **decision,
        "lesions": len(lesions),
        "lesions_by_type": _count(lesions, "type"), "lesions_by_site": _count(lesions, "site"),
        "total_lesion_volume_ml": round(sum(les.volume_ml or 0 for les in lesions), 3) if scan.has_hu else None,
        "lesion_slices": int(sum(r["lesion pixels"] > 0 for r in slice_rows)),
        "truth": truth, "bone_truth": bone_truth,
        "models": {"segmentation": seg.describe(), "classification": clf.describe() if clf else None},
        "versions": _versions(), "timings": times, "warnings": warnings,
        "options": {"threshold": opts.threshold, "min_volume_ml": opts.min_volume_ml, "min_voxels": opts.min_voxels,
                    "window": opts.window or "as trained", "test-time augmentation": "flip" if opts.tta else "none",
                    "bone mask": _bone_rule(opts, bone_mask is not None, scan, no_sure_bone),
                    "bone gate": _bone_gate(opts, bone_mask, scan, gate),
                    "metal rule": _metal_rule(opts, scan, gate), "symmetry rule": _symmetry_rule(opts, scan, gate),
                    "contrast rule": _contrast_rule(opts, scan, gate)},
    }
    return Prediction(summary, lesions, kept > 0, bone_mask, scan, lesion_vol, bone_vol, slice_rows, kept)


def write_prediction(tmp: Path, pred: Prediction, opts: PredictOptions) -> None:
    """Every file of a ``predict`` output folder for ``pred``, into ``tmp``."""
    summary, scan, times = pred.summary, pred.scan, pred.summary["timings"]
    t = time.perf_counter()
    files = _write_masks(tmp, scan, pred.lesion_mask, pred.bone_mask, pred.lesion_probability,
                         pred.bone_probability, opts, summary["models"]["segmentation"]["model"], summary["warnings"])
    lesion_rows = [les.as_row() for les in pred.lesions]
    write_csv(tmp / "lesions.csv", lesion_rows, _lesion_fields())
    write_json(tmp / "lesions.json", lesion_rows)
    write_csv(tmp / "slices.csv", pred.slice_rows)
    summary["files"] = sorted(files + ["lesions.csv", "lesions.json", "slices.csv", "summary.json", "report.html"])
    times["write s"] = round(time.perf_counter() - t, 2)
    times["total s"] = round(sum(v for k, v in times.items() if k != "total s"), 2)
    write_report(tmp / "report.html", scan, summary, pred.lesions, pred.labels, pred.bone_mask, pred.slice_rows,
                 _phi(scan) if opts.include_phi else None, pred.lesion_probability if opts.probabilities else None,
                 opts.viewer, opts.viewer_max_mb)
    write_json(tmp / "summary.json", summary)


def _bone_gate(opts: PredictOptions, bone_mask: np.ndarray | None, scan: Scan, gate: dict) -> str:
    """What the bone rule did, in words, for the summary."""
    if opts.bone_margin_mm is None:
        return "off"
    if bone_mask is None:
        return "not applied: the segmentation model has no bone output"
    unit = "mm" if scan.volume is not None else "pixels"
    return (f"a lesion must come within {opts.bone_margin_mm:g} {unit} of the predicted bone; "
            f"{gate.get('off_bone', 0)} component(s) dropped")


def _hu_rule(value: float | None, scan: Scan, says: Callable[[float], str]) -> str:
    """What a rule on the findings' HU did, in words, for the summary: off, not applied, or ``says(value)``."""
    if value is None:
        return "off"
    return says(value) if scan.has_hu else "not applied: image slices carry no HU"


def _bone_rule(opts: PredictOptions, has_bone: bool, scan: Scan, no_sure_bone: bool) -> str:
    """How the bone mask was made, in words, for the summary."""
    if not has_bone:
        return "none: the segmentation model has no bone output"
    if no_sure_bone:
        return f"the bone output at the threshold, {opts.threshold:g}: {NO_SURE_BONE}"
    if opts.refine_bone and scan.has_hu:
        return BONE_RULES
    why = "" if opts.refine_bone else " (--raw-bone)"
    return f"the bone output at the threshold, {opts.threshold:g}{why}"


def _metal_rule(opts: PredictOptions, scan: Scan, gate: dict) -> str:
    return _hu_rule(opts.max_mean_hu, scan, lambda hu: f"a component of mean {hu:g} HU or more is metal, not a "
                                                       f"lesion; {gate.get('metal', 0)} dropped")


def _symmetry_rule(opts: PredictOptions, scan: Scan, gate: dict) -> str:
    return _hu_rule(opts.symmetry_hu, scan, lambda hu: f"a component whose mirror image across the body's midline "
                                                       f"(within {MIRROR_SHIFT_MM:g} mm) has a mean within {hu:g} HU "
                                                       f"of its own is normal anatomy, not a lesion; "
                                                       f"{gate.get('symmetric', 0)} dropped")


def _contrast_rule(opts: PredictOptions, scan: Scan, gate: dict) -> str:
    return _hu_rule(opts.min_contrast_hu, scan, lambda hu: f"a component whose mean is within {hu:g} HU of the bone "
                                                           f"around it shows no lesion on CT; "
                                                           f"{gate.get('faint', 0)} dropped")


def _count(lesions: list, key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for les in lesions:
        out[getattr(les, key)] = out.get(getattr(les, key), 0) + 1
    return out


def _lesion_fields() -> list[str]:
    from dataclasses import fields

    from .lesions import Lesion

    return [f.name for f in fields(Lesion)]


PROBABILITY_STEP = 1 / 255  # probability maps are stored as 0-255 levels with this NIfTI scaling


def probability_levels(p: np.ndarray) -> np.ndarray:
    """Probabilities (i, j, k) as uint8 levels of ``PROBABILITY_STEP``, slice by slice (no float copy)."""
    out = np.empty(p.shape, np.uint8)
    for k in range(p.shape[2]):
        out[:, :, k] = np.rint(np.clip(p[:, :, k].astype(np.float32), 0, 1) * 255)
    return out


def _slice_rows(scan: Scan, lesion_p: np.ndarray, kept: np.ndarray, cls_p: np.ndarray | None,
                threshold: float, include_phi: bool = False) -> list[dict]:
    """One row per slice; a DICOM slice is named by its SOP Instance UID only with ``include_phi`` (UIDs link
    back to the patient's study)."""
    rows = []
    uids = scan.volume.meta.get("slice_uids") if scan.volume is not None and include_phi else None
    frames = scan.volume.meta.get("slice_frames") if scan.volume is not None else None
    if uids and frames:  # an enhanced CT: one SOP instance, a frame per slice
        uids = [f"{u} frame {f}" for u, f in zip(uids, frames)]
    for k in range(scan.n_slices):
        ids = np.unique(kept[:, :, k])
        row = {"slice": k + 1, "name": scan.images[k].name if scan.kind == "images" else (uids[k] if uids else ""),
               "z_mm": round(float((scan.volume.affine @ [0, 0, k, 1])[2]), 2) if scan.volume is not None else "",
               "segmentation probability": round(float(lesion_p[k].max()), 4),
               "lesion pixels": int((kept[:, :, k] > 0).sum()),
               "lesion ids": " ".join(str(i) for i in ids[ids > 0])}
        if cls_p is not None:
            row["classifier probability"] = round(float(cls_p[k]), 4)
        row["metastatic slice"] = int(row["lesion pixels"] > 0 or (cls_p is not None and cls_p[k] >= threshold))
        rows.append(row)
    return rows


def _write_masks(tmp: Path, scan: Scan, lesion: np.ndarray, bone: np.ndarray | None, lesion_p: np.ndarray,
                 bone_p: np.ndarray | None, opts: PredictOptions, model_name: str, warnings: list[str]) -> list[str]:
    files = []
    if scan.volume is not None:
        vol = scan.volume
        maps = [("lesion_mask.nii.gz", lesion, None), ("bone_mask.nii.gz", bone, None)]
        if opts.probabilities:
            maps += [("lesion_probability.nii.gz", lesion_p, PROBABILITY_STEP),
                     ("bone_probability.nii.gz", bone_p, PROBABILITY_STEP)]
        for name, arr, slope in maps:
            if arr is not None:
                data = arr.view(np.uint8) if slope is None else probability_levels(arr)  # no float copy of a scan
                save_nifti(*vol.to_native(data), tmp / name, slope=slope)  # the input's own axis order and affine
                files.append(name)
        from .slicer import write_seg_nrrd

        write_seg_nrrd(tmp / "segmentation.seg.nrrd", vol.affine, lesion, bone)
        files.append("segmentation.seg.nrrd")
        if scan.kind == "dicom" and opts.dicom_seg:
            from .dicomseg import write_dicom_seg

            try:
                write_dicom_seg(tmp / "lesions_seg.dcm", vol, lesion, bone, model_name)
                files.append("lesions_seg.dcm")
            except BonemetError as exc:
                warnings.append(f"no DICOM-SEG: {exc}")
                logger.warning("no DICOM-SEG: %s", exc)
    else:  # image slices: masks as images with the slices' names
        for k, path in enumerate(scan.images):
            write_image(tmp / "lesion_mask" / f"{path.stem}.png", lesion[:, :, k].T)
            if bone is not None:
                write_image(tmp / "bone_mask" / f"{path.stem}.png", bone[:, :, k].T)
        files += ["lesion_mask/"] + (["bone_mask/"] if bone is not None else [])
    return files
