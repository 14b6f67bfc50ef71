"""A classification run folder: its configuration, its splits and its model(s), and the row name of the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.datasets import CROPS
from ..data.splits import load_splits
from ..errors import BonemetError
from ..fileio import read_config
from ..models.classifiers import FUSION_BRANCHES, create_classifier, family
from .checkpoint import finished_checkpoint, load_checkpoint, load_weights
from .config import RunConfig
from .schedules import PRESETS

__all__ = ["DISPLAY", "ClsConfig", "build_classifier", "cls_label", "load_cls_run", "metastasis_probs"]


@dataclass(frozen=True)
class ClsConfig(RunConfig):
    """Everything that defines a classification run (stored as RUN/config.json)."""

    model: str = "resnext50_32x4d"
    pretrained: list[str] = field(default_factory=list)
    freeze_backbone: bool = False
    schedule: str | None = None  # cnn | transformer; None = by model family
    epochs: int | None = None  # None = the schedule's own length (60 for CNNs, 80 for transformers)
    size: int | None = None  # None = the model's own input size
    global_pool: str | None = None  # CNNs: avg (timm default) or max
    crop: str = "none"  # none | body (each slice cropped to the body's bounding square)
    context: int = 0  # neighbouring slices stacked on each side as extra channels (2.5D)
    mirror: bool = False  # left-right asymmetry of each input as extra channels
    masks: str | None = None  # BM-Seg root with each slice's lesion mask: auxiliary lesion-map loss (CNNs)
    mask_weight: float = 1.0
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    alpha: float = 0.8
    gamma: float = 2.0
    vflip: float = 0.5
    fusion_cnn: str = FUSION_BRANCHES[0]
    fusion_vit: str = FUSION_BRANCHES[1]
    weights: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """An unset epoch count becomes the schedule's own length (so that its switch points stay the thesis'
        epochs), then every check (``checks``)."""
        if self.epochs is None and self.schedule in (None, "cnn", "transformer"):
            object.__setattr__(self, "epochs", PRESETS[self.schedule_name()][0])  # still being built
        super().__post_init__()

    def checks(self) -> list[tuple[bool, str]]:
        return [
            *super().checks(),
            (self.crop in CROPS, f"unknown crop '{self.crop}' (choose from {', '.join(CROPS)})"),
            (isinstance(self.context, int) and self.context >= 0, f"--context must be 0 or more, got {self.context}"),
            (not (self.masks and self.freeze_backbone),
             "--masks trains the backbone's feature map: it cannot go with --freeze-backbone"),
            (self.schedule in (None, "cnn", "transformer"), f"unknown schedule '{self.schedule}' (cnn or transformer)"),
            (self.size is None or (isinstance(self.size, int) and self.size >= 32),
             f"size must be 32 or more, got {self.size}"),
            (isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be 1 or more, got {self.epochs}"),
        ]

    def schedule_name(self) -> str:
        return self.schedule or ("transformer" if family(self.model) == "transformer" else "cnn")

    @property
    def in_chans(self) -> int:
        return 3 * (2 * self.context + 1) * (2 if self.mirror else 1)

    def input_options(self) -> dict:
        """How every slice becomes model input (``ClassificationDataset`` keywords), the same in training,
        evaluation and prediction (``explain_run`` passes the same fields to ``prepare_image``)."""
        return {"crop": self.crop, "context": self.context, "mirror": self.mirror}

    def model_opts(self) -> dict:
        return {"cnn": self.fusion_cnn, "vit": self.fusion_vit} if self.model == "fusion" else {}


def build_classifier(cfg: ClsConfig) -> torch.nn.Module:
    """The run's classifier; a run trained with ``--masks`` also has its ``lesion_head`` (unused at inference)."""
    model = create_classifier(cfg.model, img_size=cfg.size, global_pool=cfg.global_pool, in_chans=cfg.in_chans,
                              mirror=cfg.mirror, **cfg.model_opts())
    if cfg.masks:
        if family(cfg.model) != "cnn":
            raise BonemetError(f"--masks needs a CNN (a spatial feature map to supervise); {cfg.model} is a "
                               f"{family(cfg.model)} model")
        model.lesion_head = torch.nn.Conv2d(model.backbone.num_features, 1, 1)
    return model


def metastasis_probs(models: list[torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Each classifier's metastasis probability (softmax, class 1) on a batch, (n_models, B); a run's ensemble
    is their mean over the first axis."""
    return torch.stack([torch.softmax(m(x).float(), 1)[:, 1] for m in models])


def load_cls_run(run: str | Path) -> tuple[ClsConfig, dict, list[torch.nn.Module]]:
    """A finished run's config, split and model(s) (the chosen checkpoint of each), in eval mode."""
    run = Path(run)
    if not (run / "config.json").exists():
        raise BonemetError("not a classification run folder (no config.json)", run)
    cfg = read_config(ClsConfig, run / "config.json", "classification run configuration")
    split = load_splits(run / "splits.json")
    models = []
    for k in range(len(split["folds"])):
        path = finished_checkpoint(run / f"fold{k}", f"model {k}", " (run 'bonemet cls train ... --resume')")
        models.append(load_weights(build_classifier(cfg), load_checkpoint(path), path).eval())
    return cfg, split, models


DISPLAY = {"resnext50_32x4d": "ResNeXt50", "densenet201": "DenseNet201", "densenet161": "DenseNet161",
           "efficientnet_b0": "EfficientNet-B0", "inception_v3": "Inception-v3", "vit_tiny_patch16_224": "ViT-Tiny",
           "vit_small_patch16_224": "ViT-Small", "deit_tiny_patch16_224": "DeiT-Tiny",
           "deit_small_patch16_224": "DeiT-Small", "deit_tiny_distilled_patch16_224": "DeiT-Tiny (distilled)",
           "deit_small_distilled_patch16_224": "DeiT-Small (distilled)", "fusion": "ViT-Tiny + ResNeXt50"}


def cls_label(cfg: ClsConfig) -> str:
    name = DISPLAY.get(cfg.model, cfg.model)
    if cfg.model == "fusion" and (cfg.fusion_cnn, cfg.fusion_vit) != ("resnext50_32x4d", "vit_tiny_patch16_224"):
        name = f"{DISPLAY.get(cfg.fusion_vit, cfg.fusion_vit)} + {DISPLAY.get(cfg.fusion_cnn, cfg.fusion_cnn)}"
    if cfg.context:
        name += f" 2.5D ({2 * cfg.context + 1} slices)"
    if cfg.mirror:
        name += " + mirror"
    return name + (" (frozen backbone)" if cfg.freeze_backbone else "")
