"""Faster CPU inference paths for the segmentation models, each checked against plain eager fp32.

* ``fold_bn``: every Conv2d followed by BatchNorm2d becomes one Conv2d (eval-mode BN is an affine map);
  exact up to float rounding.
* ``channels_last``: NHWC memory layout, which oneDNN convolutions prefer on CPU; exact.
* ``bf16``: bfloat16 autocast on CPUs that support it (AVX-512 BF16 / AMX); probabilities move by up
  to about 1e-2.
* ``onnx``: the (BN-folded) model exported to ONNX and run by ONNX Runtime (``pip install bonemet[fast]``);
  fp32, exact up to rounding. Not combinable with ``channels_last``, ``bf16`` or ``compile``.
* ``compile``: ``torch.compile`` (Inductor, which needs a C++ compiler); combines with the others except
  ``onnx``. Its first call compiles for about a minute, and on this project's CPU it was no faster than
  the eager path it wraps (``bonemet bench infer``), so it is an option, not the default.

Batching (several slices per forward pass) is the caller's batch size.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

PATHS = ("fold_bn", "channels_last", "bf16", "onnx", "compile")
DEFAULT_PATH = ("fold_bn", "channels_last")


def default_paths() -> tuple[str, ...]:
    """The fastest sound path measured by ``bonemet bench infer``: bf16 only where the CPU has it."""
    return (*DEFAULT_PATH, "bf16") if bf16_supported() else DEFAULT_PATH


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with each (Conv2d, BatchNorm2d) pair of a Sequential fused."""
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    return model


def bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 natively (otherwise autocast would emulate it slowly)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class FastModel(nn.Module):
    """``model`` prepared for the chosen ``paths``; call it like the model (inputs in NCHW are fine)."""

    def __init__(self, model: nn.Module, paths: Iterable[str] = DEFAULT_PATH) -> None:
        super().__init__()
        self.paths = tuple(paths)
        problem = paths_problem(self.paths)
        if problem:
            raise ValueError(problem)
        m = fold_batchnorm(model) if "fold_bn" in self.paths else copy.deepcopy(model).eval()
        if "channels_last" in self.paths:
            m = m.to(memory_format=torch.channels_last)
        if "compile" in self.paths:
            # Inductor on CPU warns that there is no CUDA runtime: true, and not the user's concern
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            m = torch.compile(m)
        self.model = m
        self.needs_bone_input = getattr(model, "needs_bone_input", False)
        self.session = _onnx_session(m) if "onnx" in self.paths else None

    def forward(self, x: torch.Tensor, *args):
        if self.session is not None:
            outs = [torch.from_numpy(o) for o in self.session.run(None, {"image": x.contiguous().numpy()})]
            return tuple(outs) if len(outs) > 1 else outs[0]
        if "channels_last" in self.paths:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if "bf16" in self.paths else contextlib.nullcontext()
        with ctx:
            out = self.model(x, *args)
        if isinstance(out, tuple):
            return tuple(o.float().contiguous() for o in out)
        return out.float().contiguous()


def paths_problem(paths: tuple[str, ...]) -> str | None:
    """Why ``paths`` cannot run here (unknown name, impossible combination, no C++ compiler), or None."""
    bad = set(paths) - set(PATHS)
    if bad:
        return f"unknown inference path(s) {sorted(bad)} (choose from eager, {', '.join(PATHS)})"
    if "onnx" in paths and {"channels_last", "bf16", "compile"} & set(paths):
        return "the onnx path runs fp32 in ONNX Runtime: it does not combine with channels_last, bf16 or compile"
    if "compile" in paths and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "the compile path needs a C++ compiler for torch.compile (none found on PATH)"
    return None


def parse_paths(text: str) -> tuple[str, ...]:
    """``"fold_bn,channels_last"`` -> a tuple; ``eager`` or an empty string -> no extra path."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip() and p.strip() != "eager")
    problem = paths_problem(parts)
    if problem:
        from ..errors import BonemetError

        raise BonemetError(problem)
    return parts


def _onnx_session(model: nn.Module):
    """Export ``model`` to ONNX in memory and open an ONNX Runtime session with torch's thread count."""
    import io
    import warnings

    try:
        import onnxruntime as ort
    except ImportError:
        from ..errors import BonemetError

        raise BonemetError("the onnx path needs ONNX Runtime: pip install 'bonemet[fast]'") from None
    if getattr(model, "needs_bone_input", False):
        raise ValueError("the onnx path does not support the sequential model")
    buf = io.BytesIO()
    x = torch.rand(1, _in_channels(model), 64, 64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model(x)
        names = ["lesion", "bone"] if isinstance(out, tuple) else ["lesion"]
        torch.onnx.export(model, (x,), buf, input_names=["image"], output_names=names, opset_version=17,
                          dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])


def _in_channels(model: nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels
