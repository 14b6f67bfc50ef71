"""``bonemet seg``: the segmentation model family, training, evaluation and comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import BonemetError
from .options import Device, Fold, SyncBN, Workers, given_options

app = typer.Typer(help="Segmentation: models, training, the EH-AttUnet++ ensemble, evaluation.", no_args_is_help=True)


@app.command()
def models(
    width: Annotated[int, typer.Option(min=1, help="Base channels (32 in the thesis).")] = 32,
    size: Annotated[int, typer.Option(min=32, help="Slice size for the GMAC count.")] = 224,
    channels: Annotated[int, typer.Option(min=1, max=3, help="Input channels (1 or 3).")] = 3,
) -> None:
    """List the models with parameter counts (M) and GMACs per slice."""
    from ..markdown import markdown_table
    from ..models import count_parameters, create_model, model_info, model_names
    from ..models.cost import gmacs_per_slice

    rows = []
    for name in model_names():
        m = create_model(name, width=width, in_channels=channels)
        rows.append({"model": name, "params (M)": f"{count_parameters(m) / 1e6:.2f}",
                     f"GMAC / {size}px slice": f"{gmacs_per_slice(m, channels, size):.1f}",
                     "outputs": ", ".join(model_info(name).outputs), "thesis name": model_info(name).display})
    typer.echo(markdown_table(rows))
    typer.echo("eh-attunet++ = the ensemble of the K hybrid-attunet++ fold models of a run "
               "(K x the cost of one member).")


BF16_HELP = ("Train with bfloat16 autocast and channels_last (1.7-1.8x the images/s at width 8, 128 px, on "
             "CPUs with native bf16); evaluation stays fp32.")


@app.command()
def train(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option(help="BM-Seg root (flat with patients.csv, or grouped by patient).")],
    out: Annotated[Path, typer.Option(help="Run folder.")],
    model: Annotated[str, typer.Option(help="unet, attunet, unet++, attunet++, hybrid-attunet++ or sequential.")]
        = "hybrid-attunet++",
    folds: Annotated[int, typer.Option(min=2, help="K: fold models (the ensemble's members).")] = 5,
    test_patients: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of patients held out for test "
                                                                         "(the ensemble is scored on them).")] = 0.2,
    protocol: Annotated[str, typer.Option(help="patient (grouped folds) or paper (slice-level, leaky).")] = "patient",
    epochs: Annotated[int, typer.Option(min=1)] = 60,
    size: Annotated[int, typer.Option(min=32, help="Input size in pixels.")] = 224,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    width: Annotated[int, typer.Option(min=1, help="Base channels.")] = 32,
    channels: Annotated[int, typer.Option(min=1, max=3, help="Input channels: 3 (as BM-Seg) or 1.")] = 3,
    block: Annotated[str, typer.Option(help="Nested nets' block: mb (modified) or plain (ablation).")] = "mb",
    single_decoder: Annotated[bool, typer.Option(help="hybrid-attunet++ without the dual decoder (ablation).")]
        = False,
    lesion_model: Annotated[str, typer.Option(help="sequential: the lesion model.")] = "attunet++",
    lesion_weight: Annotated[float, typer.Option(help="Loss weight of the lesion head.")] = 0.7,
    bone_weight: Annotated[float, typer.Option(help="Loss weight of the bone head.")] = 0.3,
    pos_weight: Annotated[float, typer.Option(help="BCE weight of lesion pixels (1 = the thesis' plain BCE).")]
        = 1.0,
    lesion_dice: Annotated[float, typer.Option(min=0, help="Add this weight times a soft Dice loss of the lesion "
                                                           "output over the whole batch (nnU-Net's Dice + "
                                                           "cross-entropy); 0: BCE alone, as the thesis.")] = 0.0,
    lesion_prior: Annotated[float | None, typer.Option(help="Start the lesion head's bias at this probability's "
                                                            "log-odds (e.g. 0.01), so that a pixel with no active "
                                                            "feature means no lesion. Default: torch's own "
                                                            "initialisation.")] = None,
    optimizer: Annotated[str, typer.Option(help="adam or sgd.")] = "adam",
    lr_scale: Annotated[float, typer.Option(help="Multiply the thesis learning rates by this.")] = 1.0,
    select: Annotated[str, typer.Option(help="last (epoch) or best (F1 on inner-validation patients).")] = "last",
    no_augment: Annotated[bool, typer.Option(help="Switch augmentation off.")] = False,
    intensity_aug: Annotated[bool, typer.Option(help="Also randomise intensities in training (contrast, offset, "
                                                     "noise, blur or sharpening): domain randomisation for real "
                                                     "CT of many scanners.")] = False,
    scale_aug: Annotated[float, typer.Option(min=0, max=1, help="Also zoom each training sample by a random factor "
                                                                "between 1/(1+S) and 1+S (patients of other "
                                                                "sizes); 0: off.")] = 0.0,
    density_aug: Annotated[float, typer.Option(min=0, max=2, help="Also scale what lies above 100 HU (marrow, "
                                                                  "cortex, and a lesion with them) by a random factor "
                                                                  "between 1/(1+D) and 1+D (patients whose normal "
                                                                  "bone is denser or thinner); 0: off.")] = 0.0,
    threshold: Annotated[int, typer.Option(help="Mask binarisation threshold (127 for noisy JPEG masks).")] = 0,
    neg_ratio: Annotated[float | None, typer.Option(help="Per epoch, at most this many lesion-free slices per "
                                                          "lesion slice (CPU budgets).")] = None,
    eval_every: Annotated[int, typer.Option(min=1, help="Score the fold's held-out patients every N epochs "
                                                        "(for the curves and `seg distill --init-member heldout`; "
                                                        "never for choosing a checkpoint unless --select best).")] = 1,
    seed: Annotated[int, typer.Option()] = 0,
    bf16: Annotated[bool, typer.Option(help=BF16_HELP)] = False,
    pixel_mm: Annotated[float | None, typer.Option(min=0.1, max=10, help="Physical scale: resample each slice to "
                                                   "pixels of this size in mm and train on the --size field centred "
                                                   "on the body (each slice's spacing from patients.csv); predict "
                                                   "tiles whole slices at that scale. Default: the thesis' "
                                                   "whole-slice resize.")] = None,
    context_mm: Annotated[float, typer.Option(min=0, max=100, help="With --pixel-mm: the input's three channels are "
                                              "the slice about this many mm below, the slice and the slice as far "
                                              "above, in grey (each series' slice spacing from patients.csv), so "
                                              "the model sees whether a structure goes on along the scan; predict "
                                              "does the same. 0: the slice alone.")] = 0.0,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last finished epoch.")] = False,
    fold: Fold = None,
    device: Device = "auto",
    workers: Workers = 0,
    sync_bn: SyncBN = False,
) -> None:
    """Train the fold models of a run (patient-level folds, held-out test patients).

    On several GPUs or CPU processes: torchrun --nproc_per_node N -m bonemet seg train ... (--batch-size is then
    the global batch)."""
    from ..runs.seg import SegConfig
    from ..training.loop import runtime
    from ..training.seg import train_segmentation

    cfg = SegConfig(data=str(data), model=model, folds=folds, test_patients=test_patients, protocol=protocol,
                    epochs=epochs, size=size, batch_size=batch_size, width=width, channels=channels, block=block,
                    dual_decoder=False if single_decoder else None, lesion_model=lesion_model,
                    lesion_weight=lesion_weight, bone_weight=bone_weight, pos_weight=pos_weight, optimizer=optimizer,
                    lr_scale=lr_scale, lesion_dice=lesion_dice,
                    select=select, augment=not no_augment, intensity_aug=intensity_aug, scale_aug=scale_aug,
                    density_aug=density_aug,
                    threshold=threshold, neg_ratio=neg_ratio, eval_every=eval_every, seed=seed,
                    bf16=bf16, mask_resize="paper" if protocol == "paper" else "nearest", pixel_mm=pixel_mm,
                    lesion_prior=lesion_prior, context_mm=context_mm)
    given = given_options(ctx, {"single_decoder": "dual_decoder", "no_augment": "augment"})
    rt = runtime(device, workers, sync_bn)
    run = train_segmentation(cfg, out, resume=resume, given=given, fold=fold, rt=rt)
    if not rt.world.main:
        return
    from ..data.splits import load_splits

    n = len(load_splits(run / "splits.json")["folds"])
    trained = f"trained fold {fold} of {n}" if fold is not None else f"trained {n} fold models"
    typer.echo(f"{trained} in {run}; next: bonemet seg evaluate {run}")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder of 'seg train'.")],
    data: Annotated[Path | None, typer.Option(help="Data root (default: the run's).")] = None,
    native_size: Annotated[bool, typer.Option(help="Also score at each slice's stored size (predictions resized "
                                                   "back), in rows beside the model-size ones.")] = False,
    device: Device = "auto",
) -> None:
    """Thesis-style tables (Markdown, CSV) and figures (PNG) in RUN/eval."""
    from ..evaluation.seg_eval import evaluate_run

    s = evaluate_run(run, data, native_size=native_size, device=device)
    typer.echo((run / "eval" / "cv_table.md").read_text())
    typer.echo((run / "eval" / "test_table.md").read_text())
    typer.echo(f"tables and figures in {run / 'eval'}: " + ", ".join(Path(f).name for f in s["figures"]))


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Evaluated run folders.")],
    out: Annotated[Path, typer.Option(help="Folder for compare.md / CSV / PNG.")] = Path("compare"),
    data: Annotated[Path | None, typer.Option(help="Data root (default: the first run's).")] = None,
) -> None:
    """Put several runs in one table (Tables 4.1, 4.3, 4.4) with a visual comparison grid."""
    from ..evaluation.seg_eval import compare_runs

    res = compare_runs(runs, out, data)
    typer.echo(res["markdown"])
    if res["figure"]:
        typer.echo(f"figure: {res['figure']}")


@app.command()
def quantize(
    run: Annotated[Path, typer.Argument(help="Run folder of 'seg train' or 'seg distill'.")],
    data: Annotated[Path | None, typer.Option(help="BM-Seg root for the calibration slices (default: the run's "
                                                   "own training patients, never its test patients).")] = None,
    slices: Annotated[int, typer.Option(min=1, help="Calibration slices, spread over the patients.")] = 8,
) -> None:
    """Store each member as an int8 ONNX graph (RUN/fold<k>/int8.onnx) for predict's int8 path."""
    from ..inference.quantize import quantize_run

    quantize_run(run, data, slices, log=typer.echo)


