"""``bonemet bench``: measured speed, written as the tables the README shows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Benchmarks (speed is measured here, never in tests).", no_args_is_help=True)


@app.command()
def seg(
    size: Annotated[int, typer.Option(min=32)] = 224,
    width: Annotated[int, typer.Option(min=1)] = 32,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    models: Annotated[str, typer.Option(help="Comma-separated model names.")] =
        "unet,attunet,unet++,attunet++,hybrid-attunet++",
    quick: Annotated[bool, typer.Option(help="One timed repetition instead of three.")] = False,
    out: Annotated[Path | None, typer.Option(help="Folder to save bench_seg.md in.")] = None,
) -> None:
    """Training images/s and inference slices/s of each segmentation model, in one run."""
    import time

    from ..bench.seg import bench_models, machine_line
    from ..data.stats import markdown_table
    from ..errors import BonemetError
    from ..fileio import write_text
    from ..models import model_names

    names = [m.strip() for m in models.split(",") if m.strip()]
    bad = [m for m in names if m not in model_names()]
    if bad:
        raise BonemetError(f"unknown model(s) {bad}")
    t0 = time.perf_counter()
    rows = bench_models(names, size, width, batch_size, reps=1 if quick else 3,
                        log=lambda m: typer.echo(m, err=True))
    text = (f"Segmentation speed, {size} px, width {width}, batch {batch_size}, eager fp32 on CPU "
            f"({machine_line()}); median of {1 if quick else 3} timed repetitions after one warm-up; "
            f"bench took {time.perf_counter() - t0:.0f} s.\n\n" + markdown_table(rows))
    typer.echo(text)
    if out is not None:
        write_text(out / "bench_seg.md", text)
