"""The seg and bench commands as a user runs them."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from conftest import invoke, run_cli


def test_seg_models_table_lists_the_family():
    res = run_cli("seg", "models", "--width", "32", "--size", "224")
    assert res.returncode == 0, res.stderr
    for name, params in (("unet", "8.64"), ("attunet", "8.73"), ("unet++", "9.72"), ("attunet++", "10.07"),
                         ("hybrid-attunet++", "14.01")):
        assert f"| {name} | {params} |" in res.stdout
    gmac = [line for line in res.stdout.splitlines() if line.startswith("| hybrid-attunet++ |")][0].split("|")[3]
    assert 38 < float(gmac) < 46  # about 42 GMAC per 224 px slice


def test_seg_train_and_evaluate_cli(phantom, tmp_path):
    run = tmp_path / "run"
    res = invoke("seg", "train", "--data", phantom / "bmseg", "--out", run, "--model", "attunet", "--folds", "2",
                 "--test-patients", "0.25", "--epochs", "1", "--size", "32", "--width", "2", "--neg-ratio", "0.5",
                 "--bf16")
    assert res.returncode == 0, res.stderr
    assert json.loads((run / "config.json").read_text())["bf16"] is True
    res = invoke("seg", "evaluate", run)
    assert res.returncode == 0, res.stderr
    assert "ensemble of AttUnet (2 members)" in res.stdout
    assert json.loads((run / "eval" / "metrics.json").read_text())["test_patients"]


def test_seg_train_bad_input(tmp_path, phantom):
    res = invoke("seg", "train", "--data", phantom / "bmseg", "--out", tmp_path / "r", "--model", "vnet")
    assert res.returncode == 2 and "unknown model 'vnet'" in res.stderr and "Traceback" not in res.stderr
    res = invoke("seg", "evaluate", tmp_path)
    assert res.returncode == 2 and "not a segmentation run folder" in res.stderr and "Traceback" not in res.stderr
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    from bonemet.errors import BonemetError
    from bonemet.runs.checkpoint import load_checkpoint

    try:
        load_checkpoint(bad)
    except BonemetError as exc:
        assert "not a bonemet checkpoint" in str(exc)
    else:
        raise AssertionError("a damaged checkpoint must be refused")


def test_bench_seg_quick(tmp_path):
    res = invoke("bench", "seg", "--quick", "--size", "32", "--width", "2", "--batch-size", "2", "--models",
                 "unet,hybrid-attunet++", "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "bench_seg.md").read_text()
    assert "| unet |" in text and "| hybrid-attunet++ |" in text and "train img/s" in text
    assert "train img/s --bf16" in text and "bf16 speed-up" in text


def test_bench_memory_harness(tmp_path):
    """The harness runs end to end on a short scan (its figures mean something at 1,000 slices, not here)."""
    res = invoke("bench", "memory", "--slices", "8", "--size", "64", "--formats", "nifti", "--threshold", "0.45",
                 "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "bench_memory.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| nifti | 8 | 64 |"))
    peak = float(row.split("|")[4])
    assert 100 < peak < 4000  # a fresh Python process with torch, measured on its own
    assert "fresh process" in text and "random-weight" in text
    r = invoke("bench", "memory", "--formats", "png")
    assert r.returncode == 2 and "--formats wants nifti and / or dicom" in r.stderr


def test_compute_floor_leaves_out_emulated_bf16(monkeypatch):
    """On a CPU without native bfloat16 the bench measures no bf16 floor: emulated, it is no floor, and its large
    shapes take minutes."""
    import torch

    from bonemet.bench import peak

    monkeypatch.setattr(peak, "cpu_bf16_supported", lambda: False)
    said: list[str] = []
    assert peak.compute_floor(dtypes=(torch.bfloat16,), reps=1, log=said.append) == {}
    assert said == ["compute floor bf16: not measured (this CPU has no native bfloat16)"]


def test_int8_floor_is_measured_in_onnx_runtime_too(monkeypatch):
    """The int8 path runs in ONNX Runtime: its int8 matmuls and convolutions count towards the int8 floor (torch's
    int8 matmul reached 2 GOP/s on a CPU without VNNI, where the int8 path ran at 275)."""
    import torch

    from bonemet.bench import peak

    pytest.importorskip("onnxruntime")
    matmul = peak._matmul
    monkeypatch.setattr(peak, "_matmul", lambda n, dtype: (matmul(n, dtype)[0], 1.0))  # torch's: next to nothing
    floor = peak.compute_floor(dtypes=(torch.int8,), reps=1, quick=True)["int8"]
    assert floor["shape"].endswith(", ONNX Runtime") and floor["GFLOP/s"] > 0.5
    monkeypatch.setattr(peak, "ort_available", lambda: False)
    assert peak.compute_floor(dtypes=(torch.int8,), reps=1, quick=True)["int8"]["shape"] == "matmul 1024"
    # a torch matmul far below the best so far: no fast kernel, and its larger sizes are not measured
    monkeypatch.setattr(peak, "ort_available", lambda: True)
    monkeypatch.setattr(peak, "MATMUL_SIZES", (128, 256, 512))
    monkeypatch.setattr(peak, "CONV_SHAPES", ((16, 28, 1),))
    said: list[str] = []
    peak.compute_floor(dtypes=(torch.int8,), reps=1, log=said.append)
    assert [line.split(":")[0] for line in said if "not measured" in line] == ["int8 matmul 256", "int8 matmul 512"]


@pytest.mark.slow
def test_bench_infer_quick(seg_run, tmp_path):
    """The harness runs end to end on a tiny model (its figures are only meaningful at full size), and checks every
    path's answers on a trained run. A fresh process: with OpenVINO installed its paths are among them, and a
    process that has run OpenVINO can crash when it later forks DataLoader workers (as later tests here do)."""
    res = run_cli("bench", "infer", "--quick", "--no-compile", "--size", "32", "--width", "2", "--slices", "2",
                 "--scan-slices", "8", "--members", "2", "--batch-size", "4", "--profile", "--top", "3",
                 "--check-run", seg_run, "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "bench_infer.md").read_text()
    trained = text.split("Answers of trained models against eager fp32:")[1]
    assert f"member(s) of {seg_run}" in trained and "test patient(s)" in trained
    assert "lesion max diff, worst member" in trained and "lesion max diff, ensemble" in trained
    for row in ("| fold_bn, batch 4 |", "| fold_bn + onnx, batch 4", "| fold_bn + int8, batch 4 |"):
        assert row in trained
    openvino = importlib.util.find_spec("openvino") is not None
    assert ("| fold_bn + openvino, batch 4 |" in trained) == openvino
    assert ("| --fast fold_bn,openvino" in text) == openvino  # predict end to end
    for path in ("| fold_bn + onnx", "| fold_bn + fuse + channels_last, batch 4") + (  # "(default)" without bf16
            ("| fold_bn + openvino, batch 4 |",) if openvino else ()):
        fp32 = next(line for line in trained.splitlines() if line.startswith(path))
        cells = [c.strip() for c in fp32.split("|")]
        assert float(cells[2]) < 1e-4 and float(cells[3]) < 1e-4  # worst member, ensemble
        assert cells[4] == "100.0"  # all pixels within 0.02 of eager fp32
    text = text.split("Answers of trained models against eager fp32:")[0]
    assert "| eager fp32, batch 1 (baseline) |" in text and "| 1.0x |" in text and "first pass s" in text
    assert "images/s" in text and ("with --bf16" in text or "--bf16 not measured (no native bf16)" in text)
    assert "forward / backward / optimiser ms per step" in text
    assert "| fold_bn + int8, batch 4 |" in text and "| --fast fold_bn,int8, batch 4" in text
    assert "| default (fold_bn+fuse+channels_last" in text and "| eager fp32, batch 1 (baseline) | " in text
    # each path's share of the floor is its GFLOP/s over the floor of its own precision
    floor = {p: float(v) for p, v in re.findall(r"(fp32|bf16|int8) ([\d.]+) GFLOP/s \(", text)}
    assert "fp32" in floor and "int8" in floor
    header, _, *rows = [r for r in text.split("\n\n")[1].splitlines()]
    cols = [c.strip() for c in header.split("|")]
    for row in rows:
        cells = dict(zip(cols, (c.strip() for c in row.split("|"))))
        prec = "int8" if "int8" in cells["path"] else "bf16" if "bf16" in cells["path"] else "fp32"
        if prec in floor:
            share = 100 * float(cells["GFLOP/s"]) / floor[prec]  # the floor is printed to 0.1: a small one moves it
            assert abs(float(cells["share of peak %"]) - share) < 0.2 + share * 0.06 / floor[prec]
    # --profile: the top operators of every torch path, none for ONNX Runtime's or OpenVINO's (torch sees no work)
    outside = [r for r in rows if any(f"+ {p}" in r.split("|")[1] for p in ("onnx", "int8", "openvino"))]
    from bonemet.inference.fast import bf16_supported

    assert len(outside) == 2 + openvino * (1 + bf16_supported())  # onnx, int8; OpenVINO in fp32 (and bf16)
    assert text.count("Top operators of one pass") == len(rows) - len(outside)
    assert "Top operators of one pass (2 slices), fold_bn + onnx" not in text
    ops = text.split("Top operators of one pass (2 slices), eager fp32, batch 1 (baseline):")[1].split("\n\n")[1]
    assert ops.splitlines()[0].startswith("| operator | ms | share % | calls |") and len(ops.splitlines()) == 5
    assert "aten::" in ops
