"""Faster CPU inference paths for the segmentation models, each checked against plain eager fp32.

* ``fold_bn``: every Conv2d followed by BatchNorm2d becomes one Conv2d (eval-mode BN is an affine map);
  exact up to float rounding.
* ``fuse``: each convolution runs with the ReLU, sigmoid or sum after it as oneDNN post-ops, in one pass over
  memory (``inference.fusion``); needs ``fold_bn``; the same arithmetic.
* ``channels_last``: NHWC memory layout, which oneDNN convolutions prefer on CPU; exact.
* ``bf16``: bfloat16 autocast on CPUs that support it (AVX-512 BF16 / AMX), with the modules of
  ``BF16_FP32_MODULES`` kept in fp32: the first two encoder levels, the attention gates and the output heads, about
  6 % of the multiply-adds of Hybrid-AttUnet++; those encoder levels hand their outputs on in fp32
  (``BF16_FP32_OUTPUTS``), the others in bf16. Measured module by module on trained members
  (``docs/experiments/bf16_sensitivity.py``), most of plain autocast's error comes from the input end (the first
  features in 8-bit mantissas, and their rounding on the way to the next level and the skips) and from the gates (a
  sigmoid coefficient that scales a whole skip), little from the deeper encoder levels and the decoder nodes. The
  three deeper levels were kept in fp32 too until 2026-12-04: at 14-56 px they are compute-bound, and fp32 there
  took 11 % of the path's time on a CPU with AMX for no measurable gain in precision
  (``docs/experiments/fp32_plans.py``).
* ``onnx``: the (BN-folded) model exported to ONNX and run by ONNX Runtime; fp32, exact up to rounding.
  Not combinable with ``channels_last``, ``bf16``, ``int8`` or ``compile``.
* ``int8``: the (BN-folded) ONNX model quantized to 8 bits by ONNX Runtime (static QDQ: per-channel 7-bit
  weights, uint8 activations whose ranges are measured on calibration slices, the output heads kept in fp32),
  for CPUs without native bfloat16, where fp32 convolutions already run at the machine's matmul peak. It
  needs those slices: a run's stored graphs (``bonemet seg quantize``, ``inference.quantize``) or
  ``FastModel(..., calibration=x)``. Masks stay equal on more than 99.9 % of pixels, but a few probabilities
  move by more than 0.02 (measured by ``bonemet bench infer --check-run``), so it is not a default.
* ``openvino``: the (BN-folded) ONNX graph compiled by OpenVINO's CPU runtime (``pip install openvino``), which
  writes concatenations in place and fuses the element-wise work into the convolutions; fp32, exact up to rounding.
  With ``bf16`` it runs at OpenVINO's bf16 inference precision: everything in bf16, with no fp32 islands (its CPU
  runtime keeps no convolution in fp32 when asked), so it answers as plain autocast does. On a CPU with AMX it
  ran at about twice the default path's speed (``docs/experiments/openvino_path.py``). An option, not the
  default: it moves a trained member's probabilities by up to 0.08 where the default moves them by 0.02. Not
  combinable with ``fuse``, ``channels_last``, ``onnx``, ``int8`` or ``compile``. A Python process that has run it
  crashed (segmentation fault) when it later forked DataLoader workers for training: use it in processes that
  only predict, as ``bonemet predict`` is.
* ``compile``: ``torch.compile`` (Inductor, which needs a C++ compiler); combines with the others except
  ``onnx``. Its first call compiles for about a minute, and on this project's CPU it was no faster than
  the eager path it wraps (``bonemet bench infer``), so it is an option, not the default.

Batching (several slices per forward pass) is the caller's batch size.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import logging
import shutil
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..devices import cpu_bf16_supported
from .fusion import fuse_for_inference, fusion_available

PATHS = ("fold_bn", "fuse", "channels_last", "bf16", "onnx", "int8", "openvino", "compile")
GPU_PATHS = ("fold_bn", "channels_last", "bf16", "compile")  # the others are oneDNN's or ONNX Runtime's (CPU)
DEFAULT_PATH = ("fold_bn", "fuse", "channels_last") if fusion_available() else ("fold_bn", "channels_last")
# on an NVIDIA H200 predict ran 1.6x eager fp32 end to end with it, bf16 no faster (``bench device --predict-slices``)
GPU_DEFAULT_PATH = ("fold_bn", "channels_last")
CALIBRATION_SLICES = 8  # slices whose activations set the int8 ranges
# modules the bf16 path keeps in fp32 (names as in ``model.named_modules()``, glob patterns matched against the name
# or its tail, so both networks of the sequential model are covered), and those whose output stays fp32
BF16_FP32_MODULES = ("enc.0", "enc.1", "gates.*", "heads.*", "head")
BF16_FP32_OUTPUTS = ("enc.*",)


BATCH_PIXELS = 2 * 224 * 224  # pixels per forward pass on a CPU (measured by ``bonemet bench infer --batch-size``)


def auto_batch(size: int, device: torch.device | str = "cpu") -> int:
    """Slices per forward pass for a model of ``size`` px: on a CPU about ``BATCH_PIXELS`` (2 slices at 224 px,
    6 at 128, 1 at 512). On a CPU with matrix units larger batches were slower, not faster: at 224 px, width 32, the
    default path ran 9.1 slices/s at batch 2 and 7.3 at batch 8 (``docs/experiments/batch_sweep.py``), as the
    full-resolution maps of a batch outgrow the caches and every memory-bound operation waits on memory. On a GPU,
    16 times as many pixels (32 slices at 224 px; an NVIDIA H200 ran fp32 inference at 312 slices/s at batch 8 and
    334 at batch 32, ``bonemet bench device``)."""
    per_pass = BATCH_PIXELS * (16 if torch.device(device).type != "cpu" else 1)
    return max(1, round(per_pass / (size * size)))


def default_paths(device: torch.device | str = "cpu") -> tuple[str, ...]:
    """The fastest sound path measured by ``bonemet bench infer``: bf16 where the CPU has it natively, else fp32
    with folded BN and fused activations in channels_last (ONNX Runtime's fp32 was no faster on an AVX2 CPU and
    costs an export per member and scan).

    ``int8`` is 2.6-2.9x faster than eager fp32 on CPUs without bf16, with the same masks, but moves a few
    probabilities by more than the 0.02 a default may (``bonemet bench infer --check-run``): an option only.

    On a GPU: ``GPU_DEFAULT_PATH``, fp32 (on an NVIDIA H200, 1.23 s per 100 slices of predict end to end for a
    5-member ensemble against 1.96 eagerly; adding bf16 gained nothing there, as reading, lesion analysis and
    writing then weigh as much as the models)."""
    if torch.device(device).type != "cpu":
        return GPU_DEFAULT_PATH
    return (*DEFAULT_PATH, "bf16") if bf16_supported() else DEFAULT_PATH


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def ort_available() -> bool:
    return _installed("onnxruntime")


def openvino_available() -> bool:
    return _installed("openvino")


def needs_calibration(paths: Iterable[str]) -> bool:
    """Whether ``FastModel`` with ``paths`` needs calibration slices (the int8 path)."""
    return "int8" in tuple(paths)


def calibration_indices(n: int, k: int = CALIBRATION_SLICES) -> list[int]:
    """``k`` slice indices spread evenly over ``n`` slices (all of them when ``n`` <= ``k``)."""
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, min(n, k))})


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


bf16_supported = cpu_bf16_supported  # whether this CPU runs bfloat16 natively


class _FP32(nn.Module):
    """``module`` run in fp32 inside a bf16 autocast region; its output leaves in the autocast dtype unless
    ``keep_output``."""

    def __init__(self, module: nn.Module, keep_output: bool = False) -> None:
        super().__init__()
        self.module, self.keep_output = module, keep_output

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        kind = xs[0].device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
        with torch.autocast(kind, enabled=False):
            out = self.module(*(x.float() for x in xs))
        # an fp32 output makes what consumes it fp32 too (concatenations, gates, up-sampling; the convolutions still
        # cast to bf16): worth it only where the rounding costs precision, as after the encoder levels
        return out if dtype is None or self.keep_output else out.to(dtype)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, "*." + p) for p in patterns)


def keep_fp32(model: nn.Module, modules: Iterable[str] = BF16_FP32_MODULES,
              outputs: Iterable[str] = BF16_FP32_OUTPUTS) -> int:
    """Wrap, in place, the modules of ``model`` whose names match ``modules`` to run in fp32 under bf16 autocast
    (the outermost match; containers are looked into, not wrapped); those also matching ``outputs`` hand their
    output on in fp32. Returns how many were wrapped."""
    modules, outputs = tuple(modules), tuple(outputs)
    done: list[str] = []
    for name, m in list(model.named_modules()):
        if not name or any(name.startswith(d + ".") for d in done) or isinstance(m, (nn.ModuleList, nn.ModuleDict)):
            continue
        if _matches(name, modules):
            parent, _, child = name.rpartition(".")
            model.get_submodule(parent)._modules[child] = _FP32(m, keep_output=_matches(name, outputs))
            done.append(name)
    return len(done)


class FastModel(nn.Module):
    """``model`` prepared for the chosen ``paths``; call it like the model (inputs in NCHW are fine)."""

    def __init__(self, model: nn.Module, paths: Iterable[str] = DEFAULT_PATH,
                 calibration: torch.Tensor | None = None, int8_onnx: bytes | None = None,
                 fp32_modules: Iterable[str] = BF16_FP32_MODULES) -> None:
        """``calibration`` (model inputs) or ``int8_onnx`` (the model already quantized, ``quantize_int8``) are for
        the int8 path; ``fp32_modules``: what the bf16 path keeps in fp32 (``keep_fp32``; empty = plain autocast)."""
        super().__init__()
        self.paths = tuple(paths)
        param = next(model.parameters(), None)
        problem = paths_problem(self.paths, param.device if param is not None else "cpu")
        if problem:
            raise ValueError(problem)
        if needs_calibration(self.paths) and calibration is None and int8_onnx is None:
            raise ValueError("the int8 path needs calibration slices (calibration=...) or a quantized model")
        m = fold_batchnorm(model) if "fold_bn" in self.paths else copy.deepcopy(model).eval()
        self.ov_model = OpenVinoModel(export_onnx(m), "bf16" in self.paths) if "openvino" in self.paths else None
        if "fuse" in self.paths:
            m = fuse_for_inference(m)
        if "bf16" in self.paths and self.ov_model is None:  # OpenVINO keeps no fp32 islands (above)
            keep_fp32(m, fp32_modules)
        if "channels_last" in self.paths:
            m = m.to(memory_format=torch.channels_last)
        if "compile" in self.paths:
            # Inductor on CPU warns that there is no CUDA runtime: true, and not the user's concern
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            m = torch.compile(m)
        self.model = m
        self.needs_bone_input = getattr(model, "needs_bone_input", False)
        self.ort_model = None
        if "onnx" in self.paths:
            self.ort_model = load_ort(export_onnx(m))
        elif "int8" in self.paths:
            self.ort_model = load_ort(int8_onnx or quantize_int8(m, calibration))

    def forward(self, x: torch.Tensor, *args):
        if self.ov_model is not None:
            return self.ov_model(x)
        if self.ort_model is not None:
            return _outputs([torch.from_numpy(o) for o in self.ort_model.run(None, {"image": x.contiguous().numpy()})])
        if "channels_last" in self.paths:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = (torch.autocast(x.device.type, dtype=torch.bfloat16) if "bf16" in self.paths
               else contextlib.nullcontext())
        with ctx:
            out = self.model(x, *args)
        if isinstance(out, tuple):
            return tuple(o.float().contiguous() for o in out)
        return out.float().contiguous()


def paths_problem(paths: tuple[str, ...], device: torch.device | str = "cpu") -> str | None:
    """Why ``paths`` cannot run on ``device`` (unknown name, impossible combination, a CPU-only path on a GPU, no
    bf16 on that GPU, no C++ compiler), or None."""
    bad = set(paths) - set(PATHS)
    if bad:
        return f"unknown inference path(s) {sorted(bad)} (choose from eager, {', '.join(PATHS)})"
    device = torch.device(device)
    if device.type != "cpu":
        cpu_only = [p for p in paths if p not in GPU_PATHS]
        if cpu_only:
            return (f"--fast {','.join(cpu_only)} runs on the CPU only (on {device}: eager or "
                    f"{', '.join(GPU_PATHS)})")
        if "bf16" in paths and not (device.type == "cuda" and torch.cuda.is_bf16_supported()):
            return f"the bf16 path needs a GPU with bfloat16 (not {device})"
        return None
    if "fuse" in paths and ("fold_bn" not in paths or {"onnx", "int8", "compile"} & set(paths)):
        return "the fuse path needs fold_bn and runs in torch's eager mode: not with onnx, int8 or compile"
    if "fuse" in paths and not fusion_available():
        return "the fuse path needs torch built with oneDNN (torch.backends.mkldnn)"
    if "onnx" in paths and {"channels_last", "bf16", "int8", "compile"} & set(paths):
        return "the onnx path runs fp32 in ONNX Runtime: it does not combine with channels_last, bf16, int8 or compile"
    if "openvino" in paths and {"fuse", "channels_last", "onnx", "int8", "compile"} & set(paths):
        return ("the openvino path runs in OpenVINO: it combines with fold_bn and bf16 only (not with fuse, "
                "channels_last, onnx, int8 or compile)")
    if "openvino" in paths and not openvino_available():
        return "the openvino path needs OpenVINO: pip install openvino"
    if "int8" in paths and {"channels_last", "bf16", "compile"} & set(paths):
        return "the int8 path runs in ONNX Runtime: it does not combine with channels_last, bf16 or compile"
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


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        from ..errors import BonemetError

        raise BonemetError("the onnx and int8 paths need ONNX Runtime: pip install onnxruntime") from None
    return ort


def export_onnx(model: nn.Module) -> bytes:
    """``model`` as an ONNX graph in memory: input ``image`` (any batch and size), outputs ``lesion`` [, ``bone``]."""
    import io
    import warnings

    if getattr(model, "needs_bone_input", False):
        raise ValueError("the onnx, int8 and openvino paths do not support the sequential model")
    buf = io.BytesIO()
    x = torch.rand(1, _in_channels(model), 64, 64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model(x)
        torch.onnx.export(model, (x,), buf, input_names=["image"], output_names=_output_names(out),
                          opset_version=17, dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    return buf.getvalue()


def _output_names(out) -> list[str]:
    return ["lesion", "bone"] if isinstance(out, tuple) else ["lesion"]


def load_ort(onnx_model: bytes):
    """``onnx_model`` loaded into ONNX Runtime on the CPU, with torch's thread count."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(onnx_model, opts, providers=["CPUExecutionProvider"])


