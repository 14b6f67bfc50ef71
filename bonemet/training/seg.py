"""Segmentation training (the thesis' protocol): K fold models on patient-level folds, resumable, seeded.

Run folder::

    RUN/config.json        the options, the data preprocessing (window, size, channels), the schedule
    RUN/splits.json        folds and held-out test patients (which patients each member saw)
    RUN/fold<k>/metrics.csv, last.pt, best.pt (with --select best), done.json

Model selection never looks at patients that are scored: ``--select last`` (default) keeps the last
epoch; ``--select best`` keeps the best lesion F1 on an inner validation split carved out of the
fold's training patients.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data.bmseg import SegSlice, load_bmseg
from ..data.datasets import UNKNOWN_BONE_TARGET, SegmentationDataset
from ..data.splits import add_inner_validation, check_no_leakage, paper_splits, patient_splits
from ..errors import BonemetError
from ..evaluation.metrics import Counts, confusion, pixel_scores
from ..fileio import read_json, write_json
from ..models import forward
from ..devices import model_device, on_device
from ..log import console
from ..runs.seg import SegConfig, build_model, seg_dataset
from .augment import SegAugment, density_pivots
from .distributed import barrier, unwrap
from .loop import (FoldRecipe, Runtime, announce_distributed, fit_fold, folds_to_train, make_optimizer, run_split,
                   sampling_flags, start_run)
from .schedule import PiecewiseLR


def data_preprocessing(root: Path) -> dict:
    """What the images of a data root went through (window...), from the files bonemet wrote there."""
    for meta in (root / "conversion.json", root.parent / "phantom.json", root / "phantom.json"):
        if meta.exists():
            info = read_json(meta, "data description")
            return {"window": info.get("window", "unknown"), "source": str(meta)}
    return {"window": "unknown (images used as given)", "source": None}


BONE_MODELS = ("hybrid-attunet++", "sequential")  # learn bone too: a bone head, or bone first


def refuse_missing_bone(cfg: SegConfig, slices: list[SegSlice], root: Path) -> None:
    """A model that learns bone cannot train without bone masks: one clear line instead. The sequential model
    needs every slice's, whole (it multiplies its input by the bone mask); Hybrid-AttUnet++ leaves the slices
    without one out of its bone term (``seg_loss``), so it needs some. A slice can lack a bone mask only on purpose:
    the data check refuses a missing file unless ``patients.csv`` says ``bone`` = ``none`` for it."""
    lacking = [s for s in slices if s.bone is None or (cfg.model == "sequential" and s.bone_partial)]
    if cfg.model in BONE_MODELS and lacking and (cfg.model == "sequential" or len(lacking) == len(slices)):
        kind = "no full bone mask" if any(s.bone is not None for s in lacking) else "no bone mask"
        raise BonemetError(f"{len(lacking)} of {len(slices)} slices have {kind} (e.g. {lacking[0].image.name}): "
                           f"{cfg.model} learns bone too, so it needs every slice's bone mask; add them, or train a "
                           "lesion-only model (unet, attunet, unet++ or attunet++)", root)


def seg_loss(lesion_logits: torch.Tensor, bone_logits: torch.Tensor | None, batch: dict, cfg: SegConfig
             ) -> torch.Tensor:
    """0.7 BCE(lesion) + 0.3 BCE(bone) for two-headed models, BCE(lesion) otherwise.

    ``pos_weight`` > 1 up-weights lesion pixels (an option for data far more imbalanced than BM-Seg,
    whose lesions cover about 2.7 % of the pixels; the thesis uses plain BCE). ``lesion_dice`` > 0 adds that
    weight times MONAI's soft Dice loss of the lesion output, over all pixels of the batch at once (nnU-Net's
    Dice + cross-entropy; a batch of lesion-free slices then costs only its false positives). Slices without a
    bone mask (``has_bone`` false: real negatives nobody outlined the bones of) add nothing to the bone term,
    instead of teaching the bone head that they hold no bone; a partial bone label (``bone_partial``) adds the
    mean over the pixels it knows, its unknown ones (``UNKNOWN_BONE_TARGET``) left out.
    """
    pw = None if cfg.pos_weight == 1.0 else torch.tensor(cfg.pos_weight, device=lesion_logits.device)
    lesion_loss = F.binary_cross_entropy_with_logits(lesion_logits, batch["lesion"], pos_weight=pw)
    if cfg.lesion_dice:
        lesion_loss = lesion_loss + cfg.lesion_dice * _batch_dice(lesion_logits.float(), batch["lesion"].float())
    if bone_logits is None:
        return lesion_loss
    has, partial = batch.get("has_bone"), batch.get("bone_partial")
    whole = not isinstance(has, torch.Tensor) or bool(has.all())
    partial = isinstance(partial, torch.Tensor) and bool(partial.any())
    if whole and not partial:
        bone_loss = F.binary_cross_entropy_with_logits(bone_logits, batch["bone"])
    else:
        bce = F.binary_cross_entropy_with_logits(bone_logits, batch["bone"], reduction="none")
        w = torch.ones(len(bce), device=bce.device, dtype=bce.dtype) if whole else has.to(bce.device, bce.dtype)
        if partial:
            known = (batch["bone"] != UNKNOWN_BONE_TARGET).to(bce.dtype)
            per = (bce * known).sum(dim=(1, 2, 3)) / known.sum(dim=(1, 2, 3)).clamp(min=1.0)
            w = w * (known.sum(dim=(1, 2, 3)) > 0)
        else:
            per = bce.mean(dim=(1, 2, 3))
        bone_loss = (per * w).sum() / w.sum().clamp(min=1.0)
    return cfg.lesion_weight * lesion_loss + cfg.bone_weight * bone_loss


def _batch_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MONAI's soft Dice loss of ``sigmoid(logits)`` against ``target``, the batch's pixels taken as one set."""
    from monai.losses import DiceLoss

    return DiceLoss(sigmoid=True, batch=True)(logits, target)


