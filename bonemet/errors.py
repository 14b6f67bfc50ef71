"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""

from __future__ import annotations

from pathlib import Path


class BonemetError(Exception):
    """An expected problem with the user's input (bad file, bad layout, bad option)."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.reason = message  # what is wrong, without the path (a checker's problem line names its own)
        super().__init__(f"{path}: {message}" if path is not None else message)


class DataError(BonemetError):
    """A data file or folder that cannot be used as it is."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of a library's exception message (its type name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def refuse_first(checks: list[tuple[bool, str]]) -> None:
    """Raise the message of the first check that failed: a configuration's validation, one clear line."""
    for ok, message in checks:
        if not ok:
            raise BonemetError(message)
