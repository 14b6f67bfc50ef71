"""``bonemet data``: make, convert, check, describe and split data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from ..errors import BonemetError

app = typer.Typer(help="Make, convert, check, describe and split CT data.", no_args_is_help=True)
err = Console(stderr=True)

Window = Annotated[str, typer.Option(help="CT window: bone, soft, wide or multi (3 channels).")]


def check_window(window: str) -> None:
    from ..data.windows import WINDOW_NAMES

    if window not in WINDOW_NAMES:
        raise BonemetError(f"unknown window '{window}' (choose from {', '.join(WINDOW_NAMES)})")


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder (must be new or empty, or use --overwrite).")],
    patients: Annotated[int, typer.Option(min=1, help="Number of patients.")] = 6,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same files.")] = 0,
    size: Annotated[int, typer.Option(min=32, max=1024, help="Slice size in pixels (400 mm field of view).")] = 256,
    slices: Annotated[int, typer.Option(min=8, max=1000, help="Axial slices per patient (mid-thorax to femurs).")] = 96,
    formats: Annotated[str, typer.Option(help="Comma-separated: volumes,dicom,bmseg,classification.")] =
        "volumes,dicom,bmseg,classification",
    window: Window = "bone",
    metastatic_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of metastatic patients.")] = 0.5,
    lesion_slices_only: Annotated[bool, typer.Option(help="BM-Seg export with lesion slices only, as the public "
                                                           "BM-Seg (the default keeps lesion-free slices too).")
                                  ] = False,
    thighs: Annotated[bool, typer.Option(help="Scans run on to mid-thigh (--slices in all): femoral shafts with "
                                              "a thick, fully dense cortex around a fatty canal.")] = False,
    from_ct: Annotated[Path | None, typer.Option(help="Insert lesions into this real CT (NIfTI or DICOM folder) "
                                                      "instead of generating phantoms.")] = None,
    bone_mask: Annotated[Path | None, typer.Option(help="Bone mask (NIfTI) of --from-ct; without it, lesions go "
                                                        "where HU says bone is sure and no bone mask is written.")]
        = None,
    lesions: Annotated[int, typer.Option(min=1, help="With --from-ct: number of lesions to insert.")] = 4,
    lesion_size: Annotated[str, typer.Option(help="MIN,MAX drawn lesion diameter in mm (log-uniform; clipped "
                                                  "to the bone).")] = "10,45",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Generate the CT phantom (volumes, DICOM, BM-Seg and classification layouts) or lesions in real CT."""
    from ..data.bone import DENSE_HU, LOW_HU
    from ..phantom.synth import FORMATS, synthesize, synthesize_from_ct

    check_window(window)
    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise BonemetError(f"unknown format(s) {bad or formats!r}: choose from {', '.join(FORMATS)}")
    try:
        lo, hi = (float(v) for v in lesion_size.split(","))
        assert 0 < lo <= hi
    except (ValueError, AssertionError):
        raise BonemetError(f"--lesion-size wants MIN,MAX in mm with 0 < MIN <= MAX, got '{lesion_size}'") from None
    t0 = time.perf_counter()
    if from_ct is not None:
        if bone_mask is None:
            err.print(f"no --bone-mask: lesions go where bone is sure from HU alone ({LOW_HU:g} HU or more near "
                      f"{DENSE_HU:g} HU); no bone mask is written")
        _, infos = synthesize_from_ct(from_ct, bone_mask, out, lesions=lesions, seed=seed,
                                      formats=[f for f in fmts if f != "dicom"] or ["volumes"], window=window,
                                      overwrite=overwrite, lesion_mm=(lo, hi))
        for i in infos:
            err.print(f"lesion {i.lesion_id}: {i.kind}, {i.diameter_mm} mm, slices {i.slice_start}-{i.slice_end}, "
                      f"{i.mean_hu:.0f} HU (bone around: {i.surrounding_bone_hu:.0f} HU)")
    else:
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("phantom patients", total=patients)

            def step(msg: str) -> None:
                progress.console.print(msg)
                progress.advance(task)

            synthesize(out, patients=patients, seed=seed, size=size, slices=slices, formats=fmts, window=window,
                       metastatic_fraction=metastatic_fraction, lesion_slices_only=lesion_slices_only,
                       overwrite=overwrite, lesion_mm=(lo, hi), progress=step, thighs=thighs)
    typer.echo(f"wrote {out} in {time.perf_counter() - t0:.1f} s")


