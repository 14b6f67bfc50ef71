"""``bonemet predict``: the CAD pipeline on one scan."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def predict(
    input: Annotated[Path, typer.Argument(help="A DICOM series folder (or its DICOMDIR), a NIfTI volume or a folder "
                                               "of PNG / JPEG slices.")],
    seg: Annotated[Path, typer.Option(help="Segmentation run folder (all its fold models are averaged).")],
    out: Annotated[Path, typer.Option(help="Output folder (written atomically).")],
    cls: Annotated[Path | None, typer.Option(help="Classification run folder (adds per-slice probabilities).")] = None,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Probability threshold for masks and verdict.")]
        = 0.5,
    batch_size: Annotated[int, typer.Option(min=1, help="Slices per forward pass.")] = 8,
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
    fast: Annotated[str | None, typer.Option(help="Inference path: comma-separated fold_bn, channels_last, bf16, "
                                                  "onnx, int8, compile, or eager (default: "
                                                  "fold_bn,channels_last,bf16 where the CPU has native bf16, else "
                                                  "fold_bn,channels_last). int8 uses the graphs 'bonemet seg quantize' "
                                                  "stored, else calibrates on this scan.")]
        = None,
    series_uid: Annotated[str | None, typer.Option(help="The Series Instance UID to read when the DICOM folder "
                                                        "holds several series (default: the CT series with the "
                                                        "most slices).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier output of 'bonemet predict' (never a folder "
                                                 "it did not write).")] = False,
) -> None:
    """Masks (NIfTI, DICOM-SEG), lesions.csv/json, slices.csv, summary.json and report.html for one scan."""
    from ..inference.fast import parse_paths
    from ..inference.predict import PredictOptions
    from ..inference.predict import predict as run_predict

    opts = PredictOptions(seg=seg, cls=cls, threshold=threshold, batch_size=batch_size, window=window,
                          probabilities=probabilities, include_phi=include_phi, truth=truth, bone_truth=bone_truth, min_volume_ml=min_volume,
                          dicom_seg=not no_dicom_seg, overwrite=overwrite, series_uid=series_uid,
                          paths=None if fast is None else parse_paths(fast))
    s = run_predict(input, out, opts)
    typer.echo(f"{s['verdict']} (probability {s['probability']:.2f}); {s['lesions']} lesion(s), "
               f"{s['lesion_slices']} slice(s) with lesion")
    if s.get("truth"):
        t = s["truth"]
        typer.echo(f"against the truth: {t['found']}/{t['true_lesions']} lesions found, "
                   f"{t['false_positive_lesions']} false positive lesion(s)")
    if s.get("bone_truth"):
        typer.echo(f"bone Dice against the given mask: {s['bone_truth']['dice']:.3f}")
    typer.echo(f"report: {out / 'report.html'}")
