"""``bonemet demo``: the whole pipeline on the embedded CT phantom."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import Device


def demo(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo makes.")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option(help="A tiny budget (under 3 minutes on 2 cores) to see every stage.")]
        = False,
    seed: Annotated[int, typer.Option()] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing demo folder.")] = False,
    device: Device = "auto",
    real_ct: Annotated[Path | None, typer.Option(help="A real CT series (DICOM folder or NIfTI): the demo's model "
                                                      "and the bundled default model run on it side by side.")]
        = None,
) -> None:
    """Generate phantom data, train and evaluate EH-AttUnet++ and a classifier, predict on a held-out scan; with
    --real-ct also compare the demo's model with the bundled default model on a real series."""
    from ..demo import run_demo

    if real_ct is not None and not real_ct.exists():
        raise typer.BadParameter(f"{real_ct} does not exist", param_hint="--real-ct")
    r = run_demo(out, quick=quick, seed=seed, overwrite=overwrite, say=lambda m: typer.echo(m, err=True),
                 device=device, real_ct=real_ct)
    s, t = r["summary"], r["summary"].get("truth") or {}
    test = r["seg_eval"].get("test") or {}
    if test:
        name, ens = list(test.items())[-1]  # the ensemble comes after its members
        typer.echo(f"\n{name}: test lesion F1 {100 * ens['scores']['F1']:.1f} %, Dice {100 * ens['scores']['Dice']:.1f} %")
    typer.echo(f"segmentation tables: {', '.join(r['seg_tables'])}")
    typer.echo(f"classifier table: {r['cls_table']} (slice ROC-AUC {r['cls_eval']['slice']['ROC-AUC']:.3f})")
    typer.echo(f"held-out patient {r['patient']}: {s['verdict']} (probability {s['probability']:.2f}), "
               f"{s['lesions']} lesion(s); truth: {t.get('found', '?')}/{t.get('true_lesions', '?')} lesions found")
    typer.echo(f"report: {r['report']}")
    for row in r["real"]:
        typer.echo(f"{real_ct.name}, {row['model']}: {row['verdict']} (probability {row['probability']:.2f}), "
                   f"{row['findings']} finding(s), largest {row['largest mL']} mL; report: {row['report']}")
    typer.echo(f"total {sum(r['times'].values()):.0f} s: " + ", ".join(f"{v:.0f}" for v in r["times"].values()))
