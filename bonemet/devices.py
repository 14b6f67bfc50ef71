"""Where models run: the device choice, its mixed precision, and the process group of a torchrun job.

Every command that runs a model takes ``--device auto|cpu|cuda|cuda:N|mps``; ``auto`` is the first CUDA GPU
when there is one, else the CPU. Mixed precision (``--bf16`` on the command line) follows the device:

* CPU: bfloat16 autocast with channels_last (the measured CPU path; emulated, and slower, without native bf16);
* CUDA: bfloat16 autocast where the GPU supports it, else float16 with a gradient scaler;
* MPS: float16 autocast with a gradient scaler.

Checkpoints never hold device tensors (``runs/checkpoint.py`` saves CPU copies and loads with
``map_location="cpu"``), so a run trained on a GPU predicts on a laptop and the other way round.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from .errors import BonemetError

DEVICE_HELP = "Where models run: auto (the first CUDA GPU if any, else the CPU), cpu, cuda, cuda:N or mps."


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The device ``name`` stands for; one clear line when this machine has no such device."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise BonemetError("--device mps: this machine or this torch build has no MPS (Apple GPU) backend")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        if index and not index.isdigit():
            raise BonemetError(f"--device {name}: expected cuda or cuda:N with N a GPU number")
        if not torch.cuda.is_available():
            raise BonemetError(f"--device {name}: no CUDA GPU is visible to torch {torch.__version__} here "
                               "(use --device cpu or auto)")
        if index and int(index) >= torch.cuda.device_count():
            raise BonemetError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                               f"numbered 0 to {torch.cuda.device_count() - 1}")
        return torch.device(name)
    raise BonemetError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N or mps)")


def describe_device(device: torch.device) -> str:
    """The device in words, for logs and benchmark tables."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} torch threads)"
    return str(device)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s weights are."""
    return next(model.parameters()).device


def on_device(batch: dict, device: torch.device) -> dict:
    """The tensors of a batch (a dict) on ``device``; names and flags stay as they are."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 natively (otherwise autocast would emulate it slowly)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def mixed_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype of mixed precision on ``device``."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16


@dataclass
class Precision:
    """How a training step runs on a device: the autocast region, the memory format of its inputs, and a gradient
    scaler for float16 (whose small gradients would otherwise underflow)."""

    device: torch.device
    dtype: torch.dtype | None = None  # None: fp32
    channels_last: bool = False
    scaler: torch.amp.GradScaler | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device, in the model's memory format."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        """Backward pass and optimiser step (through the scaler for float16)."""
        self.backward(loss)
        self.update(opt)

    def backward(self, loss: torch.Tensor) -> None:
        """The backward pass (of the scaled loss for float16)."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def update(self, opt: torch.optim.Optimizer) -> None:
        """The optimiser step after ``backward`` (through the scaler, which then adapts its scale, for float16)."""
        if self.scaler is None:
            opt.step()
            return
        self.scaler.step(opt)
        self.scaler.update()

    def __enter__(self) -> Precision:
        """``with precision:`` runs the block in its autocast region."""
        self._region = self.autocast()
        self._region.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._region.__exit__(*exc)

    def describe(self) -> str:
        if self.dtype is None:
            return "fp32"
        name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        return f"{name} autocast on {self.device.type}" + (" with a gradient scaler" if self.scaler else "")


def precision_for(device: torch.device, mixed: bool) -> Precision:
    """How training steps run on ``device``: fp32, or its mixed precision (see the module docstring)."""
    if not mixed:
        return Precision(device)
    if device.type == "cpu":
        return Precision(device, torch.bfloat16, channels_last=True)
    dtype = mixed_dtype(device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return Precision(device, dtype, channels_last=True, scaler=scaler)


def training_precision(model: torch.nn.Module, mixed: bool, device: torch.device = torch.device("cpu"),
                       warn=None) -> Precision:
    """Put ``model`` on ``device`` and prepare it for (mixed-precision) training; returns how its steps run.

    Without ``mixed``: fp32, as today. With it on the CPU: bfloat16 autocast and channels_last (about 3x the
    training images/s of fp32 for small_cnn16 on a CPU with native bf16; ``warn`` says so when it is emulated).
    """
    model.to(device)
    precision = precision_for(device, mixed)
    if mixed and device.type == "cpu" and not cpu_bf16_supported() and warn:
        warn("--bf16: this CPU has no native bfloat16; autocast will emulate it (slower)")
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    return precision


# --- processes ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints, logs and tables."""
        return self.rank == 0


def torchrun_world() -> World:
    """The rank, world size and local rank torchrun (or any launcher that sets its variables) gave this process."""
    try:
        return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise BonemetError(f"RANK, WORLD_SIZE or LOCAL_RANK is not a number ({exc})") from None


def init_distributed(device_name: str | None) -> tuple[World, torch.device]:
    """Join the process group of a torchrun job, when there is one: NCCL on CUDA GPUs (one per local rank),
    Gloo on CPUs. Returns this process's place and device; a single process is left as it is."""
    world = torchrun_world()
    device = resolve_device(device_name)
    if not world.distributed:
        return world, device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise BonemetError(f"torchrun training runs on CUDA GPUs or on CPUs, not on {device.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def threads_per_process(processes: int, cores: int | None = None) -> int:
    """Torch threads for each of ``processes`` processes so that together they never use more than the cores (two
    processes that each use every core run many times slower than one)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, processes))
