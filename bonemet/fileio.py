"""Atomic writes, and the output folders bonemet owns.

Files and folders appear under their final name only once complete. An output folder (``predict``'s,
``data synth``'s, ``data convert``'s, the demo's) carries a marker, ``.bonemet.json``, that names the
command that wrote it and every entry it wrote: ``--overwrite`` replaces only such a folder, never
the input, a folder that holds the input, a run folder, or a folder holding anything bonemet did not
write. The final move is one ``rename``: of two processes writing the same folder, one wins and the
other is told, never both silently.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import functools
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BonemetError

MARKER = ".bonemet.json"
PART_SUFFIX = ".part"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    The temporary name keeps the suffixes of ``path`` (``.nii.gz``, ``.png``) because some
    writers choose the format from the file name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, _file_mode())  # mkstemp's 0600 would make this one file unlike its neighbours
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@functools.cache
def _umask() -> int:
    """The process umask, read once (reading it means setting it, which other threads could race)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """The mode a plain ``open(..., 'w')`` would give: 0666 less the process umask."""
    return 0o666 & ~_umask()


def sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Read a JSON file that bonemet wrote; a missing, unreadable or malformed one is one clear error."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BonemetError(f"{what} not found", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BonemetError(f"{what} cannot be read ({exc.__class__.__name__}: {exc})", path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BonemetError(f"{what} is damaged: not valid JSON ({exc.msg} at line {exc.lineno}, column "
                           f"{exc.colno})", path) from None


def read_config(cls: type, path: str | Path, what: str) -> Any:
    """A dataclass (a run's configuration) from the JSON file that bonemet wrote; one clear error when the file
    is damaged, has fields ``cls`` does not know or lacks required ones, or ``cls`` refuses its values."""
    path = Path(path)
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise BonemetError(f"not a {what}: expected a JSON object", path)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise BonemetError(f"not a {what}: fields it does not know ({', '.join(unknown[:5])})", path)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise BonemetError(f"not a {what}: required field(s) missing ({', '.join(missing)})", path)
    try:
        return cls(**data)
    except (BonemetError, TypeError, ValueError) as exc:  # the values the configuration refuses
        raise BonemetError(f"invalid {what}: {exc}", path) from None


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, strict JSON (NaN and infinity become null), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(finite(obj), indent=2, default=str, allow_nan=False) + "\n")


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by None, which JSON writes as null."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], fieldnames: Sequence[str] | None = None) -> None:
    """Write a list of dicts as CSV, atomically."""
    if fieldnames is None:
        fieldnames = list(rows[0].keys()) if rows else []
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fieldnames))
        writer.writeheader()
        writer.writerows(rows)


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# --- output folders ------------------------------------------------------------------------------------------


def _process_start(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (Linux), so that a reused pid is not taken for the writer."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 of stat, counted after the command name


def _writer() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _process_start(pid)}


