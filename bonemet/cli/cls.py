"""``bonemet cls``: slice classifiers (timm backbones, the fusion), training, evaluation, explanations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import BonemetError
from .options import Device, Fold, SyncBN, Workers, given_options

app = typer.Typer(help="Classification: CNN / Transformer slice classifiers and their fusion.", no_args_is_help=True)


@app.command()
def models(
    size: Annotated[int | None, typer.Option(help="Input size for the GMAC count (default: each model's).")] = None,
) -> None:
    """List the offered classifiers with parameter counts, input size and normalisation."""
    from ..markdown import markdown_table
    from ..models import count_parameters
    from ..models.classifiers import SMALL_CNNS, THESIS_BACKBONES, classifier_names, create_classifier, family
    from ..models.cost import gmacs_per_slice

    rows = []
    for name in classifier_names():
        m = create_classifier(name, img_size=size)
        rows.append({"model": name, "family": family(name), "params (M)": f"{count_parameters(m) / 1e6:.2f}",
                     "input px": m.input_size, "GMAC / slice": f"{gmacs_per_slice(m, 3, m.input_size):.2f}",
                     "in the thesis": "yes" if name in (*THESIS_BACKBONES, "fusion") else
                     "no (bonemet's CPU baseline)" if name in SMALL_CNNS else "named in the text"})
    typer.echo(markdown_table(rows))
    typer.echo("Any other timm model name is accepted by 'cls train --model'. Nothing is downloaded: pass "
               "ImageNet weights with --pretrained PATH (safetensors or .pth).")


@app.command()
def train(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option(help="Classification root (Normal/, Abnormal/<patient>/{normal,metastatic}/).")],
    out: Annotated[Path, typer.Option(help="Run folder.")],
    model: Annotated[str, typer.Option(help="A timm backbone of 'bonemet cls models', or fusion.")] = "resnext50_32x4d",
    pretrained: Annotated[list[str] | None, typer.Option(
        help="Local weights (safetensors / .pth state dict); for fusion give it twice: CNN then ViT; 'none' = random.")]
        = None,
    freeze_backbone: Annotated[bool, typer.Option(help="Train the head only (thesis Fig. 5.2).")] = False,
    schedule: Annotated[str | None, typer.Option(help="cnn or transformer (default: by model).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default: the schedule's own length, 60 for "
                                                          "CNNs and 80 for transformers, whose learning rate "
                                                          "switches at epochs 10, 20, 30 and 70).")] = None,
    size: Annotated[int | None, typer.Option(min=32, help="Input size (default: the model's own, 224 / 299).")]
        = None,
    global_pool: Annotated[str | None, typer.Option(help="CNNs: avg (default) or max pooling of the last feature map.")]
        = None,
    crop: Annotated[str, typer.Option(help="none, or body: crop each slice to the square around the body before "
                                           "resizing (also at evaluation and prediction).")] = "none",
    context: Annotated[int, typer.Option(min=0, help="Stack N neighbouring slices on each side as extra channels "
                                                     "(2.5D; also at evaluation and prediction).")] = 0,
    mirror: Annotated[bool, typer.Option(help="Append each input's left-right asymmetry (the slice minus its mirror "
                                              "image) as extra channels (also at evaluation and prediction).")]
        = False,
    masks: Annotated[Path | None, typer.Option(
        help="BM-Seg root holding each slice's lesion mask under the same file name: CNNs also learn a lesion "
             "map on their last feature map (training only; evaluation and prediction are unchanged).")] = None,
    mask_weight: Annotated[float, typer.Option(min=0.0, help="Weight of the lesion-map loss (with --masks).")] = 1.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    optimizer: Annotated[str, typer.Option(help="sgd (momentum 0.9), adam or adamw.")] = "sgd",
    lr_scale: Annotated[float, typer.Option(help="Multiply the schedule's learning rates by this.")] = 1.0,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="Weight decay (decoupled with adamw).")] = 0.0,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Focal loss weight of the metastatic class.")] = 0.8,
    gamma: Annotated[float, typer.Option(min=0.0, help="Focal loss focusing parameter.")] = 2.0,
    folds: Annotated[int, typer.Option(min=1, help="1 = one model (80/20 patient split); K = K grouped folds.")] = 1,
    test_patients: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of patients held out for test.")]
        = 0.2,
    select: Annotated[str, typer.Option(help="last (epoch) or best (ROC-AUC on inner-validation patients).")]
        = "last",
    no_augment: Annotated[bool, typer.Option(help="Switch augmentation off.")] = False,
    vflip: Annotated[float, typer.Option(min=0.0, max=1.0, help="Vertical flip probability (horizontal: 0.5).")]
        = 0.5,
    neg_ratio: Annotated[float | None, typer.Option(help="Per epoch, at most this many normal slices per metastatic "
                                                          "slice (CPU budgets; metastatic slices are few).")] = None,
    eval_every: Annotated[int, typer.Option(min=1, help="Score held-out patients every N epochs (curves only).")]
        = 1,
    bf16: Annotated[bool, typer.Option(help="Train with bfloat16 autocast and channels_last (about 3x faster for "
                                            "small CNNs on CPUs with native bf16); evaluation stays fp32.")] = False,
    fusion_cnn: Annotated[str, typer.Option(help="fusion: the CNN branch.")] = "resnext50_32x4d",
    fusion_vit: Annotated[str, typer.Option(help="fusion: the transformer branch.")] = "vit_tiny_patch16_224",
    seed: Annotated[int, typer.Option()] = 0,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last finished epoch.")] = False,
    fold: Fold = None,
    device: Device = "auto",
    workers: Workers = 0,
    sync_bn: SyncBN = False,
) -> None:
    """Train a slice classifier on patient-level splits (focal loss, thesis schedules).

    On several GPUs or CPU processes: torchrun --nproc_per_node N -m bonemet cls train ... (--batch-size is then
    the global batch)."""
    from ..runs.cls import ClsConfig
    from ..training.cls import train_classification
    from ..training.loop import runtime

    if schedule not in (None, "cnn", "transformer"):
        raise BonemetError(f"unknown schedule '{schedule}' (cnn or transformer)")
    paths = [p for p in (pretrained or []) if p.lower() != "none"]
    cfg = ClsConfig(data=str(data), model=model, pretrained=paths, freeze_backbone=freeze_backbone, schedule=schedule,
                    epochs=epochs, size=size, global_pool=global_pool, crop=crop, context=context, mirror=mirror,
                    masks=None if masks is None else str(masks), mask_weight=mask_weight,
                    batch_size=batch_size, optimizer=optimizer,
                    lr_scale=lr_scale, weight_decay=weight_decay,
                    alpha=alpha, gamma=gamma, folds=folds, test_patients=test_patients, select=select,
                    augment=not no_augment, vflip=vflip, neg_ratio=neg_ratio, bf16=bf16,
                    eval_every=eval_every, fusion_cnn=fusion_cnn, fusion_vit=fusion_vit,
                    seed=seed)
    rt = runtime(device, workers, sync_bn)
    run = train_classification(cfg, out, resume=resume, given=given_options(ctx, {"no_augment": "augment"}),
                               fold=fold, rt=rt)
    if rt.world.main:
        which = f"model {fold}" if fold is not None else "the model(s)"
        typer.echo(f"trained {which} in {run}; next: bonemet cls evaluate {run}")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder of 'cls train'.")],
    data: Annotated[Path | None, typer.Option(help="Data root (default: the run's).")] = None,
    patient_rule: Annotated[str, typer.Option(help="fraction:F or count:N positive slices make a positive patient.")]
        = "fraction:0.1",
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Slice probability threshold.")] = 0.5,
    device: Device = "auto",
) -> None:
    """Table 5.1 layout, ROC-AUC, CIs, patient-level decision, confusion and ROC PNG in RUN/eval."""
    from ..evaluation.cls_eval import evaluate_cls_run

    s = evaluate_cls_run(run, data, patient_rule, threshold, device=device)
    typer.echo((run / "eval" / "table.md").read_text())
    typer.echo(f"tables and figures in {run / 'eval'}: " + ", ".join(Path(f).name for f in s["figures"]))


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (evaluated first when needed).")],
    out: Annotated[Path, typer.Option(help="Folder for compare.md / CSV / roc.png.")] = Path("compare-cls"),
) -> None:
    """Several classification runs in one table (thesis Table 5.2 layout), one ROC figure and the per-model recall
    chart (thesis Fig. 5.5)."""
    from ..evaluation.cls_eval import compare_cls_runs

    res = compare_cls_runs(runs, out)
    typer.echo(res["markdown"])
    typer.echo("figures: " + ", ".join(res["figures"]))


@app.command()
def explain(
    run: Annotated[Path, typer.Argument(help="Run folder of 'cls train'.")],
    slices: Annotated[list[Path] | None, typer.Option("--slices", help="Image files to explain (repeat the option). "
                                                      "Default: test slices picked from RUN/eval/predictions.csv.")]
        = None,
    n: Annotated[int, typer.Option(min=1, help="How many test slices to pick when --slices is not given.")] = 4,
    out: Annotated[Path | None, typer.Option(help="PNG path (default RUN/eval/explain.png).")] = None,
    device: Device = "auto",
) -> None:
    """Grad-CAM (CNNs) and attention rollout (ViT / DeiT) overlays as PNG."""
    from ..evaluation.explain import explain_run

    path = explain_run(run, slices or [], n, out, device=device)
    typer.echo(f"explanations: {path}")
