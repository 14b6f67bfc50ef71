"""Reliability: outputs never destroy what bonemet did not write, concurrent and killed runs leave no wreckage."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bonemet.errors import BonemetError
from bonemet.fileio import MARKER, atomic_dir, clear_stale_parts, owned_output
from conftest import invoke
from test_cli import assert_clean_failure
from test_predict import _metastatic_patient


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a digest of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_replaces_only_an_earlier_predict_output(phantom, seg_run, tmp_path):
    pid = _metastatic_patient(phantom)
    patients = tmp_path / "patients"  # a parent folder holding several patients' series
    shutil.copytree(phantom / "dicom", patients)
    series = patients / pid
    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    other_run = tmp_path / "other_run"  # a trained run that is not an input of this call
    shutil.copytree(seg_run, other_run)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("a colleague's notes")
    synth = tmp_path / "synth"
    r = invoke("data", "synth", synth, "--patients", "1", "--size", "64", "--slices", "8", "--formats", "volumes")
    assert r.returncode == 0, r.stderr
    cases = [(series, "is an input"), (patients, "contains an input"), (run, "is an input"),
             (tmp_path, "contains an input"), (other_run, "not written by bonemet"),
             (notes, "not written by bonemet"), (synth, "output of 'bonemet data synth'")]
    for folder, why in cases:
        before = _snapshot(folder)
        r = invoke("predict", series, "--seg", run, "--out", folder, "--overwrite")
        assert_clean_failure(r, why)
        assert r.returncode == 2
        assert _snapshot(folder) == before, folder
    assert not list(tmp_path.rglob("*.part")), "no temporary folder is left behind"

    # bonemet's own earlier output is replaced; once something else is put into it, it is not
    out = tmp_path / "pred"
    assert invoke("predict", series, "--seg", run, "--out", out, "--no-dicom-seg").returncode == 0
    assert not (out / "lesions_seg.dcm").exists()
    r = invoke("predict", series, "--seg", run, "--out", out)
    assert_clean_failure(r, "not empty", "--overwrite")
    r = invoke("predict", series, "--seg", run, "--out", out, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (out / "lesions_seg.dcm").exists() and owned_output(out, "predict") == (True, "")
    marker = json.loads((out / MARKER).read_text())
    assert marker["kind"] == "predict" and "summary.json" in marker["entries"]
    (out / "my_reading.txt").write_text("radiologist's notes")
    before = _snapshot(out)
    r = invoke("predict", series, "--seg", run, "--out", out, "--overwrite")
    assert_clean_failure(r, "my_reading.txt")
    assert _snapshot(out) == before
    # an output written before markers existed: recognised by its summary.json
    (out / "my_reading.txt").unlink()
    (out / MARKER).unlink()
    assert invoke("predict", series, "--seg", run, "--out", out, "--overwrite").returncode == 0


def test_output_paths_that_cannot_be_written_fail_first(phantom, seg_run, tmp_path):
    series = phantom / "dicom" / _metastatic_patient(phantom)
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = invoke("predict", series, "--seg", seg_run, "--out", afile)
    assert_clean_failure(r, "exists and is not a folder")
    r = invoke("predict", series, "--seg", seg_run, "--out", afile / "sub")
    assert_clean_failure(r, "not a folder")
    r = invoke("predict", series, "--seg", seg_run, "--out", "/proc/bonemet-output")
    assert_clean_failure(r, "cannot write in /proc")
    assert afile.read_text() == "x"


def test_the_final_move_is_atomic_between_two_writers(tmp_path):
    out = tmp_path / "out"
    first, second = atomic_dir(out, kind="predict"), atomic_dir(out, kind="predict")
    a, b = first.__enter__(), second.__enter__()  # both checked an empty place before either finished
    (a / "summary.json").write_text("A")
    (b / "summary.json").write_text("B")
    first.__exit__(None, None, None)
    with pytest.raises(BonemetError, match="another process wrote this output folder"):
        second.__exit__(None, None, None)
    assert (out / "summary.json").read_text() == "A"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # with overwrite, the loser may replace the winner's output, which is bonemet's own
    first, second = atomic_dir(out, kind="predict", overwrite=True), atomic_dir(out, kind="predict", overwrite=True)
    a, b = first.__enter__(), second.__enter__()
    (a / "summary.json").write_text("C")
    (b / "summary.json").write_text("D")
    first.__exit__(None, None, None)
    second.__exit__(None, None, None)
    assert (out / "summary.json").read_text() == "D"
    # ... but not once someone else's file has been put into it
    third = atomic_dir(out, kind="predict", overwrite=True)
    c = third.__enter__()
    (c / "summary.json").write_text("E")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BonemetError, match="notes.txt"):
        third.__exit__(None, None, None)
    assert (out / "summary.json").read_text() == "D" and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_two_predict_processes_on_one_output_one_wins(phantom, seg_run, tmp_path):
    out = tmp_path / "out"
    pids = sorted(p.name for p in (phantom / "dicom").iterdir())[:2]
    procs = [subprocess.Popen([sys.executable, "-m", "bonemet.cli.main", "predict", phantom / "dicom" / p,
                               "--seg", seg_run, "--out", out, "--no-dicom-seg"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in pids]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "another process wrote this output folder" in loser or "not empty" in loser, loser
    assert "Traceback" not in loser
    winner = pids[[code for code, _ in results].index(0)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input"]["slices"] > 0 and owned_output(out, "predict")[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "the loser's temporary folder is removed"
    assert winner  # the surviving output is one whole run's, not a mixture
    assert set(summary["files"]) <= {p.name + ("/" if p.is_dir() else "") for p in out.iterdir()}


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_sigterm_cleans_up_and_stale_parts_of_killed_runs_are_cleared(phantom, seg_run, tmp_path):
    series = phantom / "dicom" / _metastatic_patient(phantom)
    out = tmp_path / "pred"
    for signum, code, word in ((signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")):
        for _ in range(3):  # on a loaded machine this test may see the folder only as predict finishes: again
            proc = subprocess.Popen([sys.executable, "-m", "bonemet.cli.main", "predict", series, "--seg", seg_run,
                                     "--out", out, "--fast", "eager", "--batch-size", "1", "--probabilities"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.time() + 120
            while not list(tmp_path.glob(".pred.*.part")) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            assert proc.poll() is None, "predict ended before it could be signalled"
            proc.send_signal(signum)
            if proc.wait(timeout=60) == 0 and (out / "summary.json").exists():
                proc.stderr.close()
                shutil.rmtree(out)  # it published its complete output before the signal landed
                continue
            break
        assert proc.returncode == code
        err = proc.stderr.read()
        assert word in err, err
        assert "Traceback" not in err, err
        assert list(tmp_path.iterdir()) == []

    # what SIGKILL leaves: a temporary folder whose writer is gone; it goes at the next call, and nothing else does
    from bonemet.fileio import write_marker

    stale, live, foreign = (tmp_path / ".pred.a1.part", tmp_path / ".pred.b2.part", tmp_path / ".pred.c3.part")
    for d in (stale, live, foreign):
        d.mkdir()
        (d / "lesion_mask.nii.gz").write_bytes(b"half")
    write_marker(stale, "predict", [])
    write_marker(live, "predict", [])
    marker = json.loads((stale / MARKER).read_text())
    marker["writer"]["pid"] = _dead_pid()
    (stale / MARKER).write_text(json.dumps(marker))  # live keeps this test's own pid: a writer still running
    r = invoke("predict", series, "--seg", seg_run, "--out", out, "--no-dicom-seg")
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and live.exists() and foreign.exists()
    assert clear_stale_parts(out) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="permissions do not bind root; the unwritable place is checked through /proc instead")
def test_an_unwritable_parent_is_refused_before_work(phantom, seg_run, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        r = invoke("predict", phantom / "dicom" / "P000", "--seg", seg_run, "--out", locked / "out")
        assert_clean_failure(r, "permission denied")
    finally:
        locked.chmod(0o755)


def test_demo_and_synth_overwrite_only_their_own_folders(tmp_path):
    from bonemet.fileio import DEMO_ENTRIES, write_marker

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("two years of work")
    for args in (("demo", "--quick", "--out", mine, "--overwrite"),
                 ("data", "synth", mine, "--patients", "1", "--size", "64", "--slices", "8", "--overwrite")):
        r = invoke(*args)
        assert_clean_failure(r, "not written by bonemet")
        assert (mine / "thesis.tex").read_text() == "two years of work"
    demo = tmp_path / "demo"  # a demo folder of an earlier version, without a marker
    for name in DEMO_ENTRIES:
        (demo / name).mkdir(parents=True)
    (demo / "phantom" / "phantom.json").write_text("{}")
    assert owned_output(demo, "demo") == (True, "")
    (demo / "notes.md").write_text("mine")
    assert owned_output(demo, "demo")[0] is False
    (demo / "notes.md").unlink()
    write_marker(demo, "demo", DEMO_ENTRIES)
    assert owned_output(demo, "demo") == (True, "") and owned_output(demo, "predict")[0] is False
    synth = tmp_path / "synth"
    assert invoke("data", "synth", synth, "--patients", "1", "--size", "64", "--slices", "8",
                  "--formats", "volumes").returncode == 0
    r = invoke("data", "synth", synth, "--patients", "1", "--size", "64", "--slices", "8", "--formats", "bmseg",
               "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (synth / "bmseg").is_dir() and not (synth / "volumes").exists()
