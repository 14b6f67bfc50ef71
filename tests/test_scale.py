"""Scale: devices, loader workers, folds trained in parallel, torchrun data-parallel training, batch prediction
(local, job arrays, Dask) and the in-memory Python API."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from conftest import invoke

CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # two processes on 2 cores
TRAIN = ["--folds", "2", "--test-patients", "0.25", "--size", "64", "--width", "4", "--batch-size", "4",
         "--device", "cpu"]


def bonemet_process(*args: str, torchrun: int = 0) -> subprocess.Popen:
    """``bonemet`` in a fresh process (one torch thread), or under ``torchrun --nproc_per_node N``."""
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(torchrun),
               "-m", "bonemet", *map(str, args)]
    else:
        cmd = [sys.executable, "-m", "bonemet", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CHILD_ENV)


def invoke_one_thread(*args: str):
    """``invoke`` with one torch thread, as the child processes it is compared with (a thread count changes the
    order of sums, and Adam turns rounding noise into steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return invoke(*args)
    finally:
        torch.set_num_threads(threads)


def why(err: str) -> str:
    """A failed job's own error lines (bonemet's one-line errors), which torchrun's traceback pushes off the end."""
    own = "\n".join(line for line in err.splitlines() if line.lstrip().startswith("error"))
    return own[-1000:] + "\n" + err[-1500:]


def finish(p: subprocess.Popen) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=600)
    return p.returncode, out, err


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 patients of 12 slices at 64 px: a few seconds per training epoch."""
    from bonemet.phantom.synth import synthesize

    out = tmp_path_factory.mktemp("small") / "p"
    synthesize(out, patients=4, seed=3, size=64, slices=12)
    return out


def weights(run: Path, k: int) -> dict[str, torch.Tensor]:
    return torch.load(run / f"fold{k}" / "last.pt", weights_only=True)["model"]


def relative_difference(a: dict, b: dict) -> float:
    """|a - b| / |a| over every trained parameter of two state dicts (running statistics left out)."""
    names = [n for n in a if a[n].is_floating_point() and "running" not in n]
    va = torch.cat([a[n].double().flatten() for n in names])
    vb = torch.cat([b[n].double().flatten() for n in names])
    return float((va - vb).norm() / va.norm())


# --- devices --------------------------------------------------------------------------------------------------


def test_device_names() -> None:
    from bonemet.devices import resolve_device, threads_per_process
    from bonemet.errors import BonemetError

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    with pytest.raises(BonemetError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(BonemetError, match="cuda or cuda:N"):
        resolve_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(BonemetError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    assert [threads_per_process(n, cores=2) for n in (1, 2, 3)] == [2, 1, 1]
    assert threads_per_process(3, cores=16) == 5


def test_unknown_device_is_one_line(small: Path, tmp_path: Path) -> None:
    r = invoke("seg", "train", "--data", small / "bmseg", "--out", tmp_path / "r", "--device", "quantum")
    assert r.returncode == 2 and r.stderr.strip() == "error: unknown device 'quantum' (auto, cpu, cuda, cuda:N or mps)"
    assert not (tmp_path / "r").exists()


def test_checkpoints_hold_cpu_tensors(tmp_path: Path) -> None:
    from bonemet.runs.checkpoint import on_cpu, save_checkpoint

    t = torch.arange(3.0, requires_grad=True)  # (a GPU tensor's copy is checked by the CUDA test below)
    copied = on_cpu({"a": [t, (t,)], "b": 1})
    assert isinstance(copied["a"], list) and isinstance(copied["a"][1], tuple) and copied["b"] == 1
    assert torch.equal(copied["a"][1][0], t.detach()) and not copied["a"][0].requires_grad
    save_checkpoint(tmp_path / "c.pt", model={"w": torch.ones(2)}, optimizer={"state": {0: {"m": torch.ones(1)}}})
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    assert ck["model"]["w"].device.type == "cpu" and ck["optimizer"]["state"][0]["m"].device.type == "cpu"
    # the same content, the same bytes, wherever it is written (a re-trained bundled model keeps its SHA-256)
    (tmp_path / "again").mkdir()
    save_checkpoint(tmp_path / "again" / "other.pt", model={"w": torch.ones(2)},
                    optimizer={"state": {0: {"m": torch.ones(1)}}})
    assert (tmp_path / "again" / "other.pt").read_bytes() == (tmp_path / "c.pt").read_bytes()


# --- workers and the per-item augmentation ---------------------------------------------------------------------


def _batches(ds, aug, workers: int, world=None) -> list[torch.Tensor]:
    from bonemet.devices import World
    from bonemet.training.loop import epoch_loader

    loader = epoch_loader(ds, 4, seed=11, augment=aug, augment_seed=5, workers=workers, world=world or World())
    return [torch.cat([b["image"], b["lesion"]], 1) for b in loader]


def test_augmented_batches_do_not_depend_on_workers_or_processes(small: Path) -> None:
    from bonemet.data.bmseg import load_bmseg
    from bonemet.data.datasets import SegmentationDataset
    from bonemet.devices import World
    from bonemet.training.augment import SegAugment

    ds = SegmentationDataset(load_bmseg(small / "bmseg").slices[:20], 64, 3, transform=(aug := SegAugment()))
    alone = _batches(ds, aug, 0)
    assert len(alone) == 5
    for a, b in zip(alone, _batches(ds, aug, 2)):
        assert torch.equal(a, b)
    # the two processes of a torchrun job: every global batch is split between them, items interleaved
    ranks = [_batches(ds, aug, 0, World(r, 2, r)) for r in (0, 1)]
    for k, a in enumerate(alone):
        assert torch.equal(a[0::2], ranks[0][k]) and torch.equal(a[1::2], ranks[1][k])
    # and the draws are really random per item: another epoch seed moves them
    from bonemet.training.loop import epoch_loader

    other = [torch.cat([b["image"], b["lesion"]], 1)
             for b in epoch_loader(ds, 4, seed=11, augment=aug, augment_seed=6)]
    assert not torch.equal(alone[0], other[0])


# --- folds in parallel -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_folds_trained_in_parallel_evaluate_like_sequential_ones(small: Path, tmp_path: Path) -> None:
    seq, par = tmp_path / "seq", tmp_path / "par"
    args = ["seg", "train", "--data", small / "bmseg", *TRAIN, "--epochs", "1"]
    assert invoke_one_thread(*args, "--out", seq).returncode == 0
    procs = [bonemet_process(*args, "--out", par, "--fold", str(k)) for k in (0, 1)]  # at the same time
    results = [finish(p) for p in procs]
    assert [r[0] for r in results] == [0, 0], [r[2][-500:] for r in results]
    assert "trained fold 0 of 2" in results[0][1] and "trained fold 1 of 2" in results[1][1]
    assert json.loads((seq / "splits.json").read_text()) == json.loads((par / "splits.json").read_text())
    for k in (0, 1):
        assert relative_difference(weights(seq, k), weights(par, k)) < 1e-5
    tables = []
    for run in (seq, par):
        r = invoke("seg", "evaluate", run, "--device", "cpu")
        assert r.returncode == 0, r.stderr
        tables.append([(run / "eval" / name).read_text() for name in ("cv_table.md", "test_table.md")])
    assert tables[0] == tables[1]


def test_fold_calls_must_agree_and_evaluate_names_missing_folds(small: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = ["seg", "train", "--data", small / "bmseg", *TRAIN, "--epochs", "1", "--out", run]
    assert invoke(*base, "--fold", "1").returncode == 0
    r = invoke("seg", "evaluate", run)
    assert r.returncode == 2
    assert "1 of the run's 2 folds have not finished training: fold 0" in r.stderr
    r = invoke(*base[:-2], "--epochs", "2", "--out", run, "--fold", "0")  # another option than the run's
    assert r.returncode == 2 and "epochs 1 in the run, 2 now" in r.stderr
    assert not (run / "fold0").exists()
    r = invoke(*base, "--fold", "1")
    assert r.returncode == 2 and "fold 1 of this run has already started" in r.stderr
    r = invoke(*base, "--fold", "2")
    assert r.returncode == 2 and "the run has 2 folds, numbered 0 to 1" in r.stderr


# --- torchrun ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_processes_train_the_weights_of_one(small: Path, tmp_path: Path) -> None:
    """DDP over Gloo with --sync-bn and a global batch of 4 (2 per process) takes the steps of one process with a
    batch of 4. SGD: Adam divides each gradient by its own running size, so the conv biases that BatchNorm makes
    gradient-free (their gradients are rounding noise, 1e-10) would take full-size random steps in both runs."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["seg", "train", "--data", small / "bmseg", *TRAIN, "--epochs", "2", "--optimizer", "sgd", "--fold", "0"]
    assert invoke_one_thread(*args, "--out", one).returncode == 0
    code, out, err = finish(bonemet_process(*args, "--out", two, "--sync-bn", torchrun=2))
    assert code == 0, why(err)
    assert "2 processes (gloo): 2 items each, a global batch of 4" in err
    assert out.count("trained fold 0 of 2") == 1  # only rank 0 reports
    cfg = json.loads((two / "config.json").read_text())
    assert cfg["distributed"]["global_batch"] == 4 and cfg["distributed"]["batch_per_process"] == 2
    assert relative_difference(weights(one, 0), weights(two, 0)) < 1e-4
    rows = [list(csv.DictReader(open(run / "fold0" / "metrics.csv"))) for run in (one, two)]
    assert [float(r["train_loss"]) for r in rows[0]] == pytest.approx([float(r["train_loss"]) for r in rows[1]],
                                                                      rel=1e-5)
    # without --sync-bn each process normalises its own half batch: another function, visibly
    three = tmp_path / "three"
    assert finish(bonemet_process(*args, "--out", three, torchrun=2))[0] == 0
    assert relative_difference(weights(one, 0), weights(three, 0)) > 1e-4
    # a run trained this way is a run like any other (fold 1 added by one process)
    assert invoke(*args[:-1], "1", "--out", two).returncode == 0
    scan = small / "volumes" / "P000" / "ct.nii.gz"
    r = invoke("predict", scan, "--seg", two, "--out", tmp_path / "pred", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "pred" / "summary.json").read_text())["models"]["segmentation"]["members"] == 2


