"""The segmentation model family: parameter counts of SPEC 2.1, shapes, every parameter used."""

from __future__ import annotations

import pytest
import torch

from bonemet.models import count_parameters, create_model

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
    assert len(outs) == (2 if name == "hybrid-attunet++" else 1)
    assert all(o.shape == (2, 1, 64, 64) for o in outs)
    sum(o.mean() for o in outs).backward()
    unused = [n for n, p in m.named_parameters() if p.grad is None]
    assert not unused, unused


def test_ablation_switches():
    plain = create_model("attunet++", block="plain", width=32)
    mb = create_model("attunet++", width=32)
    assert count_parameters(plain) < count_parameters(mb)
    single = create_model("hybrid-attunet++", dual_decoder=False, width=32)
    assert count_parameters(single) == count_parameters(mb)
    with pytest.raises(ValueError):
        create_model("vnet")
