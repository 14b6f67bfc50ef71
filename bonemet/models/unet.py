"""U-Net and Attention U-Net (classic block, up-convolution decoder)."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import AttentionGate, ClassicBlock, UpConv, cat_for_conv


def widths_for(width: int) -> list[int]:
    return [width * m for m in (1, 2, 4, 8, 16)]


class UNet(nn.Module):
    """U-Net (``attention=False``) or AttUnet (gates on the skips, g = the up-convolution's output)."""

    def __init__(self, in_channels: int = 3, width: int = 32, attention: bool = False) -> None:
        super().__init__()
        w = widths_for(width)
        self.pool = nn.MaxPool2d(2)
        self.enc = nn.ModuleList([ClassicBlock(in_channels if i == 0 else w[i - 1], w[i]) for i in range(5)])
        self.up = nn.ModuleList([UpConv(w[i + 1], w[i]) for i in range(4)])
        self.dec = nn.ModuleList([ClassicBlock(2 * w[i], w[i]) for i in range(4)])
        self.gates = nn.ModuleList([AttentionGate(w[i], w[i], max(32, w[i] // 2)) for i in range(4)]) if attention else None
        self.head = nn.Conv2d(w[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips[4]
        for i in range(3, -1, -1):
            g = self.up[i](x)
            s = self.gates[i](g, skips[i]) if self.gates is not None else skips[i]
            x = self.dec[i](cat_for_conv([s, g]))
        return self.head(x)
