"""Slice classification training (the thesis' chapter 5): timm backbones or the fusion, focal loss,
patient-level splits.

Run folder::

    RUN/config.json        options, preprocessing (input size, normalisation, window), weights used
    RUN/splits.json        held-out test patients and the fold(s); which patients each model saw
    RUN/fold<k>/metrics.csv, last.pt, best.pt (with --select best), done.json

``--folds 1`` (default) is the thesis' 80/20 patient split: one model on every non-test patient.
``--folds K`` trains K models on grouped folds of the non-test patients (their mean is the ensemble).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data.classification import ClsSlice, lesion_mask_paths, load_classification
from ..data.datasets import ClassificationDataset
from ..data.splits import add_inner_validation, check_no_leakage, patient_splits
from ..devices import mixed_dtype, model_device
from ..errors import BonemetError
from ..fileio import write_json
from ..log import logger
from ..models.classifiers import apply_pretrained, backbone_modules
from ..runs.cls import ClsConfig, build_classifier, metastasis_probs
from .augment import SegAugment
from .distributed import barrier, unwrap
from .loop import (FoldRecipe, Runtime, announce_distributed, fit_fold, folds_to_train, make_optimizer, run_split,
                   sampling_flags, start_run)
from .losses import focal_loss
from .schedule import PiecewiseLR
from .seg import data_preprocessing


def lesion_map_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE between a (B, 1, h, w) lesion map and masks max-pooled to its grid (a cell is a
    lesion cell when any of its input pixels is more than half lesion): lesion cells are a few per thousand,
    so each class weighs half."""
    target = (F.adaptive_max_pool2d(mask, logits.shape[-2:]) > 0.5).float()
    pos = target.sum()
    pos_weight = ((target.numel() - pos) / pos).clamp(max=100.0) if pos > 0 else None
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)


def cls_augment(vflip: float = 0.5) -> SegAugment:
    """Rotation up to 35 degrees, horizontal and vertical flips (the thesis gives no flip probabilities; 0.1
    for the vertical one, the thesis' segmentation value, scored no better on the phantom)."""
    return SegAugment(degrees=35.0, p_rotate=1.0, p_hflip=0.5, p_vflip=vflip)


class ImageAugment:
    """A ``SegAugment`` applied to an image tensor alone (the classifiers' datasets hand over tensors)."""

    def __init__(self, augment: SegAugment) -> None:
        self.augment = augment

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return self.augment({"image": t})["image"]


def item_name(root: Path, s: ClsSlice) -> str:
    return s.path.relative_to(root).as_posix()


def make_cls_split(cfg: ClsConfig, root: Path, slices: list[ClsSlice]) -> dict:
    """Patient-level split stratified by patient status (healthy / metastatic)."""
    labels = [s.patient_label for s in slices]
    sp = patient_splits([item_name(root, s) for s in slices], [s.patient for s in slices], cfg.folds,
                        cfg.test_patients, cfg.seed, labels if len(set(labels)) > 1 else None)
    if cfg.select == "best":
        add_inner_validation(sp, cfg.inner_val, cfg.seed)
    check_no_leakage(sp)
    return sp


@torch.no_grad()
def predict_cls(models: list[torch.nn.Module], ds: ClassificationDataset, batch_size: int = 16) -> np.ndarray:
    """Metastasis probability per slice, (n_models, N): softmax of each model (on the device of its weights)."""
    out = []
    for m in models:
        m.eval()
        device = model_device(m)
        probs = [metastasis_probs([m], x.to(device))[0].cpu()
                 for x, _ in DataLoader(ds, batch_size=batch_size, shuffle=False)]
        out.append(torch.cat(probs).numpy() if probs else np.zeros(0, np.float32))
    return np.stack(out) if out else np.zeros((0, len(ds)), np.float32)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else float("nan")


