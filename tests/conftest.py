"""Shared fixtures: a small phantom data set (made once per run) and the real CT in ../shared."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_CT = ROOT.parent / "shared" / "data" / "real_ct"


@pytest.fixture(scope="session")
def real_ct() -> Path:
    if not (REAL_CT / "chest_abdomen_dicom").is_dir():
        pytest.skip(f"real CT test data not found at {REAL_CT} (it sits beside the repository in CI)")
    return REAL_CT


@pytest.fixture(scope="session")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 patients (2 metastatic), 128 px, 40 slices, every layout."""
    from bonemet.phantom.synth import synthesize

    out = tmp_path_factory.mktemp("phantom") / "p"
    synthesize(out, patients=4, seed=3, size=128, slices=40)
    return out


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``bonemet`` as a user would (a fresh process, its real exit code and stderr)."""
    return subprocess.run([sys.executable, "-m", "bonemet.cli.main", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)