class OpenVinoModel:
    """An ONNX graph compiled by OpenVINO for the CPU, at bf16 inference precision if ``bf16``, else fp32; once per
    input shape (static shapes run fastest there), with torch's thread count and one stream. Called with a torch
    batch, it returns the outputs as torch tensors. ``self.bf16`` says whether it runs in bf16: OpenVINO keeps fp32
    on a CPU without bf16 (its CPU plugin lists no "BF16" capability there, e.g. AVX2-only CPUs)."""

    def __init__(self, onnx_model: bytes, bf16: bool) -> None:
        import openvino as ov

        self.core, self.onnx = ov.Core(), onnx_model
        self.bf16 = bf16 and "BF16" in self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self.config = {"INFERENCE_PRECISION_HINT": "bf16" if self.bf16 else "f32", "NUM_STREAMS": 1,
                       "INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
        self.requests: dict[tuple[int, ...], object] = {}

    def __call__(self, x: torch.Tensor):
        shape = tuple(x.shape)
        if shape not in self.requests:
            graph = self.core.read_model(self.onnx, b"")
            graph.reshape({"image": list(shape)})
            self.requests[shape] = self.core.compile_model(graph, "CPU", self.config).create_infer_request()
        request = self.requests[shape]
        request.infer({"image": x.float().contiguous().numpy()})
        return _outputs([torch.from_numpy(np.array(request.get_output_tensor(i).data))
                         for i in range(len(request.model_outputs))])


def _outputs(outs: list[torch.Tensor]):
    """A runtime's outputs as the torch model gives them: (lesion, bone), or lesion alone."""
    return tuple(outs) if len(outs) > 1 else outs[0]


def quantize_int8(model: nn.Module, calibration: torch.Tensor) -> bytes:
    """``model`` (BN folded first) as an int8 ONNX graph whose activation ranges come from ``calibration``."""
    return _quantize(export_onnx(fold_batchnorm(model)), calibration)


def _quantize(onnx_bytes: bytes, calibration: torch.Tensor) -> bytes:
    """Static int8 quantization (QDQ) of an exported model, activation ranges from ``calibration`` (min-max).

    The convolutions that write the model's outputs stay fp32: quantizing a logit to 8 bits over its whole
    range would move probabilities near 0.5 by about 1e-2, for a negligible share of the work.
    """
    import logging
    import tempfile

    import onnx

    _ort()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Slices(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration[i:i + 1].contiguous().numpy() for i in range(len(calibration)))

        def get_next(self) -> dict | None:
            x = next(self.items, None)
            return None if x is None else {"image": x}

    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # ONNX Runtime's quantizer logs advice at WARNING
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, pre, dst = (f"{tmp}/{n}.onnx" for n in ("model", "pre", "int8"))
            with open(src, "wb") as f:
                f.write(onnx_bytes)
            quant_pre_process(src, pre, skip_symbolic_shape=True)
            graph = onnx.load(pre).graph
            outputs = {o.name for o in graph.output}
            heads = [n.name for n in graph.node if set(n.output) & outputs]
            # reduce_range: 7-bit weights, so that u8 x s8 products summed in pairs cannot saturate the int16
            # of AVX2 kernels without VNNI (without it, pixels of a trained width-8 member moved by up to 0.9)
            quantize_static(pre, dst, Slices(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=heads)
            with open(dst, "rb") as f:
                return f.read()
    finally:
        logging.getLogger().setLevel(quiet)


def _in_channels(model: nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels
