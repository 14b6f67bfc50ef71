"""``bonemet predict`` on many scans: a folder of cases or a CSV manifest, the models loaded once per process.

Layout of a batch output folder::

    OUT/<case>/          what ``bonemet predict`` writes for one scan (complete or absent: written atomically)
    OUT/failures.csv     case, input, reason (one line) of every case that failed
    OUT/cohort.csv       case, verdict, probability, lesions, lesion volume, seconds of every finished case

A case whose folder is complete is skipped, so a killed batch resumes where it stopped. The cases can be
spread over local processes (``jobs``), over the tasks of a scheduler's job array (``num_parts`` /
``part_id``: part I takes cases I, I + P, I + 2P ...), or over the workers of a Dask cluster (``dask``);
every process or worker loads the models once and keeps them for all its cases.
"""

from __future__ import annotations

import csv
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BonemetError, DataError, first_line
from ..fileio import MARKER, check_output, output_kind, owned_output, write_csv, write_json, write_marker
from ..log import logger
from .predict import PredictOptions, Predictor

KIND = "predict-batch"
FAILED = ".failed"  # OUT/.failed/<case>.json: the reason a case failed (removed when it later succeeds)
NIFTI_SUFFIXES = (".nii.gz", ".nii")
SAFE_CASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Case:
    name: str
    input: Path


def case_name(path: Path) -> str:
    """A case's name from its input: the file name without .nii / .nii.gz, or the folder's name."""
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".csv"


def list_cases(source: Path) -> list[Case]:
    """The cases of a folder (each NIfTI file or sub-folder is one case: a DICOM series or PNG / JPEG slices) or of
    a CSV manifest with the columns ``case`` and ``input`` (relative inputs are read from the manifest's folder)."""
    if is_manifest(source):
        cases = _manifest_cases(source)
    elif source.is_dir():
        entries = sorted(p for p in source.iterdir() if not p.name.startswith("."))
        cases = [Case(case_name(p), p) for p in entries
                 if p.is_dir() or any(p.name.lower().endswith(s) for s in NIFTI_SUFFIXES)]
        if not cases:
            raise DataError("no cases: a batch folder holds one sub-folder (DICOM series or PNG / JPEG slices) or "
                            "one NIfTI file per case", source)
    else:
        raise DataError("a batch input is a folder of cases or a CSV manifest (case,input)", source)
    seen: dict[str, Path] = {}
    for c in cases:
        if not SAFE_CASE.match(c.name):
            raise DataError(f"case name '{c.name}' cannot be a folder name (letters, digits, '.', '_' and '-' only, "
                            "starting with a letter or digit)", source)
        if c.name in seen:
            raise DataError(f"two cases are named '{c.name}' ({seen[c.name].name} and {c.input.name})", source)
        seen[c.name] = c.input
    return cases


def _manifest_cases(path: Path) -> list[Case]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            if "case" not in fields or "input" not in fields:
                raise DataError(f"a manifest needs the columns case and input (found: {', '.join(fields) or 'none'})",
                                path)
            rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"not a readable CSV manifest ({first_line(exc)})", path) from None
    cases = []
    for line, r in enumerate(rows, start=2):
        if not r.get("case") or not r.get("input"):
            raise DataError(f"line {line}: case and input must both be given", path)
        inp = Path(r["input"])
        cases.append(Case(r["case"], inp if inp.is_absolute() else path.parent / inp))
    if not cases:
        raise DataError("the manifest lists no cases", path)
    return cases


def part_of(cases: list[Case], num_parts: int, part_id: int) -> list[Case]:
    """The cases of one task of a job array: every ``num_parts``-th case from ``part_id`` on."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise BonemetError(f"--part-id must be in 0..{num_parts - 1} for --num-parts {num_parts}, got {part_id}")
    return cases[part_id::num_parts]


def is_done(out: Path, case: str) -> bool:
    """Whether a case's output folder is complete (it is only ever moved into place complete)."""
    folder = out / case
    return (folder / "summary.json").is_file() and owned_output(folder, "predict")[0]


def prepare_out(out: Path, source: Path, opts: PredictOptions) -> None:
    """Create OUT, or check that it is an earlier batch output of bonemet (which this call continues)."""
    if out.is_dir() and any(out.iterdir()):
        if output_kind(out) != KIND:
            raise BonemetError("output folder exists and is not an earlier 'bonemet predict' batch output (nothing "
                               "written; choose another --out)", out)
        return
    check_output(out, KIND, False, [source, opts.seg, opts.cls])
    out.mkdir(parents=True, exist_ok=True)  # not atomic as a whole: its case folders are, so a batch can resume
    write_marker(out, KIND, [])


# --- one process's cases ---------------------------------------------------------------------------------------

_PREDICTORS: dict[str, Predictor] = {}
_LOCK = threading.Lock()


def cached_predictor(opts: PredictOptions) -> Predictor:
    """This process's predictor for ``opts``: the models are loaded by the first case and kept for the rest (keyed
    by every option, so that a Dask worker serving another batch with other options never answers with these)."""
    key = repr(opts)
    with _LOCK:
        if key not in _PREDICTORS:
            _PREDICTORS[key] = Predictor(opts)
        return _PREDICTORS[key]