def _quick(model: torch.nn.Module, ds: ClassificationDataset, cfg: ClsConfig) -> dict[str, float]:
    if len(ds) == 0:
        return {}
    # the curves of a mixed-precision run are scored in it too (fast); 'cls evaluate' scores the checkpoint in fp32
    model = unwrap(model)
    device = model_device(model)
    with torch.autocast(device.type, dtype=mixed_dtype(device), enabled=cfg.bf16):
        p = predict_cls([model], ds, cfg.batch_size)[0]
    y = np.array([s.label for s in ds.slices])
    return {"auc": _auc(y, p), "acc": float(((p >= 0.5) == y).mean())}


def _freeze(model: torch.nn.Module) -> None:
    for m in backbone_modules(model):
        m.eval()  # frozen batch-norm statistics too
        for p in m.parameters():
            p.requires_grad_(False)


def train_cls_fold(cfg: ClsConfig, run: Path, k: int, fit: list[ClsSlice], sel: list[ClsSlice],
                   held: list[ClsSlice], resume: bool, masks: list[Path] | None = None, rt: Runtime = Runtime()) -> dict:
    """Train model ``k`` of a run on ``fit`` (``loop.fit_fold``); ``sel`` chooses best.pt; ``held`` only feeds
    the curves. ``masks``: one lesion-mask file per ``fit`` slice (``--masks``), for the lesion-map loss. ``rt``:
    the device, loader workers and torchrun process group."""
    aug = cls_augment(cfg.vflip) if cfg.augment else None

    def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = build_classifier(cfg)
        apply_pretrained(model, cfg.pretrained)
        if cfg.freeze_backbone:
            _freeze(model)
        return model, make_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad],
                                     weight_decay=cfg.weight_decay)

    def datasets(model: torch.nn.Module) -> tuple:
        size = unwrap(model).input_size
        return (ClassificationDataset(fit, size, 3, transform=ImageAugment(aug) if aug else None,
                                      **cfg.input_options(), masks=masks),
                ClassificationDataset(held, size, 3, **cfg.input_options()),
                ClassificationDataset(sel, size, 3, **cfg.input_options()))

    def step(model: torch.nn.Module, precision) -> Callable:
        def one(batch: tuple) -> tuple[torch.Tensor, int]:
            x, y = precision.to_input(batch[0]), batch[1].to(rt.device)
            with precision.autocast():
                if masks:  # the lesion map needs the features: the wrapped model's forward alone would not give them
                    plain = unwrap(model)
                    features = plain.feature_map(x)
                    logits, lesion_map = plain.head(features), plain.lesion_head(features)
                else:
                    logits = model(x)
            loss = focal_loss(logits.float(), y, cfg.alpha, cfg.gamma)
            if masks:
                loss = loss + cfg.mask_weight * lesion_map_loss(lesion_map.float(), batch[2].to(rt.device))
            return loss, len(y)
        return one

    recipe = FoldRecipe(
        name="model", build=build, schedule=PiecewiseLR(cfg.schedule_name(), cfg.epochs, cfg.lr_scale),
        datasets=datasets, step=step, scores=lambda model, ds: _quick(model, ds, cfg),
        selection_score=lambda scores: scores["auc"] if not np.isnan(scores["auc"]) else scores["acc"],
        heldout_shown=("auc", "AUC"), selection="best ROC-AUC on inner-validation patients",
        flags=sampling_flags([s.label == 1 for s in fit], cfg.neg_ratio, f"model {k}",  # --neg-ratio: every
                             "metastatic"),  # metastatic slice and a share of the normal ones
        augment=aug, unused_parameters=bool(masks) or cfg.freeze_backbone,
        # model.train() each epoch must not wake the frozen backbone's BatchNorm
        train_mode=(lambda model: _freeze(unwrap(model))) if cfg.freeze_backbone else None)
    return fit_fold(cfg, run, k, recipe, resume, rt, bool(sel))