@pytest.mark.slow
def test_classifier_trains_under_torchrun(small: Path, tmp_path: Path) -> None:
    """cls train under torchrun: a run that cls evaluate reads like any other (small_cnn16 has dropout, whose masks
    each process draws for itself, so its weights are not compared with one process's)."""
    run = tmp_path / "cls"
    code, out, err = finish(bonemet_process("cls", "train", "--data", small / "classification", "--model",
                                            "small_cnn16", "--size", "64", "--epochs", "1", "--batch-size", "8",
                                            "--test-patients", "0.25", "--device", "cpu", "--sync-bn", "--out", run,
                                            torchrun=2))
    assert code == 0, why(err)
    assert json.loads((run / "fold0" / "done.json").read_text())["processes"] == 2
    r = invoke("cls", "evaluate", run, "--device", "cpu")
    assert r.returncode == 0, r.stderr


def test_cpu_sync_batchnorm_is_batchnorm_when_alone() -> None:
    from bonemet.training.distributed import convert_sync_batchnorm

    torch.manual_seed(0)
    bn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    synced = convert_sync_batchnorm(bn, torch.device("cpu"))
    assert synced[1].weight is bn[1].weight  # the same parameters: an optimiser made before keeps working
    x = torch.rand(2, 3, 5, 5)
    assert torch.allclose(synced(x), torch.nn.functional.batch_norm(bn[0](x), None, None, bn[1].weight,
                                                                    bn[1].bias, True), atol=1e-6)


