"""A small plain CNN for slice classification on a CPU budget, registered as timm models.

Not from the thesis. ImageNet backbones shrink a slice 32x in their stem and later stages and average
the last map, so a few-millimetre lesion in a 40 cm field of view is nearly gone by the head. This
network keeps full resolution in its first block, downsamples only 8x, and pools the last map with a
global max (a lesion anywhere in the slice can fire the head). From random weights on body crops it
reaches held-out slice ROC-AUC 0.73-0.77 on the phantom in 6-7 CPU minutes with ``--bf16``, and
0.80-0.84 on 48 held-out patients with ``--mirror`` in 12-14 minutes (docs/classification-phantom.md).

``small_cnn16`` (0.29 M parameters) and ``small_cnn32`` go through ``timm.create_model`` like any
backbone (``forward_features``, ``forward_head``, ``num_features``, ``global_pool``), so the rest of
bonemet (normalisation from the data config, ``--freeze-backbone``, ``--pretrained``, Grad-CAM on the
last map) treats them as one more CNN.
"""

from __future__ import annotations

import torch
from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from .blocks import conv_bn_relu

__all__ = ["SmallCNN"]
SMALL_CNNS = ("small_cnn16", "small_cnn32")


class SmallCNN(nn.Module):
    """Four stages of two (3x3 conv, BN, ReLU), widths w, 2w, 4w, 8w, with 2x max pooling between them."""

    def __init__(self, width: int = 16, in_chans: int = 3, num_classes: int = 2, global_pool: str = "max",
                 drop_rate: float = 0.0, **_: object) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(4)]
        layers: list[nn.Module] = []
        cin = in_chans
        for i, w in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers += [conv_bn_relu(cin, w, bias=False), conv_bn_relu(w, w, bias=False)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.num_features = self.head_hidden_size = widths[-1]
        self.num_classes = num_classes
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: object) -> dict:
    # CT windows put most pixels of a slice near 0 (air) or mid-grey: centre and scale for that, not ImageNet.
    return {"num_classes": 2, "input_size": (3, 192, 192), "pool_size": None, "mean": (0.5, 0.5, 0.5),
            "std": (0.25, 0.25, 0.25), "first_conv": "features.0.0", "classifier": "head.fc", **kwargs}


default_cfgs = generate_default_cfgs({"small_cnn16": _cfg(), "small_cnn32": _cfg()})


def _create(variant: str, pretrained: bool, **kwargs: object) -> SmallCNN:
    return build_model_with_cfg(SmallCNN, variant, pretrained, **kwargs)


@register_model
def small_cnn16(pretrained: bool = False, **kwargs: object) -> SmallCNN:
    """Width 16: 0.29 M parameters."""
    return _create("small_cnn16", pretrained, width=16, **kwargs)


@register_model
def small_cnn32(pretrained: bool = False, **kwargs: object) -> SmallCNN:
    """Width 32: 1.2 M parameters."""
    return _create("small_cnn32", pretrained, width=32, **kwargs)
