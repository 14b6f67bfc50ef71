"""The segmentation model family: the thesis' parameter counts, shapes, every parameter used."""

from __future__ import annotations

import pytest
import torch

from bonemet.models import count_parameters, create_model, forward, model_info, model_names, model_options

TARGETS_M = {"unet": 8.64, "attunet": 8.73, "unet++": 9.72, "attunet++": 10.07, "hybrid-attunet++": 14.01}


@pytest.mark.parametrize("name", list(TARGETS_M))
def test_parameter_counts_within_1_percent(name):
    m = create_model(name, width=32, in_channels=3)
    got = count_parameters(m) / 1e6
    assert abs(got - TARGETS_M[name]) / TARGETS_M[name] < 0.01, f"{name}: {got:.3f} M"


@pytest.mark.parametrize("name", list(TARGETS_M))
def test_forward_backward_tiny(name):
    m = create_model(name, width=4, in_channels=1)
    out = m(torch.randn(2, 1, 64, 64))
    outs = out if isinstance(out, tuple) else (out,)
    assert len(outs) == len(model_info(name).outputs) == (2 if name == "hybrid-attunet++" else 1)
    assert all(o.shape == (2, 1, 64, 64) for o in outs)
    sum(o.mean() for o in outs).backward()
    unused = [n for n, p in m.named_parameters() if p.grad is None]
    assert not unused, unused


def test_the_registry_states_each_models_facts_truly():
    from bonemet.runs.seg import SegConfig, model_label

    for name in model_names():
        info = model_info(name)
        lesion, bone = forward(create_model(name, width=2), torch.randn(1, 3, 32, 32), torch.zeros(1, 1, 32, 32))
        assert info.outputs == (("lesion", "bone") if bone is not None else ("lesion",)), name  # at its defaults
        # each switch listed as applying to a model changes that model
        other = {"block": "plain", "dual_decoder": False, "lesion_model": "unet"}
        for option in info.options:
            changed = create_model(name, width=2, **{option: other[option]})
            assert count_parameters(changed) != count_parameters(create_model(name, width=2)), (name, option)
        assert set(model_options(name, "plain", False, "unet")) == set(info.options)
    member = create_model("hybrid-attunet++", width=4)
    student = create_model(model_info("hybrid-attunet++").single_decoder, width=4)
    shared = {k for k, v in student.state_dict().items() if k in member.state_dict() and
              member.state_dict()[k].shape == v.shape}
    assert len(shared) == len(student.state_dict())  # the lesion decoder of a member is a whole attunet++
    labels = {(m, b, d): model_label(SegConfig(data="x", model=m, block=b, dual_decoder=d))
              for m, b, d in [("attunet++", "mb", None), ("attunet++", "plain", None), ("unet++", "mb", None),
                              ("hybrid-attunet++", "mb", False), ("sequential", "mb", None)]}
    assert list(labels.values()) == ["AttUnet++ + MB", "AttUnet++ (plain block)", "Unet++",
                                     "Hybrid-AttUnet++ (single decoder)", "Sequential (Unet, AttUnet++)"]


def test_ablation_switches():
    plain = create_model("attunet++", block="plain", width=32)
    mb = create_model("attunet++", width=32)
    assert count_parameters(plain) < count_parameters(mb)
    single = create_model("hybrid-attunet++", dual_decoder=False, width=32)
    assert count_parameters(single) == count_parameters(mb)
    with pytest.raises(ValueError):
        create_model("vnet")


def test_gate_with_low_resolution_g_equals_the_gate_on_up_sampled_g():
    from bonemet.models.blocks import AttentionGate, up2

    torch.manual_seed(0)
    low = AttentionGate(16, 8, 8, upsample_g=True).eval()
    for m in low.modules():  # BN statistics away from identity, so that BN's commuting with up-sampling is tested too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
    full = AttentionGate(16, 8, 8).eval()
    full.load_state_dict(low.state_dict())
    g, x = torch.randn(2, 16, 16, 16), torch.randn(2, 8, 32, 32)
    with torch.no_grad():
        a, b = low(g, x), full(up2(g), x)
    assert a.shape == b.shape == x.shape
    assert float((a - b).abs().max()) < 1e-5


