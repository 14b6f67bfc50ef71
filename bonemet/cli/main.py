"""The ``bonemet`` command line: one entry point, one sub-command group per pipeline stage."""

from __future__ import annotations

import logging
import sys

import typer

from .. import __version__
from ..errors import BonemetError
from ..log import logger
from .bench import app as bench_app
from .cls import app as cls_app
from .data import app as data_app
from .demo import demo as demo_command
from .predict import predict as predict_command
from .seg import app as seg_app

app = typer.Typer(
    name="bonemet",
    help="Computer-aided diagnosis of bone metastases on CT: data, segmentation, classification, CAD pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_app, name="data")
app.add_typer(seg_app, name="seg")
app.add_typer(cls_app, name="cls")
app.add_typer(bench_app, name="bench")
app.command(name="predict")(predict_command)
app.command(name="demo")(demo_command)


@app.command()
def version() -> None:
    """Print the bonemet version."""
    typer.echo(__version__)


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def setup_logging(level: int = logging.INFO) -> None:
    """Library messages (chosen series, skipped slices) go to stderr, one line each."""
    if not any(getattr(h, "_bonemet", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_OneLine())
        handler._bonemet = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def main() -> None:
    """Console entry point: expected errors become one line on stderr and exit code 2."""
    setup_logging()
    try:
        app()
    except BonemetError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
