"""Markdown tables, the form every table bonemet writes (run evaluations, benches, reports) takes."""

from __future__ import annotations

__all__ = ["markdown_table"]


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows of dicts as a Markdown table."""
    if not rows:
        return "(no rows)\n"
    cols = columns or list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1 else f"{v:.1f}"
    return str(v)
