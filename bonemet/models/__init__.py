"""The segmentation model family and its registry: ``create_model(name, **opts)``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .nested import NestedUNet
from .sequential import SequentialSeg
from .unet import UNet

@dataclass(frozen=True)
class ModelInfo:
    """What the rest of bonemet knows of a registered model: how to build it and its facts."""

    name: str
    build: Callable[..., nn.Module]
    display: str  # the thesis' name for it
    outputs: tuple[str, ...]  # ("lesion",) or ("lesion", "bone")
    options: tuple[str, ...] = ()  # the CLI switches that apply to it: block, dual_decoder, lesion_model
    single_decoder: str | None = None  # the model one of its members' lesion decoder alone is (distillation)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, display: str, outputs: tuple[str, ...] = ("lesion",), options: tuple[str, ...] = (),
                   single_decoder: str | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model builder under ``name`` with its facts (in the manner of timm's ``register_model``)."""
    def add(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelInfo(name, build, display, outputs, options, single_decoder)
        return build
    return add


@register_model("unet", "Unet")
def _unet(in_channels: int = 3, width: int = 32, **kw) -> nn.Module:
    return UNet(in_channels, width, attention=False, **kw)


@register_model("attunet", "AttUnet")
def _attunet(in_channels: int = 3, width: int = 32, **kw) -> nn.Module:
    return UNet(in_channels, width, attention=True, **kw)


@register_model("unet++", "Unet++", options=("block",))
def _unetpp(in_channels: int = 3, width: int = 32, block: str = "mb", **kw) -> nn.Module:
    return NestedUNet(in_channels, width, False, block, **kw)


@register_model("attunet++", "AttUnet++", options=("block",))
def _attunetpp(in_channels: int = 3, width: int = 32, block: str = "mb", **kw) -> nn.Module:
    return NestedUNet(in_channels, width, True, block, **kw)


@register_model("hybrid-attunet++", "Hybrid-AttUnet++", outputs=("lesion", "bone"), options=("block", "dual_decoder"),
                single_decoder="attunet++")
def _hybrid(in_channels: int = 3, width: int = 32, block: str = "mb", dual_decoder: bool = True, **kw) -> nn.Module:
    return NestedUNet(in_channels, width, True, block, dual_decoder, **kw)


SEQUENTIAL_LESION_MODELS = ("unet", "attunet", "unet++", "attunet++")


@register_model("sequential", "Sequential", outputs=("lesion", "bone"), options=("block", "lesion_model"))
def _sequential(in_channels: int = 3, width: int = 32, lesion_model: str = "attunet++", block: str = "mb",
                dilate_px: int = 3) -> nn.Module:
    if lesion_model not in SEQUENTIAL_LESION_MODELS:
        raise ValueError(f"sequential lesion model must be one of {', '.join(SEQUENTIAL_LESION_MODELS)}")
    opts = {"block": block} if "block" in model_info(lesion_model).options else {}
    return SequentialSeg(UNet(in_channels, width), create_model(lesion_model, in_channels=in_channels, width=width,
                                                                **opts), dilate_px)


def model_names() -> list[str]:
    return list(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """A registered model's facts (one clear error for an unknown name)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model '{name}' (choose from {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


def create_model(name: str, **opts) -> nn.Module:
    """Build a registered model, e.g. ``create_model("hybrid-attunet++", width=32, in_channels=3)``."""
    return model_info(name).build(**opts)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_options(name: str, block: str = "mb", dual_decoder: bool | None = None,
                  lesion_model: str = "attunet++") -> dict:
    """The options of ``name`` that the CLI switches set (the others do not apply to it)."""
    given = {"block": block, "dual_decoder": dual_decoder, "lesion_model": lesion_model}
    return {k: given[k] for k in model_info(name).options if given[k] is not None}


def forward(model: nn.Module, image: torch.Tensor, bone: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(lesion logits, bone logits or None) of any family member, also inside DistributedDataParallel; the
    sequential model gets the true bone only when one is passed."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if getattr(inner, "needs_bone_input", False):
        return split_outputs(model(image, bone))
    return split_outputs(model(image))


def split_outputs(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(lesion logits, bone logits or None) from any model of the family."""
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


def lesion_head(model: nn.Module) -> nn.Conv2d:
    """The 1x1 convolution that gives a family member's lesion logits (the lesion network's, in the sequential
    model)."""
    inner = model.lesion_net if isinstance(model, SequentialSeg) else model
    return inner.heads[0] if hasattr(inner, "heads") else inner.head


def set_lesion_prior(model: nn.Module, prior: float) -> None:
    """Start the lesion head's bias at log(prior / (1 - prior)): a pixel whose features are all zero then gets
    ``prior``, not 0.5.

    The head's features come out of ReLUs, so they are zero or more. From a bias near 0, training can settle on
    lesions that silence every feature (probability sigmoid(bias), about 0.5, never more) while negative head
    weights mark everything else: a member whose lesion probability never passes 0.5. From a small prior, silence
    means "no lesion", and a lesion has to be marked by features of positive weight."""
    if not 0 < prior < 1:
        raise ValueError(f"the lesion prior must be between 0 and 1, got {prior}")
    with torch.no_grad():
        lesion_head(model).bias.fill_(math.log(prior / (1 - prior)))
