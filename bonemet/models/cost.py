"""Model cost: parameters and multiply-accumulates per slice (counted by torch's FlopCounterMode)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def gmacs_per_slice(model: torch.nn.Module, in_channels: int, size: int) -> float:
    """GMAC of one forward pass on one ``size`` x ``size`` slice (convolutions and matmuls)."""
    model.eval()
    x = torch.zeros(1, in_channels, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2 / 1e9