def test_cat_for_conv_joins_at_the_autocast_dtype_only_under_autocast():
    from bonemet.models.blocks import cat_for_conv

    a, b = torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 4).bfloat16()
    assert cat_for_conv([a, a]).dtype == torch.float32 and cat_for_conv([a, a]).shape[1] == 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cat_for_conv([a, b])
    assert out.dtype == torch.bfloat16 and out.shape[1] == 5
    assert torch.equal(out[:, :2], a.bfloat16()) and torch.equal(out[:, 2:], b)


def _reference_gate(gate, g, x):
    """The reference attention gate (Oktay et al., the authors' AttUnet++): g up-sampled to x's size first, then
    W_g, W_x, psi, each a 1x1 convolution with BN; written here from the formula, not taken from bonemet."""
    import torch.nn.functional as F

    if gate.upsample_g:
        g = F.interpolate(g, scale_factor=2, mode="bilinear", align_corners=True)
    h = torch.relu(gate.w_g(g) + gate.w_x(x))
    return x * gate.psi(h)


@pytest.mark.parametrize("name", ["attunet++", "hybrid-attunet++"])
@pytest.mark.parametrize("training", [True, False])
def test_models_compute_the_reference_gate_order_in_training_and_evaluation(name, training, monkeypatch):
    """Identical weights and BN statistics; one forward pass with bonemet's gates and one with the reference gate.
    In training BN normalises with batch statistics, so the order of W_g and up-sampling matters there."""
    import copy

    from bonemet.models.blocks import AttentionGate

    torch.manual_seed(0)
    model = create_model(name, width=4)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
    reference = copy.deepcopy(model)
    model.train(training)
    reference.train(training)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ours = model(x)
        monkeypatch.setattr(AttentionGate, "forward", _reference_gate)
        theirs = reference(x)
    for a, b in zip(ours if isinstance(ours, tuple) else (ours,), theirs if isinstance(theirs, tuple) else (theirs,)):
        assert float((a - b).abs().max()) < 1e-5
    for (k, a), b in zip(model.state_dict().items(), reference.state_dict().values()):  # running statistics too
        if a.is_floating_point():
            assert float((a - b).abs().max()) < 1e-5, k


@pytest.mark.parametrize("name", ["unet", "attunet++", "hybrid-attunet++", "sequential"])
def test_a_lesion_prior_shifts_the_lesion_logits_and_nothing_else(name):
    """``lesion_prior``: the lesion head's bias starts at the prior's log-odds, so every lesion logit of a fresh
    model is that of the same model without it, shifted by exactly the change of that bias; bone logits equal."""
    import math

    from bonemet.models import lesion_head
    from bonemet.runs.seg import SegConfig, build_model

    x, ones = torch.randn(2, 3, 32, 32), torch.ones(2, 1, 32, 32)
    torch.manual_seed(3)
    plain = build_model(SegConfig(data="x", model=name, width=2)).eval()
    torch.manual_seed(3)
    prior = build_model(SegConfig(data="x", model=name, width=2, lesion_prior=0.01)).eval()
    assert lesion_head(prior).bias.item() == pytest.approx(math.log(0.01 / 0.99), abs=1e-6)
    shift = lesion_head(prior).bias.item() - lesion_head(plain).bias.item()
    with torch.no_grad():
        (l0, b0), (l1, b1) = forward(plain, x, ones), forward(prior, x, ones)
    torch.testing.assert_close(l1, l0 + shift, rtol=0, atol=1e-5)
    assert (b0 is None and b1 is None) or torch.equal(b0, b1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        from bonemet.models import set_lesion_prior
        set_lesion_prior(plain, 1.0)