@app.command()
def distill(
    run: Annotated[Path, typer.Argument(help="Ensemble run (e.g. hybrid-attunet++ folds) with held-out test "
                                             "patients.")],
    out: Annotated[Path, typer.Option(help="Student run folder (usable by 'bonemet predict --seg').")],
    student: Annotated[str, typer.Option(help="Student model of the family.")] = "unet++",
    width: Annotated[int | None, typer.Option(min=1, help="Student width (default: the teacher's).")] = None,
    epochs: Annotated[int, typer.Option(min=0, help="0 (with --init-member): no training, the member as it is "
                                                    "(calibrated with --calibration).")] = 40,
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    neg_ratio: Annotated[float | None, typer.Option(help="Lesion-free slices per lesion slice per epoch.")] = 0.5,
    lr_scale: Annotated[float, typer.Option(help="Multiply the thesis learning rates by this.")] = 0.3,
    seed: Annotated[int, typer.Option()] = 0,
    score_data: Annotated[Path | None, typer.Option(help="Also score both on every patient of this BM-Seg root "
                                                         "(unseen data, e.g. a phantom with another seed).")] = None,
    score_only: Annotated[bool, typer.Option(help="Do not train: score the student already in --out.")] = False,
    extra_data: Annotated[Path | None, typer.Option(help="A BM-Seg root of further scans for the teacher to label "
                                                         "(their masks are never read): more training slices for "
                                                         "the student.")] = None,
    calibration: Annotated[float, typer.Option(min=0.0, max=0.9, help="With --extra-data: this share of its patients "
                                               "is not trained on but sets the student's lesion threshold (the one "
                                               "whose masks best agree with the teacher's); 0 = keep 0.5.")] = 0.2,
    calibrate: Annotated[str, typer.Option(help="How --calibration sets the threshold: agreement (best pixel F1 "
                                                "with the teacher's masks) or rate (as many lesion pixels as the "
                                                "teacher).")] = "agreement",
    bf16: Annotated[bool, typer.Option(help=BF16_HELP)] = False,
    pos_weight: Annotated[float, typer.Option(min=1.0, help="BCE weight of the teacher's lesion probabilities "
                                                            "(1 = plain soft BCE).")] = 1.0,
    init_member: Annotated[str | None, typer.Option(help="Start the student from this teacher member's weights "
                                                    "(the teacher's model, or attunet++ for hybrid-attunet++, at its "
                                                    "width) instead of at random; auto: the member whose masks agree "
                                                    "best with the ensemble's on the calibration patients; heldout: "
                                                    "the member with the best lesion F1 on its own fold's held-out "
                                                    "patients.")] = None,
    hard_weight: Annotated[float, typer.Option(min=0.0, max=1.0, help="On the teacher's labelled training slices, "
                                               "this share of the lesion loss is BCE against the true masks "
                                               "(0 = the ensemble's soft outputs only).")] = 0.0,
    device: Device = "auto",
) -> None:
    """Distil the run's ensemble into one student on its soft outputs; compare both on the test patients."""
    from ..evaluation.distill_eval import compare_student
    from ..inference.fast import FastModel, default_paths
    from ..models import model_names
    from ..runs.distill import finished_student
    from ..training.distill import distill as run_distill

    if student not in model_names() or student == "sequential":
        raise BonemetError(f"unknown or unsupported student '{student}'")
    if extra_data is not None and score_data is not None and extra_data.resolve() == score_data.resolve():
        raise BonemetError("the student cannot be scored on the data it trained on: give --extra-data and "
                           "--score-data different roots", extra_data)
    if init_member is not None and init_member not in ("auto", "heldout") and not init_member.isdigit():
        raise BonemetError(f"--init-member takes a member number, auto or heldout, not '{init_member}'")
    member = int(init_member) if init_member and init_member.isdigit() else init_member
    if score_only:
        path = finished_student(run, out)
    else:
        path = run_distill(run, out, student, width, epochs, batch_size, neg_ratio, lr_scale, seed, extra_data,
                           calibration, bf16=bf16, calibrate=calibrate, pos_weight=pos_weight, init_member=member,
                           hard_weight=hard_weight, device=device,
                           prepare_teacher=lambda m: FastModel(m, default_paths()))
    typer.echo(compare_student(run, path))
    if score_data is not None:
        typer.echo(compare_student(run, path, score_data))
