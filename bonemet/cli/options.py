"""Helpers shared by the command groups."""

from __future__ import annotations

import typer

NOT_CONFIG = ("out", "resume")


def given_options(ctx: typer.Context, rename: dict[str, str] | None = None) -> set[str]:
    """The configuration fields whose options the user typed on the command line (not left at their default),
    as field names (``rename``: option name -> field name)."""
    rename = rename or {}
    given = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if name not in NOT_CONFIG and source is not None and source.name == "COMMANDLINE":
            given.add(rename.get(name, name))
    return given
