"""``bonemet bench memory``: the peak memory of ``predict`` on long scans, measured in a fresh process.

The scan is a phantom block of slices repeated along z (mirrored every other time, so anatomy and lesions stay
continuous) up to the asked length, written as uncompressed NIfTI; the models are random-weight members shaped
like a trained run (``write_random_run``) unless a trained run is given. Peak memory is the child process's
maximum resident set size, so the figure is ``predict``'s own, not this process's.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_long_scan(path: Path, slices: int, size: int, block: int = 48, seed: int = 0) -> Path:
    """A ``slices``-slice phantom CT of ``size`` px: one ``block``-slice metastatic phantom, repeated and mirrored."""
    import nibabel as nib

    from ..phantom.synth import make_patient

    ct = make_patient(0, seed, "metastatic", size=size, n_slices=min(block, slices)).ct
    reps = -(-slices // ct.n_slices)
    pieces = [ct.array if r % 2 == 0 else ct.array[:, :, ::-1] for r in range(reps)]
    array = np.concatenate(pieces, axis=2)[:, :, :slices]
    img = nib.Nifti1Image(array.astype(np.int16, copy=False), ct.affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def peak_of_predict(scan: Path, run: Path, out: Path, extra: list[str] | None = None) -> dict:
    """Run ``bonemet predict`` in a fresh process; its peak resident memory (MB), wall time (s) and exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bonemet.cli.main", "predict", str(scan), "--seg", str(run), "--out",
                           str(out), *(extra or [])], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise RuntimeError(f"predict failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    if peak <= before:  # the children's maximum is one number: an earlier, larger child hides this one
        raise RuntimeError("measure each scan in its own bench process (an earlier child was larger)")
    return {"peak MB": round(peak / 1024), "seconds": round(seconds, 1)}
