"""Operator fusion for CPU inference: each convolution of a BN-folded model runs with what follows it (ReLU, sigmoid,
the attention gate's sum) as oneDNN post-ops, in one pass over memory.

On CPUs with matrix units a bf16 convolution of these networks costs about as much as one elementwise pass over its
output, so every separate ReLU, sum or sigmoid after it nearly doubles its cost. The fused operations are oneDNN's
``mkldnn::_convolution_pointwise`` (what Inductor's CPU backend emits for the same patterns); the arithmetic is the
convolution's, followed by the same activation, so the answers are those of the unfused model up to the rounding of
one fewer intermediate store.

* ``(Conv2d, [Identity,] ReLU)`` and ``(Conv2d, [Identity,] Sigmoid)`` in a ``Sequential``: one fused convolution.
* ``ModifiedBlock``: the two branches summed in place (one fresh tensor fewer).
* ``AttentionGate``: ``ReLU(W_x x + W_g g)`` as one convolution with a sum and a ReLU post-op, ``psi`` with its
  sigmoid.

``fuse_for_inference`` needs the BatchNorms folded first (``fast.fold_batchnorm``); modules it does not recognise are
left as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.blocks import AttentionGate, ModifiedBlock, up2

__all__ = ["FusedConv", "fuse_for_inference", "fusion_available"]


def fusion_available() -> bool:
    """Whether this torch build has oneDNN's fused convolutions."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class FusedConv(nn.Module):
    """``conv`` followed by ``activation`` (``"relu"``, ``"sigmoid"`` or ``"none"``), optionally after adding
    ``other`` to the convolution's output: ``activation(conv(x) [+ other])`` in one oneDNN call.

    Runs in the CPU autocast dtype when autocast is on (weights cast once per dtype and kept), else in ``x``'s."""

    def __init__(self, conv: nn.Conv2d, activation: str = "none") -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("FusedConv takes convolutions with explicit zero padding")
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.activation = activation
        self._cast: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _params(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        if dtype == self.weight.dtype:
            return self.weight, self.bias
        if dtype not in self._cast:
            self._cast[dtype] = (self.weight.to(dtype), None if self.bias is None else self.bias.to(dtype))
        return self._cast[dtype]

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        w, b = self._params(dtype)
        x = x.to(dtype)
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise(x, w, b, *self.args, self.activation, [None], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(x, other.to(dtype), w, b, *self.args, "add", 1.0,
                                                              self.activation, [None], "")


class _SummedBlock(nn.Module):
    """``ModifiedBlock`` with its two branches summed in place."""

    def __init__(self, block: ModifiedBlock) -> None:
        super().__init__()
        self.main, self.skip = block.main, block.skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(x)
        skip = self.skip(x)
        return out.add_(skip.to(out.dtype))


class _FusedGate(nn.Module):
    """``AttentionGate`` (BN folded, running statistics) with its sum, ReLU and sigmoid fused into convolutions."""

    def __init__(self, gate: AttentionGate) -> None:
        super().__init__()
        self.upsample_g = gate.upsample_g
        self.w_g = gate.w_g[0]
        self.w_x = FusedConv(gate.w_x[0], "relu")
        self.psi = FusedConv(gate.psi[0], "sigmoid")

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        wg = self.w_g(g)
        if self.upsample_g:
            wg = up2(wg)
        return x * self.psi(self.w_x(x, wg))


def _folded(seq: nn.Module) -> bool:
    """Whether a (conv, BN) pair's BN has been folded away (an Identity after the convolution)."""
    return isinstance(seq, nn.Sequential) and len(seq) == 2 and isinstance(seq[0], nn.Conv2d) \
        and isinstance(seq[1], nn.Identity)


def _fuse_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules)
    for k, name in enumerate(names):
        conv = seq._modules[name]
        if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            continue
        # the first module after the convolution that is not an Identity (a folded BN)
        after = next((n for n in names[k + 1:] if not isinstance(seq._modules[n], nn.Identity)), None)
        nxt = seq._modules[after] if after else None
        if isinstance(nxt, (nn.ReLU, nn.Sigmoid)):
            seq._modules[name] = FusedConv(conv, "relu" if isinstance(nxt, nn.ReLU) else "sigmoid")
            seq._modules[after] = nn.Identity()


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """``model`` (BN folded, eval mode) with what it has of the patterns in the module docstring fused, in place;
    returns it."""
    for name, m in list(model.named_modules()):
        parent, _, child = name.rpartition(".")
        if isinstance(m, AttentionGate) and _folded(m.w_g) and _folded(m.w_x) and isinstance(m.psi, nn.Sequential) \
                and isinstance(m.psi[1], nn.Identity):
            model.get_submodule(parent)._modules[child] = _FusedGate(m)
        elif isinstance(m, ModifiedBlock):
            model.get_submodule(parent)._modules[child] = _SummedBlock(m)
    for m in list(model.modules()):
        if isinstance(m, nn.Sequential):
            _fuse_sequential(m)
    return model
