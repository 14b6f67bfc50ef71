"""The segmentation model family and its registry: ``create_model(name, **opts)``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .nested import NestedUNet
from .sequential import SequentialSeg
from .unet import UNet

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "unet": lambda in_channels=3, width=32, **kw: UNet(in_channels, width, attention=False, **kw),
    "attunet": lambda in_channels=3, width=32, **kw: UNet(in_channels, width, attention=True, **kw),
    "unet++": lambda in_channels=3, width=32, block="mb", **kw: NestedUNet(in_channels, width, False, block, **kw),
    "attunet++": lambda in_channels=3, width=32, block="mb", **kw: NestedUNet(in_channels, width, True, block, **kw),
    "hybrid-attunet++": lambda in_channels=3, width=32, block="mb", dual_decoder=True, **kw:
        NestedUNet(in_channels, width, True, block, dual_decoder, **kw),
}
SEQUENTIAL_LESION_MODELS = ("unet", "attunet", "unet++", "attunet++")


def _sequential(in_channels: int = 3, width: int = 32, lesion_model: str = "attunet++", block: str = "mb",
                dilate_px: int = 3) -> nn.Module:
    if lesion_model not in SEQUENTIAL_LESION_MODELS:
        raise ValueError(f"sequential lesion model must be one of {', '.join(SEQUENTIAL_LESION_MODELS)}")
    opts = {"block": block} if lesion_model.endswith("++") else {}
    return SequentialSeg(UNet(in_channels, width), create_model(lesion_model, in_channels=in_channels, width=width,
                                                                **opts), dilate_px)


_REGISTRY["sequential"] = _sequential


def model_names() -> list[str]:
    return list(_REGISTRY)


def create_model(name: str, **opts) -> nn.Module:
    """Build a registered model, e.g. ``create_model("hybrid-attunet++", width=32, in_channels=3)``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model '{name}' (choose from {', '.join(_REGISTRY)})")
    return _REGISTRY[name](**opts)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_options(name: str, block: str = "mb", dual_decoder: bool | None = None,
                  lesion_model: str = "attunet++") -> dict:
    """The options of ``name`` that the CLI switches set (the others do not apply to it)."""
    opts: dict = {}
    if name in ("unet++", "attunet++", "hybrid-attunet++", "sequential"):
        opts["block"] = block
    if name == "hybrid-attunet++" and dual_decoder is not None:
        opts["dual_decoder"] = dual_decoder
    if name == "sequential":
        opts["lesion_model"] = lesion_model
    return opts


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
