"""``bonemet models``: the models bundled with bonemet, their cards, and the recipe that builds them."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from .options import Device

app = typer.Typer(help="Bundled models: list them, read their cards, re-build the default one.",
                  invoke_without_command=True)


@app.callback()
def models(ctx: typer.Context) -> None:
    """List the bundled models (name, default, size, SHA-256 check, description)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    from ..runs.bundled import BUNDLE_DIR, bundled_models

    console = Console()  # the listing is the command's output: stdout

    found = bundled_models()
    if not found:
        typer.echo(f"no bundled models in {BUNDLE_DIR}")
        return
    table = Table("name", "default", "members", "MB", "SHA-256", "description")
    for b in found:
        bad = b.problems()
        table.add_row(b.name, "yes" if b.default else "", str(b.manifest.get("members", "")), f"{b.size_mb:.1f}",
                      "ok" if not bad else "DAMAGED: " + "; ".join(bad), str(b.manifest.get("description", "")))
    console.print(table)
    console.print(f"cards: bonemet models card NAME (files in {BUNDLE_DIR})")


@app.command()
def card(name: Annotated[str, typer.Argument(help="A bundled model's name (see 'bonemet models').")]) -> None:
    """Print a bundled model's card: training data and licences, recipe, measured results, limits."""
    from ..runs.bundled import CARD, bundled_model

    b = bundled_model(name)
    typer.echo((b.folder / CARD).read_text())


def _pair(text: str) -> tuple[Path, Path | None]:
    """CT:BONE_MASK, or CT alone (a path that exists as written, colons and all, is the CT)."""
    ct, sep, mask = text.rpartition(":")
    if not sep or Path(text).exists():
        return Path(text), None
    if not ct or not mask:
        raise typer.BadParameter(f"'{text}' is not CT:BONE_MASK or CT")
    return Path(ct), Path(mask)


def _same(text: str) -> tuple[Path, Path]:
    """SERIES:BACKGROUND_CT."""
    series, sep, ct = text.rpartition(":")
    if not sep or not series or not ct:
        raise typer.BadParameter(f"'{text}' is not SERIES:BACKGROUND_CT")
    return Path(series), Path(ct)


@app.command()
def build(
    out: Annotated[Path, typer.Argument(help="New folder: the stages' outputs (work/) and the bundled model.")],
    background: Annotated[list[str], typer.Option(help="A real CT (NIfTI or DICOM folder) and its bone mask, as "
                                                       "CT:BONE_MASK, or CT alone (lesions then go where HU says "
                                                       "bone is sure); lesions are inserted into it (repeatable).")],
    real: Annotated[list[Path], typer.Option(help="A real CT series without labels: its slices are negatives, and "
                                                  "each is left out once to count findings on it (repeatable).")]
        = [],  # noqa: B006
    same_patient: Annotated[list[str], typer.Option(help="SERIES:BACKGROUND_CT: a real CT series of a background's "
                                                         "own patient (another series, or a longer stretch of the "
                                                         "same body): negatives like --real, but in that patient's "
                                                         "fold and left out with it (repeatable).")]
        = [],  # noqa: B006
    resume: Annotated[bool, typer.Option(help="Go on with an interrupted build in OUT.")] = False,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of each training (a GPU affords more).")] = 12,
    copies: Annotated[int, typer.Option(min=1, help="Copies of each background, 6 inserted lesions each.")] = 3,
    window: Annotated[str, typer.Option(help="CT window of the training images: bone, soft, wide or multi (the three "
                                             "as channels).")] = "bone",
    real_in_every_member: Annotated[bool, typer.Option(help="Both members of each training learn from every real "
                                                            "series (the folds split the phantom patients only); by "
                                                            "default the folds split real patients too.")] = False,
    lesion_prior: Annotated[float | None, typer.Option(help="Start each member's lesion-head bias at this "
                                                            "probability's log-odds (e.g. 0.01; as `seg train "
                                                            "--lesion-prior`).")] = None,
    lesion_dice: Annotated[float, typer.Option(min=0, help="Add this weight times a soft Dice loss of the lesion "
                                                           "output to each member's lesion BCE (as `seg train "
                                                           "--lesion-dice`); 0: off.")] = 0.0,
    partial_bone: Annotated[bool, typer.Option(help="Give each --real series a partial bone label from HU alone "
                                                    "(sure bone, sure no bone; the rest left out of the bone term) "
                                                    "instead of none.")] = False,
    scale_aug: Annotated[float, typer.Option(min=0, max=1, help="Zoom each training sample by a random factor "
                                                                "between 1/(1+S) and 1+S (as `seg train "
                                                                "--scale-aug`); 0: off.")] = 0.0,
    density_aug: Annotated[float, typer.Option(min=0, max=2, help="Scale the bone above 100 HU of each training "
                                                                  "sample by a random factor between 1/(1+D) and "
                                                                  "1+D (as `seg train --density-aug`); 0: off.")]
        = 0.0,
    phantom_patients: Annotated[int, typer.Option(min=0, help="Phantom patients in the training data (half of them "
                                                              "with metastases; --quick makes it 3); 0: real CT "
                                                              "only.")] = 8,
    phantom_thighs: Annotated[bool, typer.Option(help="The training phantom's scans run on to mid-thigh: femoral "
                                                      "shafts with a thick, fully dense cortex around a fatty canal "
                                                      "(the phantom's other bones have thin shells).")] = False,
    width: Annotated[int, typer.Option(min=1, help="Each member's width (channels of its first level; the thesis' "
                                                   "is 32).")] = 8,
    pixel_mm: Annotated[float, typer.Option(min=0.5, max=6, help="Pixel size in mm of every member (the field stays "
                                                               "about 384 mm: 128 px at 3 mm, 192 at 2); a bundle at "
                                                               "other than 3 mm is named by it.")] = 3.0,
    context_mm: Annotated[float, typer.Option(min=0, max=100, help="Neighbouring slices about this many mm below and "
                                              "above as the input's outer channels (as `seg train --context-mm`); "
                                              "a bundle with them is named by it. 0: the slice alone.")] = 0.0,
    device: Device = "auto",
    quick: Annotated[bool, typer.Option(help="Every stage tiny (1 epoch, width 4, one copy): checks the recipe, not "
                                             "a model to use; overrides --epochs, --copies, --width and "
                                             "--pixel-mm.")] = False,
) -> None:
    """Re-build the bundled default model from a clean checkout: phantom, lesions inserted into real CT and real
    negatives; EH-AttUnet++ at 3 mm pixels (--pixel-mm); each real series left out once to count findings on it;
    the model on all of it, packaged with a SHA-256 manifest and its model card."""
    from ..recipe import Recipe, build_default_model
    from .data import check_window

    check_window(window)
    recipe = Recipe([_pair(b) for b in background], list(real), [_same(s) for s in same_patient], epochs=epochs,
                    copies=copies, window=window, real_in_every_member=real_in_every_member,
                    lesion_prior=lesion_prior, lesion_dice=lesion_dice, partial_bone=partial_bone, scale_aug=scale_aug,
                    density_aug=density_aug, phantom_patients=phantom_patients, phantom_thighs=phantom_thighs,
                    width=width, pixel_mm=pixel_mm, context_mm=context_mm, quick=quick)
    command = "bonemet " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    bundle = build_default_model(out, recipe, command, resume=resume, device=device)
    typer.echo(f"model card: {bundle / 'MODEL_CARD.md'}")
