"""The ``bonemet`` command line: one entry point, one sub-command group per pipeline stage."""

from __future__ import annotations

import logging
import signal
import sys
import warnings

import typer

from .. import __version__
from ..errors import BonemetError
from ..log import logger
from .bench import app as bench_app
from .cls import app as cls_app
from .data import app as data_app
from .demo import demo as demo_command
from .models import app as models_app
from .predict import predict as predict_command
from .reproduce import reproduce as reproduce_command
from .review import review as review_command
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
app.add_typer(models_app, name="models")
app.command(name="predict")(predict_command)
app.command(name="demo")(demo_command)
app.command(name="reproduce")(reproduce_command)
app.command(name="review")(review_command)


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show the warnings of the libraries "
                                                                          "bonemet uses (pydicom, numpy, nibabel, "
                                                                          "torch) and debug messages.")) -> None:
    """Computer-aided diagnosis of bone metastases on CT: data, segmentation, classification, CAD pipeline."""
    quiet_libraries(not verbose)
    if verbose:
        logger.setLevel(logging.DEBUG)


def quiet_libraries(quiet: bool = True) -> None:
    """Keep library warnings off the terminal (bonemet says what matters in its own words), or let them through."""
    warnings.simplefilter("ignore" if quiet else "default")
    logging.getLogger("pydicom").setLevel(logging.ERROR if quiet else logging.WARNING)


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


class Stopped(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM (what schedulers and containers send), raised where the program runs so that
    every ``finally`` removes its temporary files. Not a KeyboardInterrupt: the command-line library turns that
    into a silent exit code before it reaches :func:`main`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame: object) -> None:
    raise Stopped(signum)


STOP_MESSAGES = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated (SIGTERM)", 143)}


def main() -> None:
    """Console entry point: expected errors become one line on stderr and exit code 2; SIGINT and SIGTERM
    remove temporary output, say so in one line and exit 130 / 143."""
    setup_logging()
    quiet_libraries()  # until the options are read: imports warn too
    previous = {}
    for signum in STOP_MESSAGES:
        try:
            previous[signum] = signal.signal(signum, _stop)
        except ValueError:  # not the main thread (bonemet called from a worker thread): leave signals alone
            pass
    try:
        app()
    except BonemetError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Stopped as exc:
        message, code = STOP_MESSAGES[exc.signum]
        typer.echo(message, err=True)
        sys.exit(code)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    main()