# --- batch prediction ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cases(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four cases: three phantom CT volumes and a damaged file."""
    folder = tmp_path_factory.mktemp("cases") / "cases"
    folder.mkdir()
    for p in ("P000", "P001", "P002"):
        shutil.copy(phantom / "volumes" / p / "ct.nii.gz", folder / f"{p}.nii.gz")
    (folder / "P003.nii.gz").write_bytes(b"not a NIfTI file")
    return folder


def test_batch_predicts_skips_finished_cases_and_records_failures(cases: Path, seg_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = invoke("predict", cases, "--batch", "--seg", seg_run, "--out", out, "--device", "cpu")
    assert r.returncode == 1
    assert "4 case(s): 3 predicted, 0 already done, 1 failed" in r.stdout
    for p in ("P000", "P001", "P002"):
        assert (out / p / "summary.json").is_file() and (out / p / "lesion_mask.nii.gz").is_file()
    assert not (out / "P003").exists()
    failures = list(csv.DictReader(open(out / "failures.csv")))
    assert [f["case"] for f in failures] == ["P003"] and "not a readable NIfTI file" in failures[0]["reason"]
    cohort = list(csv.DictReader(open(out / "cohort.csv")))
    assert [c["case"] for c in cohort] == ["P000", "P001", "P002"]
    summary = json.loads((out / "P001" / "summary.json").read_text())
    assert cohort[1]["verdict"] == summary["verdict"] and int(cohort[1]["lesions"]) == summary["lesions"]
    stamps = {p: (out / p / "summary.json").stat().st_mtime_ns for p in ("P000", "P001", "P002")}
    r = invoke("predict", cases, "--batch", "--seg", seg_run, "--out", out, "--device", "cpu")
    assert r.returncode == 1 and "4 case(s): 0 predicted, 3 already done, 1 failed" in r.stdout
    assert stamps == {p: (out / p / "summary.json").stat().st_mtime_ns for p in stamps}  # no work redone
    # the damaged case repaired: the next call predicts it alone, and its failure is gone
    fixed = tmp_path / "fixed"
    shutil.copytree(cases, fixed)
    shutil.copy(cases / "P000.nii.gz", fixed / "P003.nii.gz")
    r = invoke("predict", fixed, "--batch", "--seg", seg_run, "--out", out, "--device", "cpu")
    assert r.returncode == 0 and "1 predicted, 3 already done, 0 failed" in r.stdout
    assert list(csv.DictReader(open(out / "failures.csv"))) == []
    # a manifest, split over a job array of two parts
    manifest = tmp_path / "cases.csv"
    manifest.write_text("case,input\n" + "".join(f"c{i},{cases / f'P00{i}.nii.gz'}\n" for i in range(3)))
    parts = tmp_path / "parts"
    for part in ("0", "1"):
        r = invoke("predict", manifest, "--seg", seg_run, "--out", parts, "--num-parts", "2", "--part-id", part)
        assert r.returncode == 0, r.stderr
    assert sorted(c["case"] for c in csv.DictReader(open(parts / "cohort.csv"))) == ["c0", "c1", "c2"]
    lesion = lambda folder: np.asarray(__import__("nibabel").load(folder / "lesion_mask.nii.gz").dataobj)  # noqa: E731
    assert np.array_equal(lesion(parts / "c1"), lesion(out / "P001"))


def test_batch_refuses_a_foreign_output_folder(cases: Path, seg_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    r = invoke("predict", cases, "--batch", "--seg", seg_run, "--out", out)
    assert r.returncode == 2 and "not an earlier 'bonemet predict' batch output" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_batch_with_local_jobs_and_on_a_dask_cluster_matches_the_serial_run(cases: Path, seg_run: Path,
                                                                             tmp_path: Path, monkeypatch) -> None:
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    import nibabel as nib

    good = tmp_path / "good"
    good.mkdir()
    for p in ("P000", "P001", "P002"):
        shutil.copy(cases / f"{p}.nii.gz", good / f"{p}.nii.gz")
    runs = {}
    assert invoke("predict", good, "--batch", "--seg", seg_run, "--out", tmp_path / "serial").returncode == 0
    runs["serial"] = tmp_path / "serial"
    r = invoke("predict", good, "--batch", "--seg", seg_run, "--out", tmp_path / "jobs", "--jobs", "2")
    assert r.returncode == 0, r.stderr
    runs["jobs"] = tmp_path / "jobs"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc:
        r = invoke("predict", good, "--batch", "--seg", seg_run, "--out", tmp_path / "dask", "--dask",
                   lc.scheduler_address)
    assert r.returncode == 0, r.stderr
    runs["dask"] = tmp_path / "dask"
    for p in ("P000", "P001", "P002"):
        masks = {k: np.asarray(nib.load(v / p / "lesion_mask.nii.gz").dataobj) for k, v in runs.items()}
        assert np.array_equal(masks["serial"], masks["jobs"]) and np.array_equal(masks["serial"], masks["dask"])
    monkeypatch.setattr("bonemet.inference.batch.DASK_CONNECT_TIMEOUT", "2s")  # nothing listens there: no need to wait
    r = invoke("predict", good, "--batch", "--seg", seg_run, "--out", tmp_path / "x", "--dask", "tcp://127.0.0.1:9")
    assert r.returncode == 2 and "no Dask scheduler answered" in r.stderr


# --- the Python API ---------------------------------------------------------------------------------------------


def test_python_api_in_memory_matches_the_command(phantom: Path, seg_run: Path, tmp_path: Path) -> None:
    import nibabel as nib

    import bonemet

    path = phantom / "volumes" / "P001" / "ct.nii.gz"
    img = nib.load(path)
    by_path = bonemet.predict(path, seg=seg_run, device="cpu")
    by_image = bonemet.predict(img, seg=seg_run)
    by_array = bonemet.predict(np.asanyarray(img.dataobj), affine=img.affine, seg=seg_run)
    assert not any(tmp_path.iterdir())  # nothing written without out
    for other in (by_image, by_array):
        assert np.array_equal(by_path.lesion_mask, other.lesion_mask)
        assert other.verdict == by_path.verdict and other.probability == by_path.probability
    assert invoke("predict", path, "--seg", seg_run, "--out", tmp_path / "cli").returncode == 0
    written = np.asarray(nib.load(tmp_path / "cli" / "lesion_mask.nii.gz").dataobj) > 0
    native, affine = by_path.native_masks()["lesion"]
    assert np.array_equal(written, native) and np.allclose(affine, img.affine)
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["verdict"] == by_path.verdict and summary["lesions"] == len(by_path.lesions)
    with pytest.raises(bonemet.errors.BonemetError, match="needs its 4x4 voxel-to-RAS affine"):
        bonemet.predict(np.zeros((8, 8, 8)), seg=seg_run)
    pred = bonemet.predict(img, seg=seg_run, out=tmp_path / "api")
    assert (tmp_path / "api" / "summary.json").is_file() and pred.verdict == by_path.verdict


@pytest.mark.slow
def test_bench_batch_reports_cases_per_minute_per_job_count() -> None:
    from bonemet.devices import threads_per_process

    r = invoke("bench", "batch", "--jobs", "1,2", "--cases", "2", "--slices", "8", "--size", "64")
    assert r.returncode == 0, r.stderr
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in r.stdout.splitlines()
            if line.startswith(("| 1 ", "| 2 "))]
    assert [row[:4] for row in rows] == [["1", str(torch.get_num_threads()), "2", "0"],
                                         ["2", str(threads_per_process(2)), "2", "0"]]
    assert all(float(row[5]) > 0 for row in rows)


def test_bench_batch_of_dicom_series_writes_their_seg(tmp_path: Path) -> None:
    """``bench batch --dicom`` times the DICOM path a hospital uses: series in, a DICOM-SEG out with the masks."""
    from bonemet.bench.scale import bench_batch

    rows = bench_batch(tmp_path, [1], cases=1, slices=8, size=64, log=lambda _: None, dicom=True)
    assert [(r["cases"], r["failed"]) for r in rows] == [(1, 0)]
    series = tmp_path / "cases" / "case000"
    assert len([f for f in series.iterdir() if pydicom.dcmread(f, stop_before_pixels=True).Modality == "CT"]) == 8
    seg = pydicom.dcmread(tmp_path / "out-1" / "case000" / "lesions_seg.dcm")
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == pydicom.dcmread(next(series.iterdir())).StudyInstanceUID


def test_bench_device_times_predict_per_path_against_eager() -> None:
    from bonemet.inference.fast import default_paths

    r = invoke("bench", "device", "--device", "cpu", "--size", "32", "--width", "2", "--batch-size", "2", "--reps",
               "1", "--predict-slices", "8", "--members", "2")
    assert r.returncode == 0, r.stderr
    table = r.stdout.split("`predict` end to end")[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith(("| path", "| ---"))]
    assert [row[0] for row in rows] == ["eager fp32", " + ".join(default_paths())]
    assert rows[0][3:] == ["0.0e+00", "100.0"]  # the baseline against itself
    for row in rows:
        assert float(row[2]) == pytest.approx(3600 / (3 * float(row[1])), rel=0.05)  # scans/h from s/100 slices

@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine (runs where one is)")
def test_cuda_training_and_prediction_match_the_cpu(small: Path, tmp_path: Path) -> None:
    gpu, cpu = tmp_path / "gpu", tmp_path / "cpu"
    args = ["seg", "train", "--data", small / "bmseg", *TRAIN[:-2], "--epochs", "1", "--optimizer", "sgd",
            "--fold", "0"]
    assert invoke(*args, "--out", gpu, "--device", "cuda").returncode == 0
    assert invoke(*args, "--out", cpu, "--device", "cpu").returncode == 0
    assert all(t.device.type == "cpu" for t in weights(gpu, 0).values())
    assert relative_difference(weights(cpu, 0), weights(gpu, 0)) < 1e-3
    r = invoke("seg", "train", "--data", small / "bmseg", *TRAIN[:-2], "--epochs", "1", "--bf16", "--fold", "0",
               "--out", tmp_path / "mixed", "--device", "cuda")
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine (runs where one is)")
def test_prediction_on_the_gpu_matches_the_cpu(phantom: Path, seg_run: Path) -> None:
    import bonemet

    path = phantom / "volumes" / "P001" / "ct.nii.gz"
    cpu = bonemet.predict(path, seg=seg_run, device="cpu", paths=(), probabilities=True)
    for paths, tolerance in (((), 1e-3), (("fold_bn", "channels_last", "bf16"), 0.02)):
        gpu = bonemet.predict(path, seg=seg_run, device="cuda", paths=paths, probabilities=True)
        assert gpu.summary["models"]["segmentation"]["device"].startswith("cuda")
        diff = np.abs(gpu.lesion_probability.astype(np.float32) - cpu.lesion_probability.astype(np.float32))
        assert float(diff.max()) < tolerance, paths
        assert float((gpu.lesion_mask == cpu.lesion_mask).mean()) >= 0.995, paths
