"""Faster inference paths give the baseline's answers (speed is measured by `bonemet bench infer`, not here)."""

from __future__ import annotations

import shutil

import pytest
import torch

from bonemet.inference.fast import FastModel, bf16_supported, fold_batchnorm, keep_fp32
from bonemet.models import create_model, split_outputs


def _trained_like(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, width=4, in_channels=3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _probs(model, x):
    with torch.inference_mode():
        return [torch.sigmoid(o) for o in split_outputs(model(x)) if o is not None]


@pytest.mark.parametrize("name", ["unet", "attunet", "unet++", "hybrid-attunet++"])
@pytest.mark.parametrize("paths", [("fold_bn",), ("channels_last",), ("fold_bn", "channels_last"), ("fold_bn", "fuse"),
                                   ("fold_bn", "fuse", "channels_last")])
def test_fp32_paths_match_eager(name, paths):
    model = _trained_like(name)
    x = torch.rand(3, 3, 64, 64)
    ref = _probs(model, x)
    fast = _probs(FastModel(model, paths), x)
    for a, b in zip(ref, fast):
        assert float((a - b).abs().max()) < 1e-4
        assert torch.equal(a > 0.5, b > 0.5)


# (modified blocks summed in place, gates, fused convolutions): attunet has 5 encoder + 4 decoder classic blocks of
# two conv-ReLU, 4 up-convolutions and 4 gates (w_x with ReLU, psi with sigmoid): 22 + 8 convolutions;
# hybrid-attunet++ has 5 encoder + 10 nested + 4 second-decoder modified blocks (two 3x3 and one 1x1 conv-ReLU)
# and 10 + 4 gates: 57 + 28
FUSED = {"attunet": (0, 4, 30), "hybrid-attunet++": (19, 14, 85)}


@pytest.mark.parametrize("name", list(FUSED))
def test_fuse_replaces_every_block_gate_and_activation(name):
    from bonemet.inference.fusion import FusedConv, _FusedGate, _SummedBlock

    fast = FastModel(_trained_like(name), ("fold_bn", "fuse")).model
    blocks = sum(isinstance(m, _SummedBlock) for m in fast.modules())
    gates = sum(isinstance(m, _FusedGate) for m in fast.modules())
    convs = [m for m in fast.modules() if isinstance(m, FusedConv)]
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.Sigmoid)) for m in fast.modules())
    assert (blocks, gates, len(convs)) == FUSED[name]
    assert sum(c.activation == "sigmoid" for c in convs) == gates


def test_cat_for_conv_without_autograd_equals_torch_cat():
    from bonemet.models.blocks import cat_for_conv

    parts = [torch.rand(2, c, 8, 8).contiguous(memory_format=torch.channels_last) for c in (3, 4, 6)]
    ref = torch.cat(parts, 1)
    with torch.no_grad():
        out = cat_for_conv(parts)
        assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, ref)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = cat_for_conv([parts[0], parts[1].bfloat16(), parts[2]])
        assert half.dtype == torch.bfloat16 and torch.equal(half, ref.bfloat16())
        mixed = cat_for_conv([parts[0].bfloat16(), parts[1]])  # no autocast: promoted as torch.cat does
        assert mixed.dtype == torch.float32 and torch.equal(mixed, torch.cat([parts[0].bfloat16(), parts[1]], 1))
    grad = [p.clone().requires_grad_() for p in parts]
    cat_for_conv(grad).sum().backward()  # with autograd: torch.cat, gradients flow
    assert all(torch.equal(g.grad, torch.ones_like(g)) for g in grad)