def make_split(cfg: SegConfig, slices: list[SegSlice], flags: np.ndarray) -> dict:
    """The run's split; ``flags`` marks lesion slices (patient status stratifies test and folds)."""
    items = [s.name for s in slices]
    if cfg.protocol == "paper":
        return paper_splits(items, cfg.folds)
    patients = [s.patient for s in slices]
    has_lesion = {p for p, f in zip(patients, flags) if f}
    labels = [int(p in has_lesion) for p in patients]
    if len(set(labels)) < 2:
        labels = None  # BM-Seg: every patient is metastatic
    sp = patient_splits(items, patients, cfg.folds, cfg.test_patients, cfg.seed, labels, cfg.train_always)
    if cfg.select == "best":
        add_inner_validation(sp, cfg.inner_val, cfg.seed)
    return sp


def _fold_items(split: dict, fold: dict, slices: list[SegSlice]
                ) -> tuple[list[SegSlice], list[SegSlice], list[SegSlice]]:
    """(fit, selection, held-out) slices of a fold."""
    by_name = {s.name: s for s in slices}
    if split["protocol"] == "paper":
        return [by_name[n] for n in fold["train"]], [], [by_name[n] for n in fold["val"]]
    fit_p = set(fold.get("fit_patients", fold["train_patients"]))
    sel_p = set(fold.get("inner_val_patients", []))
    val_p = set(fold["val_patients"])
    return ([s for s in slices if s.patient in fit_p], [s for s in slices if s.patient in sel_p],
            [s for s in slices if s.patient in val_p])


def lesion_slice_flags(slices: list[SegSlice], threshold: int) -> np.ndarray:
    """Which slices hold lesion pixels (read once, for --neg-ratio sampling)."""
    from ..data.images import read_mask

    return np.array([s.lesion is not None and bool(read_mask(s.lesion, threshold).any()) for s in slices])


def quick_scores(model: torch.nn.Module, ds: SegmentationDataset, cfg: SegConfig) -> dict[str, float]:
    """Validation loss and pooled lesion F1 / Dice-like score for the epoch log (every process of a torchrun job
    scores the same weights on the same slices, alone)."""
    if len(ds) == 0:
        return {}
    model = unwrap(model)
    model.eval()
    device = model_device(model)
    total, loss_sum, n = Counts(), 0.0, 0
    with torch.no_grad():
        for batch in DataLoader(ds, batch_size=cfg.batch_size, shuffle=False):
            batch = on_device(batch, device)
            lo, bo = forward(model, batch["image"])
            loss_sum += float(seg_loss(lo, bo, batch, cfg)) * len(batch["image"])
            n += len(batch["image"])
            total = total + confusion((lo > 0).cpu().numpy(), batch["lesion"].cpu().numpy() > 0.5)
    return {"loss": loss_sum / n, "lesion_f1": pixel_scores(total)["F1"]}


def _density_pivots(cfg: SegConfig, window: str) -> list[float] | None:
    """The image value of ``augment.DENSITY_PIVOT_HU`` in each input channel of images in ``window``, for
    ``cfg.density_aug``."""
    if not cfg.density_aug:
        return None
    pivots = density_pivots(window, cfg.channels)
    if pivots is None:
        raise BonemetError(f"--density-aug needs images in a known CT window (bone, soft, wide or multi), but the "
                           f"images' window is {window}", Path(cfg.data))
    return pivots


