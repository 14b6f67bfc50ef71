"""A segmentation run folder: its configuration (``config.json``, checked when built or read), its splits and its
members (``fold<k>/``, each with the checkpoint its ``done.json`` names), the model each member is, and the name of
the thesis row the run maps to. Training writes runs; evaluation, prediction and the benches read them here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import SegmentationDataset
from ..data.splits import load_splits
from ..errors import BonemetError
from ..fileio import read_config
from ..models import create_model, forward, model_info, model_options, set_lesion_prior
from .checkpoint import finished_checkpoint, load_checkpoint, load_weights
from .config import RunConfig

__all__ = ["Probs", "SegConfig", "average", "build_model", "ensemble_probs", "load_member", "load_run",
           "member_probs", "model_label", "predict_probs", "seg_dataset"]


@dataclass(frozen=True)
class SegConfig(RunConfig):
    """Everything that defines a segmentation run (stored as RUN/config.json)."""

    model: str = "hybrid-attunet++"
    folds: int = 5
    protocol: str = "patient"
    epochs: int = 60
    size: int = 224
    width: int = 32
    channels: int = 3
    block: str = "mb"
    dual_decoder: bool | None = None
    lesion_model: str = "attunet++"
    lesion_weight: float = 0.7
    pos_weight: float = 1.0
    lesion_dice: float = 0.0  # weight of a soft Dice term over the batch's lesion pixels added to the lesion BCE
    bone_weight: float = 0.3
    threshold: int = 0
    mask_resize: str = "nearest"
    pixel_mm: float | None = None  # physical scale (data.physical); None: the thesis' whole-slice resize
    intensity_aug: bool = False  # domain randomisation of intensities in training (training.augment.SegAugment)
    scale_aug: float = 0.0  # random zoom in training by up to this fraction either way (training.augment.SegAugment)
    density_aug: float = 0.0  # bone (HU above 100) scaled in training by a factor in [1/(1+D), 1+D] (augment)
    train_always: list = field(default_factory=list)  # patients in every fold's training part (data.splits)
    lesion_prior: float | None = None  # the lesion head's bias starts at its log-odds (models.set_lesion_prior)
    context_mm: float = 0.0  # the slices about this far below and above as the input's outer channels (data.physical)

    def checks(self) -> list[tuple[bool, str]]:
        from ..models import SEQUENTIAL_LESION_MODELS, model_names

        return [
            (self.model in model_names(), f"unknown model '{self.model}' (choose from {', '.join(model_names())})"),
            (self.model != "sequential" or self.lesion_model in SEQUENTIAL_LESION_MODELS,
             f"unknown lesion model '{self.lesion_model}' (choose from {', '.join(SEQUENTIAL_LESION_MODELS)})"),
            (self.block in ("mb", "plain"), f"unknown block '{self.block}' (mb or plain)"),
            (self.protocol in ("patient", "paper"), f"unknown protocol '{self.protocol}' (patient or paper)"),
            *super().checks(),
            (isinstance(self.size, int) and self.size >= 32 and self.size % 16 == 0,
             f"size must be a multiple of 16 and at least 32 (the models halve it four times), got {self.size}"),
            (isinstance(self.width, int) and self.width >= 1, f"width must be 1 or more, got {self.width}"),
            (self.channels in (1, 2, 3), f"channels must be 1, 2 or 3, got {self.channels}"),
            (isinstance(self.epochs, int) and self.epochs >= 0, f"epochs must be 0 or more, got {self.epochs}"),
            (self.pixel_mm is None or (isinstance(self.pixel_mm, (int, float)) and 0.1 <= self.pixel_mm <= 10),
             f"pixel_mm must be a pixel size in mm between 0.1 and 10, got {self.pixel_mm}"),
            (isinstance(self.train_always, list) and all(isinstance(p, str) for p in self.train_always),
             f"train_always must be a list of patient names, got {self.train_always!r}"),
            (isinstance(self.scale_aug, (int, float)) and 0 <= self.scale_aug <= 1,
             f"scale_aug must be a fraction between 0 and 1, got {self.scale_aug}"),
            (isinstance(self.density_aug, (int, float)) and 0 <= self.density_aug <= 2,
             f"density_aug must be between 0 and 2, got {self.density_aug}"),
            (self.lesion_prior is None or (isinstance(self.lesion_prior, (int, float)) and 0 < self.lesion_prior < 1),
             f"lesion_prior must be a probability between 0 and 1, got {self.lesion_prior}"),
            (isinstance(self.lesion_dice, (int, float)) and self.lesion_dice >= 0,
             f"lesion_dice must be a loss weight of 0 or more, got {self.lesion_dice}"),
            (isinstance(self.context_mm, (int, float)) and 0 <= self.context_mm <= 100,
             f"context_mm must be a distance in mm between 0 and 100, got {self.context_mm}"),
            (not self.context_mm or (self.pixel_mm is not None and self.channels == 3),
             "neighbouring slices as context (context_mm) need physical scale (pixel_mm) and 3 channels: the slices "
             "below and above fill the outer two"),
        ]

    def model_opts(self) -> dict:
        return {"in_channels": self.channels, "width": self.width,
                **model_options(self.model, self.block, self.dual_decoder, self.lesion_model)}


def seg_dataset(cfg: SegConfig, slices: list, transform=None) -> SegmentationDataset:
    """``slices`` as the run's models see them (size, channels, mask threshold and resize, physical scale)."""
    return SegmentationDataset(slices, cfg.size, cfg.channels, cfg.threshold, cfg.mask_resize, transform=transform,
                               pixel_mm=cfg.pixel_mm, context_mm=cfg.context_mm)