def fold_slices(split: dict, fold: dict, slices: list[ClsSlice]) -> tuple[list, list, list]:
    """(fit, selection, held-out) slices of one fold."""
    fit_p = set(fold.get("fit_patients", fold["train_patients"]))
    sel_p, val_p = set(fold.get("inner_val_patients", [])), set(fold["val_patients"])
    if not val_p:  # --folds 1: the curves follow the test patients (never used for selection)
        val_p = set(split["test_patients"])
    return ([s for s in slices if s.patient in fit_p], [s for s in slices if s.patient in sel_p],
            [s for s in slices if s.patient in val_p])


def train_classification(cfg: ClsConfig, run: str | Path, resume: bool = False,
                         given: Collection[str] | None = None, fold: int | None = None,
                         rt: Runtime = Runtime()) -> Path:
    """Train the model(s) of a classification run; returns the run folder. ``resume`` goes on with the run's own
    configuration; ``given`` names the fields the caller set on purpose (None: all), which must equal the run's.
    ``fold`` and ``rt``: as ``train_segmentation``'s."""
    run = Path(run)
    world = rt.world
    cfg = start_run(run, cfg, "classification run configuration", resume, given, fold, world)
    if cfg.masks and world.distributed:
        raise BonemetError("--masks trains through the model's feature map, outside what DistributedDataParallel "
                           "synchronises: train it in one process per fold (--fold K) instead of under torchrun")
    root = Path(cfg.data)
    index = load_classification(root)
    # every slice's mask, found and checked once, before any training
    mask_of = None
    if cfg.masks:
        mask_of = dict(zip((s.path for s in index.slices),
                           lesion_mask_paths(index.slices, cfg.masks, check_labels=True)))
    probe = build_classifier(cfg)  # fails early on a bad model name or pretrained file
    cfg = cfg.with_(weights=apply_pretrained(probe, cfg.pretrained))
    for note in cfg.weights:
        logger.info(note)
    split = make_cls_split(cfg, root, index.slices)
    split["root"] = cfg.data
    split = run_split(run, split, resume, fold, world)
    norms = [(getattr(probe, a).mean.flatten().tolist(), getattr(probe, a).std.flatten().tolist())
             for a in ("norm", "cnn_norm", "vit_norm") if hasattr(probe, a)]
    cfg = cfg.with_(preprocessing={**data_preprocessing(root), "input_size": probe.input_size, "channels": cfg.in_chans,
                         "crop": "body: each slice cropped to the square around the body, then resized"
                         if cfg.crop == "body" else "none: the whole slice resized",
                         "context": f"{cfg.context} slice(s) above and below stacked as channels (file-name order "
                                    "within each patient; edge slices repeated)" if cfg.context else "none",
                         "mirror": "each input's left-right difference x - hflip(x) appended as channels (mean 0), "
                                   "before augmentation" if cfg.mirror else "none",
                         "lesion masks": f"{cfg.masks}: auxiliary lesion-map loss on the last feature map, weight "
                                         f"{cfg.mask_weight} (training only)" if cfg.masks else "none",
                         "intensity": "pixel / 255, then each backbone's mean / std (inside the model)",
                         "normalisation": [{"mean": m, "std": s} for m, s in norms],
                         "schedule": f"{cfg.schedule_name()}: {PiecewiseLR(cfg.schedule_name(), cfg.epochs, cfg.lr_scale).describe()}"})
    if world.main:
        write_json(run / "config.json", asdict(cfg))
    announce_distributed(cfg, world)
    barrier(world)
    for k in folds_to_train(run, len(split["folds"]), fold, resume):
        fit, sel, held = fold_slices(split, split["folds"][k], index.slices)
        if not fit:
            raise BonemetError(f"model {k} has no training slices")
        train_cls_fold(cfg, run, k, fit, sel, held, resume, [mask_of[s.path] for s in fit] if mask_of else None, rt)
    return run
