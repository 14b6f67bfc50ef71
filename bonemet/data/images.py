"""Reading and writing 2D slice images and masks (PNG, JPEG), with clear errors for bad files."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..fileio import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


CACHE_ENV = "BONEMET_IMAGE_CACHE_MB"
DEFAULT_CACHE_MB = 512


class DecodedCache:
    """The most recently read images, decoded, up to ``max_bytes`` (least recently used first out). Training reads
    every slice once an epoch and evaluation reads each held-out slice once per member; decoding a PNG costs more
    than the arithmetic of a small model on it. An entry is keyed by the file's path, size, modification time
    and inode, so a file rewritten in place is read again. The arrays are read-only (shared between callers)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):  # a DataLoader worker forked while another thread held the lock
            os.register_at_fork(after_in_child=self._new_lock)

    def _new_lock(self) -> None:
        self._lock = threading.Lock()

    def get(self, key: tuple) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
            return arr

    def put(self, key: tuple, arr: np.ndarray) -> None:
        if arr.nbytes > self.max_bytes:
            return
        arr.setflags(write=False)
        with self._lock:
            old = self._items.pop(key, None)
            self.bytes += arr.nbytes - (old.nbytes if old is not None else 0)
            self._items[key] = arr
            while self.bytes > self.max_bytes:
                self.bytes -= self._items.popitem(last=False)[1].nbytes


def _cache_budget() -> int:
    value = os.environ.get(CACHE_ENV, str(DEFAULT_CACHE_MB))
    try:
        return max(0, int(float(value) * 2**20))
    except ValueError:
        raise DataError(f"{CACHE_ENV}={value!r} is not a number of megabytes") from None


DECODED = DecodedCache(_cache_budget())


def read_image(path: str | Path, mask: bool = False) -> np.ndarray:
    """Read an image as uint8, shape (H, W) for grey or (H, W, 3) for colour. A 16 / 32-bit grey image is read
    when its values fit 8 bits, and refused otherwise; with ``mask``, its non-zero pixels become 255.

    The array is read-only: it may be the one kept by :data:`DECODED` (``BONEMET_IMAGE_CACHE_MB`` in the
    environment, default 512 MB a process, 0 to keep none) and given to the next caller of the same file."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except OSError as exc:
        raise DataError(f"unreadable image ({exc})", path) from None
    key = (str(path), mask, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    arr = DECODED.get(key)
    if arr is None:
        arr = _decode(path, st.st_size, mask)
        DECODED.put(key, arr)
    return arr


def _decode(path: Path, size: int, mask: bool) -> np.ndarray:
    try:
        if size == 0:
            raise DataError("empty file", path)
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later in training
            if img.mode.startswith(("I", "F")):  # 16 / 32-bit grey: never saturated silently
                deep = np.asarray(img)
                return (deep > 0).astype(np.uint8) * 255 if mask else _deep_grey(deep, path)
            if img.mode in ("L", "1", "LA", "P"):
                img = img.convert("L")
            elif img.mode != "RGB":
                img = img.convert("RGB")
            arr = np.asarray(img)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"unreadable image ({exc})", path) from None
    if arr.size == 0:
        raise DataError("image has no pixels", path)
    return arr


def _deep_grey(arr: np.ndarray, path: Path) -> np.ndarray:
    """A 16 / 32-bit grey image as uint8 when its values are 8-bit values (0-255 integers); refused otherwise,
    since scaling it would be a guess at a window the models never saw."""
    if arr.size == 0:
        raise DataError("image has no pixels", path)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if lo >= 0 and hi <= 255 and np.array_equal(arr, np.round(arr)):
        return arr.astype(np.uint8)
    raise DataError(f"a {arr.dtype.itemsize * 8}-bit image with values {lo:g} to {hi:g}: bonemet reads 8-bit "
                    "slices windowed as its models were trained (BM-Seg's); window it to 8 bits first, or give "
                    "the CT as DICOM / NIfTI", path)


def read_mask(path: str | Path, threshold: int = 0) -> np.ndarray:
    """Read a mask as a boolean (H, W) array: a pixel is set when its value is above ``threshold``.

    BM-Seg masks are often JPEG, whose compression noise leaves small non-zero values: ``> 0`` is the
    reference code's rule; ``threshold=127`` removes the noise.
    """
    arr = read_image(path, mask=True)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return arr > threshold


def write_image(path: str | Path, array: np.ndarray, quality: int = 95) -> Path:
    """Write a uint8 (H, W) or (H, W, 3) array (a bool mask is written as 0/255), atomically."""
    path = Path(path)
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    img = Image.fromarray(arr)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".jpg", ".jpeg"):
            img.save(tmp, format="JPEG", quality=quality)
        else:
            img.save(tmp, format="PNG")
    return path
