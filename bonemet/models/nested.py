"""UNet++, AttUnet++ and Hybrid-AttUnet++: one nested network with switches (the thesis' chapter 4).

Node X(i, j), j > 0, is H([AG(Up X(i+1, n), X(i, n)) for n < j] + [Up X(i+1, j-1)]); ``unet++``
has no gates. A gated skip AG(Up X(i+1, n), X(i, n)) does not depend on j, so it is computed once
and reused by every later node of its row; the gate takes X(i+1, n) at its own resolution and up-samples
after its 1x1 convolution (the same value, a quarter of the work). ``block`` picks H: ``plain`` (two conv + ReLU) or
``mb`` (the modified block). ``dual_decoder`` duplicates the last node of each skip path (X(3,1),
X(2,2), X(1,3), X(0,4)) and its newest gate, so two structurally identical decoders share the
encoder and the inner nodes; the model then returns ``(lesion, bone)`` logits.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import AttentionGate, ModifiedBlock, PlainBlock, cat_for_conv, up2
from .unet import widths_for


class NestedUNet(nn.Module):
    """The nested U-Net family; see the module docstring for the switches."""

    def __init__(self, in_channels: int = 3, width: int = 32, attention: bool = True, block: str = "mb",
                 dual_decoder: bool = False) -> None:
        super().__init__()
        if block not in ("plain", "mb"):
            raise ValueError(f"unknown block '{block}' (plain or mb)")
        H = ModifiedBlock if block == "mb" else PlainBlock
        w = widths_for(width)
        self.attention, self.dual = attention, dual_decoder
        self.n_dec = 2 if dual_decoder else 1
        self.pool = nn.MaxPool2d(2)
        self.enc = nn.ModuleList([H(in_channels if i == 0 else w[i - 1], w[i]) for i in range(5)])
        nodes, gates = {}, {}
        for j in range(1, 5):
            for i in range(0, 5 - j):
                nodes[f"{i}_{j}"] = nn.ModuleList([H(j * w[i] + w[i + 1], w[i]) for _ in range(self._copies(i, j))])
        if attention:
            for i in range(4):
                for n in range(4 - i):  # AG(Up X(i+1, n), X(i, n)) exists while X(i+1, n) does
                    gates[f"{i}_{n}"] = nn.ModuleList([AttentionGate(w[i + 1], w[i], w[i], upsample_g=True)
                                                       for _ in range(self._gate_copies(i, n))])
        self.nodes = nn.ModuleDict(nodes)
        self.gates = nn.ModuleDict(gates)
        self.heads = nn.ModuleList([nn.Conv2d(w[0], 1, 1) for _ in range(self.n_dec)])

    def _copies(self, i: int, j: int) -> int:
        """Decoder copies of node X(i, j) (and of what depends on it alone): the last nodes are per decoder."""
        return self.n_dec if i + j == 4 and j > 0 else 1

    def _gate_copies(self, i: int, n: int) -> int:
        """Gate (i, n) is the newest gate of the last node X(i, 4-i) when i + n == 3: one per decoder."""
        return self.n_dec if i + n == 3 else 1

    def forward(self, inp: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x: dict[tuple[int, int, int], torch.Tensor] = {}
        gated: dict[tuple[int, int, int], torch.Tensor] = {}
        h = inp
        for i, block in enumerate(self.enc):
            h = block(h if i == 0 else self.pool(h))
            x[(i, 0, 0)] = h

        def node(i: int, j: int, d: int) -> torch.Tensor:
            """X(i, j) as seen by decoder d (shared nodes are stored under d = 0)."""
            dd = d if self._copies(i, j) > 1 else 0
            if (i, j, dd) in x:
                return x[(i, j, dd)]
            parts = [skip(i, n, dd) for n in range(j)]
            parts.append(up2(node(i + 1, j - 1, dd)))
            x[(i, j, dd)] = self.nodes[f"{i}_{j}"][dd](cat_for_conv(parts))
            return x[(i, j, dd)]

        def skip(i: int, n: int, d: int) -> torch.Tensor:
            if not self.attention:
                return node(i, n, d)
            dd = d if self._gate_copies(i, n) > 1 else 0
            if (i, n, dd) not in gated:
                gated[(i, n, dd)] = self.gates[f"{i}_{n}"][dd](node(i + 1, n, dd), node(i, n, dd))
            return gated[(i, n, dd)]

        outs = [self.heads[d](node(0, 4, d)) for d in range(self.n_dec)]
        return (outs[0], outs[1]) if self.dual else outs[0]
