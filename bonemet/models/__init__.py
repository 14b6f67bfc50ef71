"""The segmentation model family and its registry: ``create_model(name, **opts)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .nested import NestedUNet
from .unet import UNet

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "unet": lambda in_channels=3, width=32, **kw: UNet(in_channels, width, attention=False, **kw),
    "attunet": lambda in_channels=3, width=32, **kw: UNet(in_channels, width, attention=True, **kw),
    "unet++": lambda in_channels=3, width=32, block="mb", **kw: NestedUNet(in_channels, width, False, block, **kw),
    "attunet++": lambda in_channels=3, width=32, block="mb", **kw: NestedUNet(in_channels, width, True, block, **kw),
    "hybrid-attunet++": lambda in_channels=3, width=32, block="mb", dual_decoder=True, **kw:
        NestedUNet(in_channels, width, True, block, dual_decoder, **kw),
}


def model_names() -> list[str]:
    return list(_REGISTRY)


def create_model(name: str, **opts) -> nn.Module:
    """Build a registered model, e.g. ``create_model("hybrid-attunet++", width=32, in_channels=3)``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model '{name}' (choose from {', '.join(_REGISTRY)})")
    return _REGISTRY[name](**opts)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