def test_fold_removes_every_batchnorm_after_a_conv():
    folded = fold_batchnorm(_trained_like("hybrid-attunet++"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bfloat16")
def test_bf16_path_is_close():
    model = _trained_like("hybrid-attunet++")
    x = torch.rand(3, 3, 64, 64)
    ref = _probs(model, x)
    fast = _probs(FastModel(model, ("fold_bn", "channels_last", "bf16")), x)
    for a, b in zip(ref, fast):
        assert float((a - b).abs().max()) < 0.02
        assert float(((a > 0.5) == (b > 0.5)).float().mean()) >= 0.995


def _kept(model):
    return {name: m for name, m in model.named_modules() if type(m).__name__ == "_FP32"}


# (encoder levels, gates, heads) kept: the first two levels of each encoder; the sequential model has two networks
# (bone unet++, lesion attunet++)
KEPT = {"unet": (2, 0, 1), "attunet": (2, 4, 1), "hybrid-attunet++": (2, 14, 2), "sequential": (4, 10, 2)}


@pytest.mark.parametrize("name", list(KEPT))
def test_bf16_path_keeps_first_encoder_levels_gates_and_heads_in_fp32(name):
    model = _trained_like(name)
    kept = _kept(FastModel(model, ("fold_bn", "channels_last", "bf16")).model)
    enc, gates, heads = KEPT[name]
    assert sum(".enc." in f".{n}" for n in kept) == enc
    assert {n.rsplit(".", 1)[-1] for n in kept if ".enc." in f".{n}"} == {"0", "1"}  # the deeper levels: bf16
    assert sum(".gates." in f".{n}" for n in kept) == gates
    assert sum(n.endswith("head") or ".heads." in f".{n}" for n in kept) == heads
    assert len(kept) == enc + gates + heads  # no decoder node: they hold most of the work
    assert all(m.keep_output == (".enc." in f".{n}") for n, m in kept.items())  # encoder outputs stay fp32
    assert not _kept(FastModel(model, ("fold_bn", "channels_last", "bf16"), fp32_modules=()).model)
    assert keep_fp32(fold_batchnorm(model), ["enc.0"]) == (2 if name == "sequential" else 1)


def test_kept_modules_compute_in_fp32_and_hand_on_as_planned():
    fast = FastModel(_trained_like("hybrid-attunet++"), ("fold_bn", "channels_last", "bf16"))
    enc, gate = fast.model.enc[0], fast.model.gates["0_0"][0]
    x, g = torch.rand(2, 3, 32, 32), torch.rand(2, 8, 16, 16)  # the gate takes g at half resolution
    with torch.inference_mode():
        ref = enc.module(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, out_gate = enc(x), gate(g.bfloat16(), ref)
            plain = enc.module(x)
        assert torch.equal(enc(x), ref)  # outside autocast: fp32 in, fp32 out
    assert out.dtype == torch.float32 and torch.equal(out, ref)  # the encoder hands on fp32
    # the gate computes in fp32 from a bf16 input and hands on bf16, rounded once
    assert out_gate.dtype == torch.bfloat16
    with torch.inference_mode():
        assert torch.equal(out_gate, gate.module(g.bfloat16().float(), ref).bfloat16())
    assert not torch.equal(plain.float(), out)  # plain autocast rounds every layer


@pytest.mark.parametrize("name", ["unet", "hybrid-attunet++"])
def test_onnx_runtime_path_matches_eager(name):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime not installed (pip install 'bonemet[fast]')")
    model = _trained_like(name)
    x = torch.rand(2, 3, 64, 64)
    ref = _probs(model, x)
    fast = _probs(FastModel(model, ("fold_bn", "onnx")), x)
    assert len(ref) == len(fast)
    for a, b in zip(ref, fast):
        assert float((a - b).abs().max()) < 1e-4
        assert torch.equal(a > 0.5, b > 0.5)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile (Inductor) needs a C++ compiler")
@pytest.mark.slow
def test_compile_path_matches_eager():
    model = _trained_like("unet")  # the smallest graph: Inductor compiles it in well under a minute
    x = torch.rand(2, 3, 64, 64)
    ref = _probs(model, x)
    fast = _probs(FastModel(model, ("fold_bn", "channels_last", "compile")), x)
    for a, b in zip(ref, fast):
        assert float((a - b).abs().max()) < 1e-4
        assert torch.equal(a > 0.5, b > 0.5)


def test_openvino_path_matches_eager_in_fp32_and_is_close_in_bf16():
    """OpenVINO's CPU runtime on the ONNX graph: fp32 as eager (one graph per input shape), bf16 as plain autocast
    (no fp32 islands). In a fresh process: one that has run OpenVINO can crash when it later forks DataLoader
    workers, as other tests in this worker may."""
    pytest.importorskip("openvino", reason="OpenVINO not installed (pip install 'bonemet[openvino]')")
    import subprocess
    import sys
    from pathlib import Path

    code = "import test_fast; test_fast.openvino_checks()"
    res = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def openvino_checks() -> None:
    """The checks of the test above, run in the fresh process it starts."""
    from bonemet.inference import fast

    model = _trained_like("hybrid-attunet++")
    x = torch.rand(3, 3, 64, 64)
    ref = _probs(model, x)
    path = FastModel(model, ("fold_bn", "openvino"))
    for a, b in zip(ref, _probs(path, x)):
        assert float((a - b).abs().max()) < 1e-4
        assert torch.equal(a > 0.5, b > 0.5)
    for a, b in zip(_probs(model, x[:1]), _probs(path, x[:1])):  # another shape: compiled again, same answers
        assert float((a - b).abs().max()) < 1e-4
    assert sorted(path.ov_model.requests) == [(1, 3, 64, 64), (3, 3, 64, 64)]
    bf16 = FastModel(model, ("fold_bn", "openvino", "bf16"))
    autocast = FastModel(model, ("fold_bn", "channels_last", "bf16"), fp32_modules=())
    for a, b, c in zip(ref, _probs(bf16, x), _probs(autocast, x)):
        if not bf16.ov_model.bf16:  # a CPU without bf16 (AVX2 only): OpenVINO keeps fp32, and the path says so
            assert float((a - b).abs().max()) < 1e-4
            continue
        assert 1e-6 < float((a - b).abs().max()) < 2e-2  # rounded, as plain autocast is
        assert float((a - b).abs().max()) < 4 * float((a - c).abs().max()) + 1e-3
    assert fast.paths_problem(("fold_bn", "openvino", "channels_last")) == (
        "the openvino path runs in OpenVINO: it combines with fold_bn and bf16 only (not with fuse, channels_last, "
        "onnx, int8 or compile)")


def test_openvino_path_without_openvino_is_one_line(monkeypatch):
    from bonemet.inference import fast

    monkeypatch.setattr(fast, "openvino_available", lambda: False)
    assert fast.paths_problem(("fold_bn", "openvino")) == "the openvino path needs OpenVINO: pip install openvino"


def test_onnx_does_not_combine_with_compile():
    with pytest.raises(ValueError, match="does not combine"):
        FastModel(_trained_like("unet"), ("fold_bn", "onnx", "compile"))


def test_int8_path_is_close_on_slices_it_was_not_calibrated_on():
    # a check of the implementation on a toy model; trained models move more (bench infer --check-run)
    model = _trained_like("hybrid-attunet++")
    torch.manual_seed(1)
    calibration, x = torch.rand(4, 3, 64, 64), torch.rand(3, 3, 64, 64)
    ref = _probs(model, x)
    fast = _probs(FastModel(model, ("fold_bn", "int8"), calibration=calibration), x)
    assert len(ref) == len(fast) == 2
    for a, b in zip(ref, fast):
        assert float((a - b).abs().max()) < 0.02
        assert float(((a > 0.5) == (b > 0.5)).float().mean()) >= 0.995
        assert not torch.equal(a, b)  # it really ran quantized


def test_int8_needs_calibration_and_runs_alone():
    model = _trained_like("unet")
    with pytest.raises(ValueError, match="calibration"):
        FastModel(model, ("fold_bn", "int8"))
    with pytest.raises(ValueError, match="does not combine"):
        FastModel(model, ("fold_bn", "int8", "channels_last"), calibration=torch.rand(1, 3, 64, 64))


def test_default_path_is_bf16_where_native_else_fp32(monkeypatch):
    from bonemet.inference import fast

    monkeypatch.setattr(fast, "bf16_supported", lambda: True)
    assert fast.default_paths() == ("fold_bn", "fuse", "channels_last", "bf16")
    monkeypatch.setattr(fast, "bf16_supported", lambda: False)
    assert fast.default_paths() == ("fold_bn", "fuse", "channels_last")  # int8 is faster but not within 0.02: an option
    assert fast.calibration_indices(100, 8) == [0, 14, 28, 42, 57, 71, 85, 99]
    assert fast.calibration_indices(3, 8) == [0, 1, 2]


def test_a_gpu_runs_the_device_independent_paths_and_refuses_the_cpus_own(monkeypatch):
    from bonemet.inference import fast

    gpu = torch.device("cuda")
    assert fast.default_paths(gpu) == ("fold_bn", "channels_last")  # fp32: bf16 was no faster end to end
    assert fast.paths_problem(("fold_bn", "channels_last", "compile"), gpu) is None
    for path in ("fuse", "onnx", "int8"):
        assert fast.paths_problem(("fold_bn", path), gpu) == (
            f"--fast {path} runs on the CPU only (on cuda: eager or fold_bn, channels_last, bf16, compile)")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert fast.paths_problem(("bf16",), gpu) == "the bf16 path needs a GPU with bfloat16 (not cuda)"
    assert fast.paths_problem(("bf16",), torch.device("mps")) == "the bf16 path needs a GPU with bfloat16 (not mps)"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert fast.paths_problem(("fold_bn", "channels_last", "bf16"), gpu) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine (runs where one is)")
def test_gpu_paths_match_eager_on_the_gpu():
    model = _trained_like("hybrid-attunet++").cuda()
    x = torch.rand(3, 3, 64, 64, device="cuda")
    ref = _probs(model, x)
    for paths in (("fold_bn",), ("channels_last",), ("fold_bn", "channels_last")):
        for a, b in zip(ref, _probs(FastModel(model, paths), x)):
            assert float((a - b).abs().max()) < 1e-3  # TF32 convolutions on both sides, in another order
    if torch.cuda.is_bf16_supported():
        for a, b in zip(ref, _probs(FastModel(model, ("fold_bn", "channels_last", "bf16")), x)):
            assert float((a - b).abs().max()) < 0.02
            assert float(((a > 0.5) == (b > 0.5)).float().mean()) >= 0.995


def test_up2_hands_its_backward_a_channels_last_gradient_and_the_same_values():
    import torch.nn.functional as F

    from bonemet.models.blocks import _channels_last, up2

    x = torch.rand(2, 4, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = up2(x)
    assert _channels_last in y._backward_hooks.values()
    w = torch.rand(2, 6, 16, 16).contiguous(memory_format=torch.channels_last)
    (torch.cat([y, y[:, :2]], 1) * w).sum().backward()  # a concatenation's gradient: strided slices
    ref = x.detach().clone().requires_grad_()
    r = F.interpolate(ref, scale_factor=2, mode="bilinear", align_corners=True)
    (torch.cat([r, r[:, :2]], 1) * w).sum().backward()
    assert torch.allclose(x.grad, ref.grad, atol=1e-5)
    assert not up2(torch.rand(2, 4, 8, 8, requires_grad=True))._backward_hooks  # NCHW: nothing to change


def test_auto_batch_keeps_about_two_224_px_slices_a_pass():
    from bonemet.inference.fast import auto_batch

    assert [auto_batch(s) for s in (224, 128, 512, 64)] == [2, 6, 1, 24]
    assert auto_batch(224, "cuda") == 32