Probs = tuple[np.ndarray, np.ndarray | None]  # (lesion, bone or None) probabilities


def ensemble_probs(models: list[torch.nn.Module], x: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """EH-AttUnet++'s rule on one batch: the mean of the members' sigmoid probabilities, (B, 1, H, W) lesion or
    (B, 2, H, W) lesion and bone. ``flip``: each member also on the left-right mirrored input, mirrored back."""
    lesion, bone = [], []
    for m in models:
        for mirrored in ((False, True) if flip else (False,)):
            outs = forward(m, x.flip(-1) if mirrored else x)
            lo, bo = (o if o is None or not mirrored else o.flip(-1) for o in outs)
            lesion.append(torch.sigmoid(lo))
            if bo is not None:
                bone.append(torch.sigmoid(bo))
    return torch.cat([torch.stack(lesion).mean(0)] + ([torch.stack(bone).mean(0)] if bone else []), 1).float()


def average(member_probs: list[Probs]) -> Probs:
    """The ensemble's probabilities from its members' (EH-AttUnet++'s rule: their mean)."""
    return tuple(None if member_probs[0][i] is None else np.mean([p[i] for p in member_probs], axis=0)
                 for i in (0, 1))  # type: ignore[return-value]


@torch.no_grad()
def predict_probs(models: list[torch.nn.Module], ds: SegmentationDataset, batch_size: int = 8) -> Probs:
    """``ensemble_probs`` of ``models`` over ``ds``: lesion (N, S, S) and bone (or None), on the device of the
    first model's weights."""
    from torch.utils.data import DataLoader

    from ..devices import model_device

    for m in models:
        m.eval()
    device = model_device(models[0]) if models else torch.device("cpu")
    parts = [ensemble_probs(models, batch["image"].to(device)).cpu().numpy()
             for batch in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)]
    if not parts:
        return np.zeros((0, ds.size, ds.size), np.float32), None
    probs = np.concatenate(parts)
    return probs[:, 0], (probs[:, 1] if probs.shape[1] > 1 else None)


def member_probs(members: list[torch.nn.Module], ds: SegmentationDataset,
                 batch_size: int) -> tuple[list[Probs], Probs]:
    """Each member's probabilities over ``ds`` and their mean (the ensemble's), from one pass per member."""
    alone = [predict_probs([m], ds, batch_size) for m in members]
    return alone, average(alone)


def build_model(cfg: SegConfig) -> torch.nn.Module:
    """The run's model, untrained (a member's weights go in with ``load_member``); its lesion head's bias at
    ``cfg.lesion_prior`` when the run sets one."""
    model = create_model(cfg.model, **cfg.model_opts())
    if cfg.lesion_prior is not None:
        set_lesion_prior(model, cfg.lesion_prior)
    return model


def load_run(run: Path) -> tuple[SegConfig, dict]:
    """A segmentation run's configuration and splits, each checked as it is read."""
    if not (run / "config.json").exists():
        raise BonemetError("not a segmentation run folder (no config.json)", run)
    cfg = read_config(SegConfig, run / "config.json", "segmentation run configuration")
    split = load_splits(run / "splits.json")
    return cfg, split


def load_member(cfg: SegConfig, run: Path, k: int) -> torch.nn.Module:
    """Fold ``k``'s finished model of ``run``, in eval mode (one clear line if it is missing or damaged)."""
    path = finished_checkpoint(run / f"fold{k}", f"fold {k}", " (run 'bonemet seg train ... --resume')")
    return load_weights(build_model(cfg), load_checkpoint(path), path).eval()


def model_label(cfg: SegConfig) -> str:
    """The row name of a run, naming the one thesis row it maps to: the nested nets' block is part of it (the
    thesis' "AttUnet++" row is the plain block, its "AttUnet++ + MB" row the modified one; its "Unet++" row, like
    the reference code, uses MB)."""
    info = model_info(cfg.model)
    name = info.display
    if "lesion_model" in info.options:
        name += f" (Unet, {model_info(cfg.lesion_model).display})"
    elif "block" in info.options and cfg.block == "plain":
        name += " (plain block)"
    elif cfg.model == "attunet++":
        name += " + MB"
    if cfg.model == "hybrid-attunet++" and cfg.dual_decoder is False:
        name += " (single decoder)"
    return name
