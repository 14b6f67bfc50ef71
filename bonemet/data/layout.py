"""Shared pieces of the folder-layout readers: problems found while scanning, folder-name matching."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, tied to the file or folder it concerns.

    ``fatal`` problems make the data unusable as it is (``bonemet data check`` exits 2); the
    others are warnings (the file is ignored, or an analysis such as a patient split is impossible).
    """

    path: Path
    message: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"{'error' if self.fatal else 'warning'}: {self.path}: {self.message}"


def norm_name(name: str) -> str:
    """Folder names compared loosely: case, separators and a plural 's' do not matter."""
    n = re.sub(r"[\s_\-]+", " ", name.strip().lower())
    return n[:-1] if n.endswith("s") and len(n) > 3 else n


def find_child(folder: Path, synonyms: set[str]) -> Path | None:
    """The sub-folder of ``folder`` whose name matches one of ``synonyms`` (normalised), if any."""
    if not folder.is_dir():
        return None
    for child in sorted(folder.iterdir()):
        if child.is_dir() and norm_name(child.name) in synonyms:
            return child
    return None


def raise_first_fatal(problems: list[Problem]) -> None:
    """Raise the first fatal problem as a :class:`DataError` (for readers used by training)."""
    fatal = [p for p in problems if p.fatal]
    if fatal:
        more = f" (and {len(fatal) - 1} more problems: run 'bonemet data check')" if len(fatal) > 1 else ""
        raise DataError(fatal[0].message + more, fatal[0].path)
