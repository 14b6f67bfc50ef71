"""The nested nodes' inputs built by one generated kernel each, on the default bf16 path: NOT part of bonemet.

On the default CPU path a node X(i, j) of Hybrid-AttUnet++ gets its input in several passes over memory: each
attention gate's product x * a (in fp32, the gates being fp32 islands), the bilinear up-sampling of X(i+1, j-1), and
the copies of all of them into one channels-last buffer (``models.blocks.cat_for_conv``). Here, for every node,
Inductor (``torch.compile``) generates one kernel that reads each gate's x and a, and the low-resolution X(i+1, j-1),
once, and writes the bf16 buffer once; the gates up to their coefficient a, the convolutions and everything else
are the default path's own modules. The two take turns (hybrid-attunet++, width 32, 224 px, random weights, batch 2,
median of 5 rounds of two passes), and the answers are compared (largest difference, masks at 0.5).

    python docs/experiments/fused_concat.py [--floor 3394]     # about 2 min, most of it compiling
"""

from __future__ import annotations

import logging
import sys
import time

import torch
import torch.nn.functional as F

from bonemet.inference.fast import FastModel, default_paths
from bonemet.models import create_model

GFLOP = 2 * 40.8  # per slice at 224 px, width 32 (40.8 GMAC: ``bonemet seg models``)


def assemble(xs: list[torch.Tensor], coefficients: list[torch.Tensor], low: torch.Tensor) -> torch.Tensor:
    """A node's input: every gated skip x * a, and X(i+1, j-1) up-sampled, in one bf16 channels-last tensor."""
    parts = [(x.float() * a).to(torch.bfloat16) for x, a in zip(xs, coefficients)]
    parts.append(F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=True).to(torch.bfloat16))
    return torch.cat(parts, 1).contiguous(memory_format=torch.channels_last)


def coefficient(fp32_gate: torch.nn.Module, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The fused gate's a = sigmoid(psi(ReLU(W_x x + up(W_g g)))), in fp32 as the default path runs gates."""
    gate = fp32_gate.module  # inference.fusion._FusedGate inside fast._FP32
    with torch.autocast("cpu", enabled=False):
        g, x = g.float(), x.float()
        wg = gate.w_g(g)
        if gate.upsample_g:
            wg = F.interpolate(wg, scale_factor=2, mode="bilinear", align_corners=True)
        return gate.psi(gate.w_x(x, wg))


def forward_fused(net, inp: torch.Tensor, build) -> tuple[torch.Tensor, torch.Tensor]:
    """``models.nested.NestedUNet.forward`` with each node's input made by ``build`` (attention on, as in the
    hybrid model)."""
    x: dict = {}
    h = inp
    for i, block in enumerate(net.enc):
        h = block(h if i == 0 else net.pool(h))
        x[(i, 0, 0)] = h
    coeffs: dict = {}

    def node(i: int, j: int, d: int) -> torch.Tensor:
        dd = d if net._copies(i, j) > 1 else 0
        if (i, j, dd) not in x:
            xs, cs = [], []
            for n in range(j):
                gd = dd if net._gate_copies(i, n) > 1 else 0
                if (i, n, gd) not in coeffs:
                    coeffs[(i, n, gd)] = coefficient(net.gates[f"{i}_{n}"][gd], node(i + 1, n, gd), node(i, n, gd))
                xs.append(node(i, n, gd))
                cs.append(coeffs[(i, n, gd)])
            x[(i, j, dd)] = net.nodes[f"{i}_{j}"][dd](build(xs, cs, node(i + 1, j - 1, dd)))
        return x[(i, j, dd)]

    return tuple(net.heads[d](node(0, 4, d)) for d in range(net.n_dec))


def main(floor: float | None) -> None:
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    torch.manual_seed(0)
    model = create_model("hybrid-attunet++", width=32).eval()
    fast = FastModel(model, default_paths())
    net = fast.model
    x = torch.rand(2, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    torch._dynamo.config.recompile_limit = 64  # one kernel per node shape (10 of them), not eager after 8
    compiled = torch.compile(assemble, dynamic=False)

    def default() -> tuple[torch.Tensor, ...]:
        return fast(x)

    def fused() -> tuple[torch.Tensor, ...]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return tuple(o.float() for o in forward_fused(net, x, compiled))

    with torch.inference_mode():
        t = time.perf_counter()
        ref, got = default(), fused()
        print(f"first passes (compiling every node's kernel): {time.perf_counter() - t:.1f} s")
        for name, r, g in zip(("lesion", "bone"), ref, got):
            pr, pg = torch.sigmoid(r), torch.sigmoid(g)
            print(f"{name}: largest probability difference {float((pr - pg).abs().max()):.2e}, masks equal on "
                  f"{100 * float(((pr >= 0.5) == (pg >= 0.5)).float().mean()):.4f} % of pixels")
        times: dict[str, list[float]] = {"default": [], "fused node inputs": []}
        for _ in range(5):
            for name, f in (("default", default), ("fused node inputs", fused)):
                t = time.perf_counter()
                f()
                f()
                times[name].append((time.perf_counter() - t) / 4)  # per slice
    print("| path | slices/s | GFLOP/s |" + (" share of the bf16 floor % |" if floor else ""))
    print("| --- | --- | --- |" + (" --- |" if floor else ""))
    for name, ts in times.items():
        per_slice = sorted(ts)[len(ts) // 2]
        share = f" {100 * GFLOP / per_slice / floor:.1f} |" if floor else ""
        print(f"| {name} | {1 / per_slice:.2f} | {GFLOP / per_slice:.0f} |{share}")


if __name__ == "__main__":
    floor = next((float(sys.argv[i + 1]) for i, a in enumerate(sys.argv) if a == "--floor"), None)
    main(floor)
