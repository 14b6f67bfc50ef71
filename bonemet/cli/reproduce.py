"""``bonemet reproduce``: every thesis table bonemet can make, under both protocols, beside the thesis' numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def reproduce(
    data: Annotated[Path, typer.Option(help="BM-Seg root (or a phantom's bmseg/ folder) for Tables 4.1-4.4.")],
    out: Annotated[Path, typer.Option(help="Folder for every run and report.md; run again to resume.")],
    classification: Annotated[Path | None, typer.Option(help="Classification root for Tables 5.1-5.2.")] = None,
    budget: Annotated[str, typer.Option(help="quick (toy size: every table in minutes on a CPU) or full (the "
                                             "thesis' settings: 224 px, width 32, 60 epochs; GPU-sized).")] = "quick",
    experiments: Annotated[str | None, typer.Option(help="Comma-separated subset of the segmentation experiments "
                                                         "(default: all of unet, attunet, unet++, attunet++-plain, "
                                                         "attunet++, hybrid-attunet++, sequential-attunet, "
                                                         "sequential-unet++, sequential-attunet++).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train and evaluate the thesis' experiments (patient-level and paper protocols); report ours against the
    thesis' numbers."""
    from ..reproduce import run_reproduction

    names = [n.strip() for n in experiments.split(",") if n.strip()] if experiments else None
    r = run_reproduction(data, out, budget, classification, names, seed, say=lambda m: typer.echo(m, err=True))
    typer.echo(r["markdown"])
    typer.echo(f"report: {out / 'report.md'}")
