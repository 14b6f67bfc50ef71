"""Building blocks of the U-Net family (the thesis' chapter 4): conv blocks, attention gate, up-sampling."""

from __future__ import annotations

import functools

import torch
from torch import nn
import torch.nn.functional as F


def conv_bn_relu(cin: int, cout: int, k: int = 3, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ClassicBlock(nn.Sequential):
    """U-Net block: two (3x3 conv with bias, BN, ReLU)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout))


class PlainBlock(nn.Sequential):
    """The original AttUnet++ block H: two (3x3 conv, ReLU), no normalisation."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class ModifiedBlock(nn.Module):
    """The thesis' modified block (MB): two (3x3 conv, BN, ReLU) plus a 1x1 (conv, BN, ReLU) projection of the input."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.main = ClassicBlock(cin, cout)
        self.skip = conv_bn_relu(cin, cout, k=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.skip(x)


class UpConv(nn.Sequential):
    """U-Net decoder step: x2 nearest up-sampling, 3x3 conv, BN, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), conv_bn_relu(cin, cout))


class AttentionGate(nn.Module):
    """AG(g, x) = x * sigmoid(BN(psi(ReLU(BN(W_g g) + BN(W_x x))))) (Oktay et al.).

    ``upsample_g``: ``g`` comes at half resolution. With BN on its running statistics (evaluation), AG(up2(g), x) is
    computed as W_g g first, then up-sampled: the same value (a 1x1 convolution and a fixed affine BN commute with
    bilinear interpolation, whose weights sum to 1), with a quarter of W_g's work and memory traffic. With BN on
    batch statistics (training), the order is the reference's, up-sampling first: the statistics of the
    low-resolution map differ from those of the up-sampled one, so the fast order would train another function."""

    def __init__(self, g_ch: int, x_ch: int, f_int: int, upsample_g: bool = False) -> None:
        super().__init__()
        self.upsample_g = upsample_g
        self.w_g = nn.Sequential(nn.Conv2d(g_ch, f_int, 1), nn.BatchNorm2d(f_int))
        self.w_x = nn.Sequential(nn.Conv2d(x_ch, f_int, 1), nn.BatchNorm2d(f_int))
        self.psi = nn.Sequential(nn.Conv2d(f_int, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.upsample_g and batch_statistics(self.w_g[1]):
            wg = self.w_g(up2(g))  # the reference order: BN's batch statistics over the map at full resolution
        else:
            wg = up2(self.w_g(g)) if self.upsample_g else self.w_g(g)
        h = self.w_x(x)
        h += wg  # in place: at full resolution each fresh tensor is another pass over memory
        return x * self.psi(h.relu_())


def batch_statistics(bn: nn.Module) -> bool:
    """Whether ``bn`` normalises with the batch's own statistics (a BN in training, or one that keeps no running
    statistics); a BN folded into its convolution (an identity) does not."""
    return isinstance(bn, nn.modules.batchnorm._BatchNorm) and (bn.training or bn.running_mean is None)


def cat_for_conv(parts: list[torch.Tensor]) -> torch.Tensor:
    """Channel concatenation of a block's inputs. Under CPU autocast the parts are cast to the autocast dtype first:
    the block's convolutions round their input to it anyway, so the result is the same, while ``torch.cat`` would
    promote a mix of fp32 and bf16 parts to fp32 and double the memory traffic (the bf16 inference path hands some
    tensors on in fp32).

    Without autograd, channels-last parts on the CPU are copied into one preallocated channels-last tensor, slice by
    slice (the cast done by the same copy): the same values, while ``torch.cat`` along the channels of
    channels-last tensors takes a generic strided path that was 4-5x slower than these copies (measured on
    2 x 224 x 224 maps of 192 channels), and was a nested network's costliest operation after its convolutions. Under
    ``torch.compile`` it stays ``torch.cat``, which Inductor plans itself."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    first = parts[0]
    if (not torch.is_grad_enabled() and not torch.compiler.is_compiling() and first.device.type == "cpu"
            and first.dim() == 4
            and all(p.is_contiguous(memory_format=torch.channels_last) and p.shape[1] > 1 for p in parts)):
        n, _, h, w = first.shape
        if dtype is None:
            dtype = functools.reduce(torch.promote_types, (p.dtype for p in parts))
        out = torch.empty(n, sum(p.shape[1] for p in parts), h, w, dtype=dtype, memory_format=torch.channels_last)
        c = 0
        for p in parts:
            out[:, c:c + p.shape[1]].copy_(p)
            c += p.shape[1]
        return out
    if dtype is not None:
        parts = [p.to(dtype) for p in parts]
    return torch.cat(parts, 1)


def up2(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 (align_corners), the nested nets' up-sampling.

    For a channels-last ``x`` that needs gradients, the gradient reaching the up-sampling is made channels-last
    first: it arrives as a channel slice of a concatenation's gradient (strided in either layout), and the
    backward kernel then takes its NCHW path, about 9x slower than the channels-last one (4 x 64 x 64 x 64, bf16
    and fp32 alike), second only to the convolutions in a bf16 training step."""
    y = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    if y.requires_grad and x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
        y.register_hook(_channels_last)
    return y


def _channels_last(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)
