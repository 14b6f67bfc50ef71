"""``bonemet predict``: the CAD pipeline on one scan, or on every case of a folder or a CSV manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import BonemetError
from .options import Device


def predict(
    input: Annotated[Path, typer.Argument(help="A DICOM series folder (or its DICOMDIR), a NIfTI volume or a folder "
                                               "of PNG / JPEG slices; with --batch a folder of such cases; or a CSV "
                                               "manifest (columns case,input).")],
    out: Annotated[Path, typer.Option(help="Output folder (written atomically).")],
    seg: Annotated[Path | None, typer.Option(help="Segmentation run folder (all its fold models are averaged); "
                                                  "default: the bundled default model ('bonemet models').")] = None,
    cls: Annotated[Path | None, typer.Option(help="Classification run folder (adds per-slice probabilities).")] = None,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Probability threshold for masks and verdict.")]
        = 0.5,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Slices per forward pass (default: about 100,000 "
                                                               "pixels a pass on a CPU, 2 slices at 224 px; "
                                                               "16x that on a GPU).")] = None,
    window: Annotated[str | None, typer.Option(help="Override the CT window the models were trained with.")] = None,
    probabilities: Annotated[bool, typer.Option(help="Also write probability maps (NIfTI, 8-bit levels with a 1/255 "
                                                    "scaling that readers apply).")] = False,
    min_volume: Annotated[float, typer.Option(help="Ignore lesion components below this volume (mL).")] = 0.05,
    truth: Annotated[Path | None, typer.Option(help="A lesion mask (NIfTI) to report lesion-level recall against.")]
        = None,
    bone_truth: Annotated[Path | None, typer.Option(help="A bone mask (NIfTI) to report the bone Dice against.")]
        = None,
    include_phi: Annotated[bool, typer.Option(help="Show patient name, ID and birth date in the report.")] = False,
    no_dicom_seg: Annotated[bool, typer.Option(help="Do not write the DICOM-SEG object.")] = False,
    fast: Annotated[str | None, typer.Option(help="Inference path: comma-separated fold_bn, fuse, channels_last, "
                                                  "bf16, onnx, int8, openvino, compile, or eager (default: "
                                                  "fold_bn,fuse,channels_last,bf16 where the CPU has native bf16, "
                                                  "else fold_bn,fuse,channels_last; on a GPU fold_bn,channels_last, "
                                                  "where fold_bn, channels_last, bf16 and compile run). int8 uses the "
                                                  "graphs 'bonemet seg quantize' stored, else calibrates on this "
                                                  "scan.")]
        = None,
    series_uid: Annotated[str | None, typer.Option(help="The Series Instance UID to read when the DICOM folder "
                                                        "holds several series (default: the CT series with the "
                                                        "most slices).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier output of 'bonemet predict' (never a folder "
                                                 "it did not write); with a batch, predict the finished cases again.")]
        = False,
    bone_margin: Annotated[float, typer.Option(min=0.0, help="A lesion must come within this distance (mm; pixels "
                                                              "for image slices) of the predicted bone, else it is "
                                                              "dropped (models with a bone output).")] = 3.0,
    no_bone_gate: Annotated[bool, typer.Option(help="Keep lesions wherever they are, in bone or not.")] = False,
    max_mean_hu: Annotated[float, typer.Option(help="A lesion whose mean is at least this many HU is dropped as "
                                                     "metal (an implant, a wire, the scanner's clipped maximum); "
                                                     "bone and blastic lesions stay well below.")] = 2000.0,
    no_metal_rule: Annotated[bool, typer.Option(help="Keep lesions however dense they are.")] = False,
    symmetry_hu: Annotated[float | None, typer.Option(min=0.0, help="Drop a lesion whose mirror image across the "
                                                                    "body's midline (within 3 mm) has a mean within "
                                                                    "this many HU of its own: normal anatomy is "
                                                                    "symmetric (e.g. 25; off by default: symmetric "
                                                                    "metastases would go too).")] = None,
    min_contrast_hu: Annotated[float | None, typer.Option(min=0.0, help="Drop a lesion whose mean is within this "
                                                                        "many HU of the bone around it: CT shows it "
                                                                        "neither lytic nor blastic (e.g. 30; off by "
                                                                        "default).")] = None,
    raw_bone: Annotated[bool, typer.Option(help="The bone mask as the network gives it, cut at --threshold, "
                                                "without the HU rules (inside the body, at least 100 HU, small "
                                                "holes filled, sure bone added) that take it closer to the bone "
                                                "on real CT.")] = False,
    tta: Annotated[bool, typer.Option(help="Test-time augmentation: also run every model on the left-right "
                                           "mirrored slices and average (twice the model time).")] = False,
    viewer: Annotated[bool, typer.Option(help="The interactive viewer (NiiVue: three planes, 3D, windows, overlays) "
                                              "in report.html, which still opens offline.")] = True,
    viewer_max_mb: Annotated[float, typer.Option(min=0.0, help="Images embedded for the viewer above which the "
                                                               "report keeps still images only (MB).")] = 64.0,
    device: Device = "auto",
    batch: Annotated[bool, typer.Option(help="INPUT is a folder of cases: each sub-folder (DICOM series or image "
                                             "slices) or NIfTI file is one case, written to OUT/<case>/.")] = False,
    jobs: Annotated[int, typer.Option(min=1, help="Batch: cases at once in local processes (torch threads per "
                                                  "process: cores / jobs).")] = 1,
    num_parts: Annotated[int, typer.Option(min=1, help="Batch: split the cases into this many parts (a scheduler's "
                                                       "job array: Slurm and the like)...")] = 1,
    part_id: Annotated[int, typer.Option(min=0, help="... and predict this part (0-based; e.g. "
                                                     "$SLURM_ARRAY_TASK_ID).")] = 0,
    dask: Annotated[str | None, typer.Option(help="Batch: spread the cases over the workers of the Dask cluster whose "
                                                  "scheduler is at this address (tcp://host:8786).")] = None,
) -> None:
    """Masks (NIfTI, DICOM-SEG), lesions.csv/json, slices.csv, summary.json and report.html for one scan, or for
    every case of a batch (OUT/<case>/, OUT/cohort.csv, OUT/failures.csv; finished cases are skipped)."""
    from ..inference.batch import is_manifest, predict_batch
    from ..inference.fast import parse_paths
    from ..inference.predict import PredictOptions
    from ..inference.predict import predict as run_predict

    opts = PredictOptions(seg=seg, cls=cls, threshold=threshold, batch_size=batch_size, window=window,
                          probabilities=probabilities, include_phi=include_phi, truth=truth, bone_truth=bone_truth,
                          min_volume_ml=min_volume, dicom_seg=not no_dicom_seg, overwrite=overwrite,
                          series_uid=series_uid, paths=None if fast is None else parse_paths(fast), device=device,
                          bone_margin_mm=None if no_bone_gate else bone_margin, tta=tta, viewer=viewer,
                          max_mean_hu=None if no_metal_rule else max_mean_hu, symmetry_hu=symmetry_hu,
                          min_contrast_hu=min_contrast_hu, viewer_max_mb=viewer_max_mb, refine_bone=not raw_bone)
    many = batch or is_manifest(input)
    if not many and (jobs > 1 or num_parts > 1 or dask):
        raise BonemetError("--jobs, --num-parts and --dask spread the cases of a batch: add --batch (a folder of "
                           "cases) or give a CSV manifest")
    if many:
        if truth is not None or bone_truth is not None:
            raise BonemetError("--truth and --bone-truth belong to one scan, not to a batch")

        def said(r: dict) -> None:
            typer.echo(f"{r['case']}: " + (f"{r['verdict']} ({r['seconds']:.1f} s)" if r["ok"] else
                                           f"failed: {r['reason']}"), err=True)

        res = predict_batch(input, out, opts, jobs, num_parts, part_id, dask, progress=said)
        rate = f", {res['cases per minute']} cases per minute" if res["cases per minute"] else ""
        typer.echo(f"{res['cases']} case(s): {res['done']} predicted, {res['skipped']} already done, "
                   f"{res['failed']} failed{rate}; cohort: {out / 'cohort.csv'}")
        if res["failed"]:
            typer.echo(f"error: {res['failed']} case(s) failed (see {out / 'failures.csv'}); run the same command "
                       "again to retry them", err=True)
            raise typer.Exit(1)
        return
    s = run_predict(input, out, opts)
    typer.echo(f"{s['verdict']} (probability {s['probability']:.2f}); {s['lesions']} lesion(s), "
               f"{s['lesion_slices']} slice(s) with lesion")
    if s.get("truth"):
        from ..reporting.report import truth_in_words

        typer.echo(f"against the truth: {truth_in_words(s['truth'])}")
    if s.get("bone_truth"):
        typer.echo(f"bone Dice against the given mask: {s['bone_truth']['dice']:.3f}")
    typer.echo(f"report: {out / 'report.html'}")
