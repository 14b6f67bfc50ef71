"""Shared fixtures: a small phantom data set (made once per run) and the real CT in ../shared."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_CT = ROOT.parent / "shared" / "data" / "real_ct"


def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` (pytest-xdist) the workers share the cores: each worker, and every process a test
    starts from it, gets an equal share of torch threads, as bonemet's own parallel jobs do (two processes that
    each use every core run many times slower than one)."""
    if getattr(config.option, "maxschedchunk", 0) is None:
        # xdist hands each worker a quarter of its share of the tests, in collection order, before any test runs:
        # with the slow tests first (below) one worker would get all of them. One test at a time instead: each
        # worker takes the next test when it is free, which keeps the longest-first order balanced
        config.option.maxschedchunk = 1
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        from bonemet.devices import threads_per_process

        threads = threads_per_process(int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked ``slow`` run first: with several workers the long ones then overlap each other instead of
    one of them running alone at the end (longest first is the classic rule for balancing parallel work)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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


@pytest.fixture(scope="session")
def seg_run(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Hybrid-AttUnet++ run (2 folds, 1 epoch): enough to exercise every output."""
    run = tmp_path_factory.mktemp("seg") / "run"
    r = invoke("seg", "train", "--data", phantom / "bmseg", "--folds", "2", "--test-patients", "0.25", "--epochs", "1",
               "--size", "64", "--width", "4", "--neg-ratio", "0.5", "--out", run)
    assert r.returncode == 0, r.stderr
    return run


@pytest.fixture(scope="session")
def cls_run(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny slice classifier trained on body crops (predict must crop its slices the same way)."""
    run = tmp_path_factory.mktemp("cls") / "run"
    r = invoke("cls", "train", "--data", phantom / "classification", "--model", "small_cnn16", "--size", "64",
               "--crop", "body", "--epochs", "1", "--test-patients", "0.5", "--out", run)
    assert r.returncode == 0, r.stderr
    return run


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``bonemet`` as a user would (a fresh process, its real exit code and stderr). A few tests keep
    this to check the installed entry point end to end; the rest use :func:`invoke`."""
    return subprocess.run([sys.executable, "-m", "bonemet.cli.main", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def invoke(*args: str) -> subprocess.CompletedProcess:
    """Run ``bonemet`` in this process: the exit code, stdout and stderr of :func:`run_cli` through the same
    ``main()``, without a fresh interpreter, whose imports (torch, torchvision, scikit-learn) cost 5-15 s on
    the 2-core CI machine, about 6 s a call. An unexpected exception fails the test with its traceback. Torch's
    thread count is put back afterwards (``bench infer --threads`` sets it for the process)."""
    import torch

    from bonemet.cli.main import main, setup_logging
    from bonemet.log import logger

    out, err = io.StringIO(), io.StringIO()
    setup_logging()
    handlers = [h for h in logger.handlers if getattr(h, "_bonemet", False)]
    streams = [h.setStream(err) for h in handlers]  # library log lines go where this call's stderr goes
    cmd = ["bonemet", *map(str, args)]
    argv, sys.argv = sys.argv, cmd
    code, threads = 0, torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
        for h, stream in zip(handlers, streams):
            h.setStream(stream)
    return subprocess.CompletedProcess(cmd, code, out.getvalue(), err.getvalue())