def run_case(case: Case, out: Path, opts: PredictOptions) -> dict:
    """Predict one case into OUT/<case>; a failure is recorded (OUT/.failed/<case>.json) and returned, not raised."""
    t = time.perf_counter()
    failed = out / FAILED / f"{case.name}.json"
    try:
        pred = cached_predictor(opts).predict(case.input, out / case.name)
    except Exception as exc:  # noqa: BLE001 - one bad case of thousands must not stop the batch
        reason = str(exc) if isinstance(exc, BonemetError) else f"{type(exc).__name__}: {first_line(exc)}"
        reason = " ".join(reason.split())
        failed.parent.mkdir(exist_ok=True)
        write_json(failed, {"case": case.name, "input": str(case.input), "reason": reason})
        return {"case": case.name, "ok": False, "reason": reason}
    if failed.exists():
        failed.unlink()
    return {"case": case.name, "ok": True, "seconds": round(time.perf_counter() - t, 2),
            "verdict": pred.summary["verdict"]}


def _job_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_local(cases: list[Case], out: Path, opts: PredictOptions, jobs: int = 1, progress=None) -> list[dict]:
    """The cases in this process (``jobs`` 1) or in ``jobs`` fresh processes, each with cores / jobs torch threads."""
    if jobs <= 1:
        results = []
        for c in cases:
            results.append(run_case(c, out, opts))
            if progress:
                progress(results[-1])
        return results
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from ..devices import threads_per_process

    threads = threads_per_process(jobs)
    logger.info("%d jobs x %d torch thread(s)", jobs, threads)
    results = []
    # spawn: a forked child of a process whose OpenMP threads have run can hang
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_job_init,
                             initargs=(threads,)) as pool:
        for r in pool.map(run_case, cases, [out] * len(cases), [opts] * len(cases)):
            results.append(r)
            if progress:
                progress(r)
    return results


DASK_CONNECT_TIMEOUT = "20s"  # how long a scheduler has to answer before --dask gives up


def run_dask(cases: list[Case], out: Path, opts: PredictOptions, address: str, progress=None) -> list[dict]:
    """The cases spread over the workers of the Dask cluster at ``address``; each worker loads the models once."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise BonemetError("--dask needs the dask.distributed package: pip install 'bonemet[cluster]'") from None
    try:
        client = Client(address, timeout=DASK_CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise BonemetError(f"--dask {address}: no Dask scheduler answered ({first_line(exc)})") from None
    results = []
    try:
        futures = [client.submit(run_case, c, out, opts, key=f"bonemet-{c.name}-{time.time_ns()}", pure=False)
                   for c in cases]
        for fut in as_completed(futures):
            results.append(fut.result())
            if progress:
                progress(results[-1])
    finally:
        client.close()
    return results


# --- the batch ---------------------------------------------------------------------------------------------------


def predict_batch(source: str | Path, out: str | Path, opts: PredictOptions, jobs: int = 1, num_parts: int = 1,
                  part_id: int = 0, dask: str | None = None, progress=None) -> dict:
    """Predict every case of ``source`` into ``out`` (see the module docstring); returns counts and the cohort."""
    source, out = Path(source), Path(out)
    cases = part_of(list_cases(source), num_parts, part_id)
    todo = [c for c in cases if opts.overwrite or not is_done(out, c.name)]
    skipped = len(cases) - len(todo)
    if out.exists() and not out.is_dir():
        raise BonemetError("the output path exists and is not a folder", out)
    if todo and (jobs <= 1 and not dask):
        cached_predictor(opts)  # a run that cannot be loaded is one error now, not one failure per case
    elif todo:
        Predictor(opts)
    prepare_out(out, source, opts)
    t = time.perf_counter()
    if dask:
        results = run_dask(todo, out, opts, dask, progress)
    else:
        results = run_local(todo, out, opts, jobs, progress)
    seconds = time.perf_counter() - t
    failures = write_tables(out)
    done = sum(r["ok"] for r in results)
    return {"cases": len(cases), "skipped": skipped, "done": done, "failed": len(results) - done,
            "failures": failures, "seconds": round(seconds, 2),
            "cases per minute": round(60 * done / seconds, 2) if done and seconds > 0 else None}


COHORT_FIELDS = ["case", "verdict", "probability", "lesions", "total_lesion_volume_ml", "lesion_slices", "seconds"]


def write_tables(out: Path) -> list[dict]:
    """OUT/cohort.csv from every finished case's summary, OUT/failures.csv from every recorded failure (both rebuilt
    from what is on disk, so that any part of a job array, or a rerun, writes them whole); returns the failures."""
    from ..fileio import read_json

    rows = []
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (folder / "summary.json").is_file():
            continue
        s = read_json(folder / "summary.json", "case summary")
        rows.append({"case": folder.name, "verdict": s.get("verdict"), "probability": s.get("probability"),
                     "lesions": s.get("lesions"), "total_lesion_volume_ml": s.get("total_lesion_volume_ml"),
                     "lesion_slices": s.get("lesion_slices"), "seconds": (s.get("timings") or {}).get("total s")})
    write_csv(out / "cohort.csv", rows, COHORT_FIELDS)
    failures = []
    failed_dir = out / FAILED
    if failed_dir.is_dir():
        for f in sorted(failed_dir.glob("*.json")):
            rec = read_json(f, "failure record")
            if not (out / rec.get("case", "") / "summary.json").is_file():
                failures.append(rec)
    write_csv(out / "failures.csv", failures, ["case", "input", "reason"])
    entries = sorted(p.name for p in out.iterdir() if p.name != MARKER)
    write_marker(out, KIND, entries)
    return failures