def train_fold(cfg: SegConfig, run: Path, k: int, fit: list[SegSlice], sel: list[SegSlice], held: list[SegSlice],
               resume: bool, flags: np.ndarray | None = None, rt: Runtime = Runtime()) -> dict:
    """Train fold ``k`` on ``fit`` (``loop.fit_fold``); ``flags`` (lesion slice or not, per ``fit`` slice) serves
    --neg-ratio."""
    paper = cfg.protocol == "paper"  # the reference run, leaks and all, so that they can be measured
    pivots = _density_pivots(cfg, cfg.preprocessing.get("window", "unknown"))
    aug = SegAugment(masks_follow=not paper, intensity=cfg.intensity_aug, scale=cfg.scale_aug,
                     density=cfg.density_aug, pivots=pivots) if cfg.augment else None
    if paper:
        sel = held  # the reference keeps the epoch with the best F1 on the very fold it reports
    if cfg.neg_ratio is None:
        flags = None
    elif flags is None:
        flags = lesion_slice_flags(fit, cfg.threshold)

    def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = build_model(cfg)
        return model, make_optimizer(cfg.optimizer, model.parameters())

    def datasets(_model) -> tuple:
        held_ds = seg_dataset(cfg, held)
        return seg_dataset(cfg, fit, aug), held_ds, held_ds if paper else seg_dataset(cfg, sel)

    def step(model: torch.nn.Module, precision) -> Callable:
        def one(batch: dict) -> tuple[torch.Tensor, int]:
            batch = on_device(batch, rt.device)
            with precision.autocast():  # autocast runs the BCE in fp32
                lo, bo = forward(model, precision.to_input(batch["image"]), batch["bone"])
                return seg_loss(lo, bo, batch, cfg), len(batch["image"])
        return one

    recipe = FoldRecipe(
        name="fold", build=build, schedule=PiecewiseLR("seg", cfg.epochs, cfg.lr_scale), datasets=datasets,
        step=step, scores=lambda model, ds: quick_scores(model, ds, cfg),
        selection_score=lambda scores: scores["lesion_f1"], heldout_shown=("lesion_f1", "lesion F1"),
        selection=("best lesion F1 on the scored fold itself (the reference code's choice: selection on the test "
                   "fold, leaky)" if paper else "best lesion F1 on inner-validation patients"),
        flags=sampling_flags(flags, cfg.neg_ratio, f"fold {k}", "lesion"), augment=aug,
        unused_parameters=cfg.model == "sequential", heldout_selects=paper,
        # the reference code creates a new Adam every epoch: its moments start from zero each time
        new_optimizer=(lambda model: make_optimizer(cfg.optimizer, model.parameters())) if paper else None)
    return fit_fold(cfg, run, k, recipe, resume, rt, bool(sel))


def train_segmentation(cfg: SegConfig, run: str | Path, resume: bool = False,
                       given: Collection[str] | None = None, fold: int | None = None,
                       rt: Runtime = Runtime()) -> Path:
    """Train the fold models of a run (see the module docstring); returns the run folder.

    ``resume`` goes on with the run's own configuration; ``given`` names the fields the caller set on purpose
    (None: all of ``cfg``), which must then equal the run's. ``fold``: train that fold only, into a run folder that
    other processes may be filling with its other folds at the same time (the configuration and the split are
    written by the first, and every later call checks that they are the same). ``rt``: the device, loader workers
    and torchrun process group (none of which changes what the run is).
    """
    run = Path(run)
    world = rt.world
    cfg = start_run(run, cfg, "segmentation run configuration", resume, given, fold, world)
    index = load_bmseg(cfg.data, require_patients=cfg.protocol == "patient")
    slices = index.slices
    refuse_missing_bone(cfg, slices, index.root)
    prep = data_preprocessing(Path(cfg.data))
    _density_pivots(cfg, prep["window"])  # an unknown window is refused before anything is written
    flags = lesion_slice_flags(slices, cfg.threshold)  # read every mask once
    flag_of = {s.name: bool(f) for s, f in zip(slices, flags)}
    split = make_split(cfg, slices, flags)
    split["root"] = cfg.data
    if split["protocol"] == "patient":
        check_no_leakage(split)
    split = run_split(run, split, resume, fold, world)
    cfg = cfg.with_(preprocessing={**prep, "size": cfg.size, "channels": cfg.channels,
                         "intensity": "pixel / 255", "mask_threshold": cfg.threshold, "mask_resize": cfg.mask_resize,
                         "scale": (f"physical: {cfg.pixel_mm} mm pixels, a {cfg.size * cfg.pixel_mm:g} mm field "
                                   "centred on the body" if cfg.pixel_mm else "whole slice resized to the model size"),
                         **({"context": f"the slices about {cfg.context_mm:g} mm below and above as the first and last "
                                        "channels, in grey"} if cfg.context_mm else {}),
                         "schedule": PiecewiseLR("seg", cfg.epochs, cfg.lr_scale).describe()})
    if world.main:
        write_json(run / "config.json", asdict(cfg))
        if split["protocol"] == "paper":
            console.print(f"[yellow]warning:[/] {split['label']}")
    announce_distributed(cfg, world)
    barrier(world)
    for k in folds_to_train(run, len(split["folds"]), fold, resume):
        fit, sel, held = _fold_items(split, split["folds"][k], slices)
        if not fit:
            raise BonemetError(f"fold {k} has no training slices")
        train_fold(cfg, run, k, fit, sel, held, resume, np.array([flag_of[s.name] for s in fit]), rt)
    return run
