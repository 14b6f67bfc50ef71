"""A distilled student's run folder: the record of what it was distilled from (``distilled_from.json``)."""

from __future__ import annotations

from pathlib import Path

from ..errors import BonemetError
from ..fileio import read_json


def distill_record(student: str | Path) -> dict:
    """``STUDENT/distilled_from.json`` (teacher, extra data, calibration), or {} for a run not made by distill."""
    path = Path(student) / "distilled_from.json"
    return read_json(path, "distillation record") if path.exists() else {}


def finished_student(teacher: str | Path, student: str | Path) -> Path:
    """``student`` if it holds a student distilled from ``teacher`` (to score it again without training)."""
    student = Path(student)
    record = distill_record(student)
    if not record:
        raise BonemetError("no distilled student here (run without --score-only first)", student)
    source = record["teacher"]
    if Path(source).resolve() != Path(teacher).resolve():
        raise BonemetError(f"this student was distilled from {source}, not from {teacher}", student)
    return student
