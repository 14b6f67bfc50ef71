"""``bonemet review``: a page over a folder of predictions, with a reviewer's mark for each lesion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def review(
    out: Annotated[Path, typer.Argument(help="A folder of predictions written by 'bonemet predict --batch'.")],
    serve: Annotated[bool, typer.Option(help="Serve the page (and save the marks to OUT/review_marks.csv) instead "
                                             "of only writing OUT/review.html.")] = False,
    host: Annotated[str, typer.Option(help="Address to serve on; anything but 127.0.0.1 / localhost opens the "
                                           "predictions to other machines.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to serve on (0: a free one).")] = 8765,
) -> None:
    """Write OUT/review.html: every case's verdict, probability, lesions and time, sortable and filterable, each
    opening its report and viewer, with a confirmed / rejected / unsure mark for each lesion; --serve also saves
    the marks beside the predictions (the predictions themselves are never changed)."""
    from ..reporting.review import make_server, write_review_page

    if not serve:
        typer.echo(f"review page: {write_review_page(out)} (open it in a browser; --serve saves the marks)")
        return
    server = make_server(out, host, port)
    h, p = server.server_address[:2]
    typer.echo(f"reviewing {out} at http://{'localhost' if h in ('127.0.0.1', '::1') else h}:{p}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
