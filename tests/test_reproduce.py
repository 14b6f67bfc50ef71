"""``bonemet reproduce`` end to end at toy size: every table, both protocols, the thesis' numbers beside ours."""

from __future__ import annotations

import json

import pytest

from conftest import invoke


@pytest.mark.slow
def test_reproduce_quick_writes_every_table_and_resumes(phantom, tmp_path):
    out = tmp_path / "rep"
    args = ("reproduce", "--data", phantom / "bmseg", "--classification", phantom / "classification", "--out", out,
            "--experiments", "unet,attunet++-plain,attunet++,hybrid-attunet++,sequential-attunet")
    r = invoke(*args)
    assert r.returncode == 0, r.stderr
    assert "of segmentation training left" in r.stderr.splitlines()[1]  # the estimate comes before any training
    report = (out / "report.md").read_text()
    for section in ("## Tables 4.1 and 4.2", "## EH-AttUnet++", "## Table 4.3", "## Table 4.4", "## Tables 5.1"):
        assert section in report, section
    for row in ("| Unet | ours, paper protocol (slice-level CV, leaky, as the thesis) |",
                "| Unet | ours, patient-level CV (bonemet) |", "| Unet | thesis | 79.46 | 72.26 |",
                "| Unet | ours (paper) - thesis |", "| Sequential (Unet, AttUnet) | thesis | 77.41 |",
                "| EH-AttUnet++ | ours, paper protocol: every member on every fold (leaky) |",
                "| EH-AttUnet++ | ours, held-out test patients", "| Unet | thesis | 80.41 | 77.52 | 79.27 |",
                "|  |  |  | cross-validation, each fold model on its own fold | 68.78 | 58.74 |",
                "| ✓ | ✓ | ✓ | paper: every member on every fold (leaky); patient: held-out test patients "
                "| 83.67 | 77.05 |",
                "| EH-AttUnet++ | ours, paper protocol (leaky) |", "| EH-AttUnet++ | thesis | 84.19 | 83.49 |",
                "| small_cnn16 | ours |"):
        assert row in report, row
    data = json.loads((out / "report.json").read_text())
    paper = {(d["model"], d["protocol"]): d["F1"] for d in data["segmentation"]}
    assert len(paper) == 10 and data["protocol gap F1"] is not None
    # the differences are ours minus the thesis', as printed
    unet_paper = json.loads((out / "seg" / "paper" / "unet" / "eval" / "metrics.json").read_text())["cv"]["mean"]["F1"]
    assert f"| Unet | ours (paper) - thesis | {100 * unet_paper - 79.46:+.2f} |" in report
    r = invoke(*args)  # everything finished: nothing is trained again
    assert r.returncode == 0, r.stderr
    assert "==" not in r.stderr and "nothing left to train" in r.stderr
    # runs of another budget are never taken for this one's
    r = invoke(*args, "--budget", "full")
    assert r.returncode == 2 and "these options differ" in r.stderr and "epochs 1 in the run, 60 now" in r.stderr
    assert "Traceback" not in r.stderr