@app.command()
def convert(
    input: Annotated[Path, typer.Argument(help="DICOM series folder or NIfTI volume.")],
    out: Annotated[Path, typer.Argument(help="Output folder (BM-Seg layout).")],
    bone_mask: Annotated[Path | None, typer.Option(help="Bone mask, NIfTI (aligned through the affines).")] = None,
    lesion_mask: Annotated[Path | None, typer.Option(help="Lesion mask, NIfTI.")] = None,
    lesion_free: Annotated[bool, typer.Option(help="The scan holds no metastasis: write empty lesion masks.")] = False,
    window: Window = "bone",
    patient: Annotated[str | None, typer.Option(help="Patient id for file names and patients.csv.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    partial_bone: Annotated[bool, typer.Option(help="No bone mask: write a partial bone label from HU alone (sure "
                                                    "bone 255, sure no bone 0, unknown 128), whose unknown pixels "
                                                    "training leaves out.")] = False,
) -> None:
    """Convert a CT (DICOM or NIfTI) and its masks into BM-Seg-style slices."""
    from ..data.convert import convert_to_bmseg

    check_window(window)
    s = convert_to_bmseg(input, out, bone_mask, lesion_mask, window, patient, overwrite, lesion_free, partial_bone)
    bone = "sure bone voxels (partial label)" if partial_bone else "bone voxels"
    typer.echo(f"wrote {s['slices']} slices of patient {s['patient']} to {out} "
               f"({bone} {s['bone_voxels']}, lesion voxels {s['lesion_voxels']})")


@app.command()
def check(
    root: Annotated[Path, typer.Argument(help="BM-Seg, classification, volumes or DICOM folder, a phantom root, or "
                                              "one NIfTI CT.")],
    threshold: Annotated[int, typer.Option(help="Mask pixels above this value are set (127 removes JPEG noise).")] = 0,
) -> None:
    """Check a data folder: one line per problem naming the file; exit 2 when the data is unusable."""
    from ..data.check import check_root

    reports = check_root(root, threshold)
    fatal = False
    for rep in reports:
        counts = ", ".join(f"{v} {k}" for k, v in rep.counts.items())
        typer.echo(f"{rep.root}: {rep.layout}: {counts or 'nothing readable'}")
        for p in rep.problems:
            typer.echo(str(p), err=True)
        fatal |= rep.fatal
    if fatal:
        typer.echo(f"error: {root}: data has problems that make it unusable (see above)", err=True)
        raise typer.Exit(2)
    typer.echo("ok")


@app.command()
def stats(
    root: Annotated[Path, typer.Argument(help="BM-Seg, classification or volumes folder, or a phantom root.")],
    reference: Annotated[Path | None, typer.Option(help="A real CT (NIfTI or DICOM) to compare bone HU with.")] = None,
    reference_bone_mask: Annotated[Path | None, typer.Option(help="Bone mask of --reference (NIfTI).")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the Markdown report to this file.")] = None,
) -> None:
    """Describe a data set as Markdown tables (slices, lesions, sites; bone HU beside real CT)."""
    from ..data.stats import stats_report
    from ..fileio import write_text

    if not root.is_dir():
        raise BonemetError("not a folder", root)
    if (reference is None) != (reference_bone_mask is None):
        raise BonemetError("--reference and --reference-bone-mask go together")
    ref = (reference, reference_bone_mask) if reference is not None else None
    text = stats_report(root, ref)  # type: ignore[arg-type]
    typer.echo(text)
    if out is not None:
        write_text(out, text)


@app.command()
def split(
    root: Annotated[Path, typer.Argument(help="BM-Seg or classification folder.")],
    out: Annotated[Path, typer.Argument(help="JSON file to write (e.g. RUN/splits.json).")],
    folds: Annotated[int, typer.Option(min=2, help="Number of folds.")] = 5,
    test_patients: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of patients held out for test.")] = 0.0,
    protocol: Annotated[str, typer.Option(help="patient (grouped K-fold) or paper (slice-level, leaky).")] = "patient",
    seed: Annotated[int, typer.Option(help="Seed of the patient-level split.")] = 0,
) -> None:
    """Write a patient-level K-fold split (or the paper's slice-level one) to JSON."""
    from ..data.bmseg import is_bmseg_root, load_bmseg
    from ..data.classification import load_classification
    from ..data.splits import paper_splits, patient_splits, save_splits

    if protocol not in ("patient", "paper"):
        raise BonemetError(f"unknown protocol '{protocol}' (patient or paper)")
    if is_bmseg_root(root):
        idx = load_bmseg(root, require_patients=protocol == "patient")
        items = [str(s.image.relative_to(root)) for s in idx.slices]
        pats, labels = [s.patient for s in idx.slices], None
    else:
        cidx = load_classification(root)
        items = [str(s.path.relative_to(root)) for s in cidx.slices]
        pats, labels = [s.patient for s in cidx.slices], [s.patient_label for s in cidx.slices]
    if protocol == "paper":
        sp = paper_splits(items, folds)
        err.print(f"[yellow]warning:[/] {sp['label']}")
    else:
        sp = patient_splits(items, pats, folds, test_patients, seed, labels)
    sp["root"] = str(root)
    save_splits(sp, out)
    typer.echo(f"wrote {out}: {sp['label']}, {len(sp['folds'])} folds, {len(sp['test_patients'])} test patients")
