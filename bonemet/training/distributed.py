"""Data-parallel training of one model over the processes of a torchrun job (torch.distributed).

Each process takes its share of every global batch (``epoch_loader``), DistributedDataParallel averages the
gradients, so that N processes with a global batch B take the same steps as one process with batch B (only
the order of float sums differs). ``--sync-bn`` normalises with the statistics of the whole global batch:
torch's ``SyncBatchNorm`` on GPUs, and :class:`CPUSyncBatchNorm` on CPUs, where torch's has no kernels.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..devices import World


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over the batches of all processes of a Gloo group (CPU tensors).

    The per-channel sums of x and x² and the item count are all-reduced by a differentiable sum whose backward
    pass all-reduces the gradients of those sums (as torch's SyncBatchNorm does on GPUs): every process
    then back-propagates through the global statistics, as one process over the whole batch would. Sums in
    float64, so that E[x²] - E[x]² loses nothing to cancellation. Outside training, or alone, it is BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alone = not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)
        if not self.training or alone:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        xd = x.double()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64)
        stats = _AllReduceSum.apply(torch.cat([xd.sum(dims), (xd * xd).sum(dims), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.float(), alpha=m)
                self.running_var.mul_(1 - m).add_((var * n / max(1.0, float(n) - 1)).float(), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype).view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class _AllReduceSum(torch.autograd.Function):
    """Sum over the process group; the gradient of every process's input is the sum of all processes' gradients
    of the output (each process's loss depends on every input through the sum)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every BatchNorm synchronised over the process group: on GPUs torch's, through timm's converter
    (which also keeps the activation of timm's fused BatchNormAct layers); on CPUs ours, for plain BatchNorm layers
    (the models of the family and small_cnn use nothing else)."""
    if device.type != "cpu":
        from timm.layers import convert_sync_batchnorm as timm_convert

        return timm_convert(model)
    other = {type(m).__name__ for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m) not in PLAIN_BATCHNORMS}
    if other:
        from ..log import logger

        logger.warning("--sync-bn on CPUs synchronises plain BatchNorm layers only; %s stay per process",
                       ", ".join(sorted(other)))
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if type(module) in PLAIN_BATCHNORMS:  # a subclass may add behaviour (timm's BatchNormAct2d): left alone
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        with torch.no_grad():  # the very parameters and buffers, so that an optimiser made before keeps them
            if module.affine:
                out.weight, out.bias = module.weight, module.bias
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out


def data_parallel(model: nn.Module, world: World, device: torch.device, sync_bn: bool,
                  unused_parameters: bool = False) -> nn.Module:
    """``model`` wrapped for this process of a torchrun job (unchanged when alone). ``unused_parameters``: some
    parameters take no part in a training step (the sequential model's bone network, fed the true bone)."""
    if not world.distributed:
        return model
    if sync_bn:
        model = convert_sync_batchnorm(model, device)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (its state dict has no ``module.`` prefix)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights as a plain model of the family has them, whatever wrapped or converted them for training."""
    return unwrap(model).state_dict()


def reduce_sum(values: list[float], world: World) -> list[float]:
    """``values`` summed over the processes of the job (as they are when alone)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def barrier(world: World) -> None:
    """Wait for every process of the job (nothing when alone)."""
    if world.distributed:
        dist.barrier()

