"""Helpers shared by the command groups."""

from __future__ import annotations

from typing import Annotated

import typer

from ..devices import DEVICE_HELP

NOT_CONFIG = ("out", "resume", "device", "workers", "fold", "sync_bn")  # how a run trains, not what it is

Device = Annotated[str, typer.Option(help=DEVICE_HELP)]
Workers = Annotated[int, typer.Option(min=0, help="DataLoader worker processes reading and augmenting slices "
                                                  "(0: in the training process; results are the same for any "
                                                  "number).")]
Fold = Annotated[int | None, typer.Option(min=0, help="Train this fold only, into a run folder that other "
                                                      "processes or machines may be filling with its other folds at "
                                                      "the same time (give every call the same options).")]
SyncBN = Annotated[bool, typer.Option(help="Under torchrun: batch normalisation over the global batch of all "
                                           "processes (as one process would see it).")]


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