def _alive(writer: dict) -> bool:
    """Whether the process that wrote a marker may still be running (True when that cannot be told)."""
    if writer.get("host") != socket.gethostname() or not isinstance(writer.get("pid"), int):
        return True  # another machine's process (a shared file system): not ours to judge
    try:
        os.kill(writer["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    start = _process_start(writer["pid"])
    return start is None or writer.get("start") is None or start == writer["start"]


def _json_or_none(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or damaged (for files that only may be bonemet's)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_marker(folder: Path) -> dict | None:
    marker = _json_or_none(folder / MARKER)
    return marker if isinstance(marker, dict) and isinstance(marker.get("kind"), str) else None


def output_kind(folder: str | Path) -> str | None:
    """The bonemet command whose marker ``folder`` carries (None: no marker)."""
    marker = _read_marker(Path(folder))
    return marker["kind"] if marker else None


DEMO_ENTRIES = ["cls", "phantom", "predict", "real", "seg"]


def _legacy_marker(folder: Path, kind: str) -> dict | None:
    """Outputs written before markers existed: a ``predict`` folder whose summary.json names bonemet and its
    files; a demo folder of the demo's four stages."""
    if kind == "demo":
        names = {p.name for p in folder.iterdir()}
        if names <= set(DEMO_ENTRIES) and (folder / "phantom" / "phantom.json").exists():
            return {"kind": "demo", "entries": DEMO_ENTRIES}
        return None
    if kind != "predict":
        return None
    summary = _json_or_none(folder / "summary.json")
    if not isinstance(summary, dict) or "bonemet" not in (summary.get("versions") or {}):
        return None
    files = summary.get("files")
    if not isinstance(files, list):
        return None
    return {"kind": "predict", "entries": sorted({str(f).rstrip("/") for f in files} | {"summary.json"})}


def owned_output(folder: str | Path, kind: str) -> tuple[bool, str]:
    """Whether bonemet's ``kind`` command wrote ``folder`` and nothing else is in it; else why not."""
    folder = Path(folder)
    marker = _read_marker(folder) or _legacy_marker(folder, kind)
    if marker is None:
        return False, "it was not written by bonemet (no .bonemet.json marker)"
    if marker["kind"] != kind:
        return False, f"it holds the output of 'bonemet {marker['kind']}', not of 'bonemet {kind}'"
    allowed = set(marker.get("entries") or []) | {MARKER}
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in allowed)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return False, f"it holds entries bonemet did not write there ({shown})"
    return True, ""


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def check_output(path: str | Path, kind: str, overwrite: bool = False,
                 protect: Iterable[str | Path | None] = ()) -> Path:
    """Refuse an output folder before any work: one clear error, nothing touched.

    ``protect``: the inputs of the command (scan, run folders, masks); the output may not be one of them or
    hold one of them. An existing non-empty folder is refused unless ``overwrite`` and :func:`owned_output`.
    """
    path = Path(path)
    real = path.resolve()
    for p in protect:
        inner = Path(p).resolve() if p is not None else None
        if inner is not None and _contains(real, inner):
            what = "is" if real == inner else "contains"
            raise BonemetError(f"the output folder {what} an input of this command ({p}): nothing was written", path)
    if path.is_symlink() and not path.exists():
        raise BonemetError("the output folder is a broken symbolic link", path)
    if path.exists() and not path.is_dir():
        raise BonemetError("the output path exists and is not a folder", path)
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise BonemetError("output folder exists and is not empty (use --overwrite to replace an earlier "
                               f"'bonemet {kind}' output)", path)
        ok, why = owned_output(path, kind)
        if not ok:
            raise BonemetError(f"--overwrite refused: {why}; move or delete it yourself if it is no longer needed",
                               path)
    parent = _existing_parent(real)
    if not parent.is_dir():
        raise BonemetError(f"cannot create the output folder: {parent} is not a folder", path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BonemetError(f"cannot write in {parent} (permission denied)", path)
    return path


def _existing_parent(path: Path) -> Path:
    p = path.parent
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def clear_stale_parts(path: str | Path) -> list[Path]:
    """Remove the temporary folders that a killed bonemet process left beside ``path``; returns them.

    Only folders named like ours that carry bonemet's marker, written on this machine by a process that no
    longer runs, are removed; anything else is left alone.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{_glob_escape(path.name)}.*{PART_SUFFIX}"):
        marker = _read_marker(p) if p.is_dir() and not p.is_symlink() else None
        if marker is None or _alive(marker.get("writer") or {}):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _glob_escape(name: str) -> str:
    """``name`` as a glob pattern that matches only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def write_marker(folder: Path, kind: str, entries: list[str]) -> None:
    from . import __version__

    write_json(folder / MARKER, {"kind": kind, "written_by": f"bonemet {kind}", "version": __version__,
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "entries": entries,
                                 "writer": _writer()})


def add_marker_entries(folder: Path, names: Iterable[str]) -> None:
    """Record ``names`` as written by bonemet in ``folder``'s marker (kind and the other entries kept)."""
    marker = _read_marker(folder)
    if marker is None:
        raise BonemetError("it was not written by bonemet (no .bonemet.json marker)", folder)
    write_marker(folder, marker["kind"], sorted(set(marker.get("entries") or []) | set(names)))


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False, kind: str = "output",
               protect: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; move it to ``path`` when the block succeeds.

    The folder is checked first (:func:`check_output`), stale temporary folders of killed runs are cleared,
    and the temporary folder is made at once, so an unwritable place fails before any work. The final move
    is atomic: if another process filled ``path`` meanwhile, this one fails and its output is discarded;
    with ``overwrite`` only bonemet's own earlier ``kind`` output is replaced.
    """
    path = Path(path)
    check_output(path, kind, overwrite, protect)
    clear_stale_parts(path)
    tmp = None
    try:
        with _signals_held():  # a Ctrl-C or SIGTERM now would leave a folder nobody knows of
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=PART_SUFFIX, dir=path.parent))
            except OSError as exc:
                raise BonemetError(f"cannot write in {path.parent} ({exc.strerror or exc})", path) from None
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would make the output unlike the user's folders
            write_marker(tmp, kind, [])  # names this folder's writer while it is being filled
        yield tmp
        write_marker(tmp, kind, sorted(p.name for p in tmp.iterdir() if p.name != MARKER))
        with _signals_held():  # the swap with an earlier output is not interrupted half-way
            _publish(tmp, path, kind, overwrite)
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait (and then act) until the block is over; only the main thread handles signals."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _publish(tmp: Path, path: Path, kind: str, overwrite: bool) -> None:
    """Rename ``tmp`` onto ``path`` in one step; replace only bonemet's own earlier output."""
    try:
        os.rename(tmp, path)  # atomic; onto an existing folder only when that folder is empty
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise BonemetError(f"cannot move the finished output into place ({exc.strerror}); nothing was "
                               "written", path) from None
    if not overwrite:
        raise BonemetError("another process wrote this output folder while this one ran: its output was kept and "
                           "this run's was not written", path)
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old" + PART_SUFFIX, dir=path.parent))
    try:
        os.rename(path, aside / "old")  # the earlier output, moved out of the way in one step
    except OSError as exc:
        shutil.rmtree(aside, ignore_errors=True)
        raise BonemetError(f"cannot move the earlier output aside ({exc.strerror})", path) from None
    old = aside / "old"
    ok, why = owned_output(old, kind)
    if not ok:  # it changed since the check at the start: put it back untouched
        try:
            os.rename(old, path)
        except OSError:
            raise BonemetError(f"--overwrite refused: {why}; the folder could not be put back (another process "
                               f"wrote the place meanwhile) and is kept as {old}", path) from None
        shutil.rmtree(aside, ignore_errors=True)
        raise BonemetError(f"--overwrite refused: {why}", path)
    try:
        os.rename(tmp, path)
    except OSError:
        raise BonemetError("another process wrote this output folder while this one ran: its output was kept and "
                           "this run's was not written", path) from None
    finally:
        shutil.rmtree(aside, ignore_errors=True)
