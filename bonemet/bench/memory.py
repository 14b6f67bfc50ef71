"""``bonemet bench memory``: the peak memory of ``predict`` on long scans, measured in a fresh process.

The scan is a phantom block of slices repeated along z (mirrored every other time, so anatomy and lesions stay
continuous) up to the asked length, written as uncompressed NIfTI; the models are random-weight members shaped
like a trained run (``write_random_run``) unless a trained run is given. Peak memory is the child process's
maximum resident set size, so the figure is ``predict``'s own, not this process's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_long_scan(path: Path, slices: int, size: int, fmt: str = "nifti", block: int = 48, seed: int = 0) -> Path:
    """A ``slices``-slice phantom CT of ``size`` px: one ``block``-slice metastatic phantom, repeated and mirrored,
    as uncompressed NIfTI (``path``) or a DICOM series (the folder ``path``)."""
    import nibabel as nib

    from ..data.volume import Volume
    from ..phantom.synth import make_patient

    ct = make_patient(0, seed, "metastatic", size=size, n_slices=min(block, slices)).ct
    reps = -(-slices // ct.n_slices)
    pieces = [ct.array if r % 2 == 0 else ct.array[:, :, ::-1] for r in range(reps)]
    array = np.concatenate(pieces, axis=2)[:, :, :slices].astype(np.int16, copy=False)
    if fmt == "dicom":
        from ..data.export import write_dicom_series

        write_dicom_series(Volume(array, ct.affine), path, "BENCH", uid_seed=f"bonemet-bench-{seed}-{slices}")
        return path
    img = nib.Nifti1Image(array, ct.affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def peak_of_predict(scan: Path, run: Path, out: Path, extra: list[str] | None = None) -> dict:
    """Run ``bonemet predict`` in a fresh process: its own peak resident memory (MB), wall time (s) and the
    lesions it found."""
    import json

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bonemet.cli.main", "predict", str(scan), "--seg", str(run), "--out",
                             str(out), *(extra or [])], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the largest of all children
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"predict failed ({proc.returncode}): {err.strip()[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"peak MB": round(usage.ru_maxrss / 1024), "seconds": round(seconds, 1), "lesions": summary["lesions"],
            "lesion volume mL": summary["total_lesion_volume_ml"]}


def bench_memory(lengths: list[int], size: int, work: Path, run: Path | None = None, threshold: float = 0.5,
                 fmt: str = "nifti", log=print) -> list[dict]:
    """Peak memory of ``predict`` on scans of each length in ``lengths`` (slices of ``size`` px), given as NIfTI or
    as a DICOM series (which adds reading files one by one and the DICOM-SEG)."""
    import shutil

    from .infer import write_random_run

    work.mkdir(parents=True, exist_ok=True)
    if run is None:
        run = write_random_run(work / "run", members=1, size=64, width=4)
    rows = []
    for n in lengths:
        scan = work / (f"scan{n}" if fmt == "dicom" else f"scan{n}.nii")
        log(f"writing a {n}-slice {size} px scan ({fmt})")
        write_long_scan(scan, n, size, fmt)
        log(f"predict on {n} slices")
        r = peak_of_predict(scan, run, work / f"out{n}", ["--threshold", str(threshold)])
        shutil.rmtree(scan) if scan.is_dir() else scan.unlink()
        rows.append({"input": fmt, "slices": n, "slice px": size, "peak MB": r["peak MB"], "seconds": r["seconds"],
                     "lesions": r["lesions"], "lesion volume mL": r["lesion volume mL"]})
    return rows
