"""The default model's recipe with another window, number of epochs or number of lesion copies, measured on the
left-out backgrounds as ``bonemet models build`` measures them: NOT part of bonemet.

For each background of a finished build (``BUILD``, default ``runs/default-model``): the data of the recipe made
again with ``WINDOW`` (``bone``, the recipe's, or ``multi``: bone, soft and wide as three channels), ``COPIES``
copies of each background with 6 lesions, the phantom and the real negatives; a model trained without that
background for ``EPOCHS`` epochs (the recipe's configuration otherwise); then the build's own measurements on it:
findings on the background as it is, bone Dice against its mask, and the build's 8 test lesions inserted into it
(the same lesions: the build's ``inserted-test*`` folders are linked, not made again). The real series are not
left out here (four more trainings). The whole recipe with such a variant, the real series left out too and a
model packaged: ``bonemet models build OUT ... --window multi --copies 6 --epochs 36``.

    python docs/experiments/recipe_variants.py WINDOW EPOCHS COPIES OUT [BUILD] [--no-intensity-aug] [--insert-real]
        [--real-in-every-member] [--lesion-prior=P] [--seen] [--partial-bone] [--scale-aug=S]
        [--seed=N] [--width=N]

``--insert-real``: the build's real series (``--real``) become backgrounds without a bone mask too (lesions placed
by ``bonemet.data.bone``'s HU rule, no bone label), as ``bonemet models build --background CT`` makes them; only the
build's own backgrounds are left out and measured. ``--real-in-every-member``: both members of each training learn
from every real background and negative (the folds split the phantom patients only), as
``bonemet models build --real-in-every-member`` does. ``--lesion-prior=P``: each member's lesion-head bias starts at
P's log-odds (``models build --lesion-prior P``). ``--partial-bone``: the real series' bone term from a
partial bone label by HU (``models build --partial-bone``). ``--scale-aug=S``: each training sample zoomed by up to
S either way (``models build --scale-aug S``). ``--seed=N``: every training's seed (initial weights, order and
augmentation draws; 0 in the recipe), to see how much a result moves with the seed alone. ``--width=N``: the
members' width (8 in the recipe; the thesis' is 32). ``--seen``: one model
trained on every background, as the shipped model is, measured on the same test lesions: new lesions in anatomy it
has seen (the background "as it is" was trained on, so its findings there say little).
    python docs/experiments/recipe_variants.py bone 36 3 /tmp/variants/bone36      # 40 min on 2 cores
    python docs/experiments/recipe_variants.py multi 12 3 /tmp/variants/multi12    # 12 min
    python docs/experiments/operating_point.py runs/default-model --models OUT/work # then each lesion's probability
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import bonemet.recipe as recipe_module


def main(window: str, epochs: int, copies: int, out: Path, build: Path, intensity_aug: bool = True,
         insert_real: bool = False, real_in_every_member: bool = False, lesion_prior: float | None = None,
         seen: bool = False, partial_bone: bool = False, scale_aug: float = 0.0, seed: int = 0,
         width: int | None = None) -> None:
    if seed:
        seg_config = recipe_module._seg_config
        recipe_module._seg_config = lambda *a, **k: replace(seg_config(*a, **k), seed=seed)
    build = build.resolve()
    recipe = replace(recipe_module.recipe_of(build), window=window, epochs=epochs, copies=copies,
                     intensity_aug=intensity_aug, real_in_every_member=real_in_every_member,
                     lesion_prior=lesion_prior, partial_bone=partial_bone, scale_aug=scale_aug)
    recipe = replace(recipe, width=width or recipe.width)
    measured = len(recipe.backgrounds)  # the build's backgrounds: their test lesions exist
    if insert_real:
        recipe = replace(recipe, backgrounds=recipe.backgrounds + [(p, None) for p in recipe.real], real=[])
    work = out.resolve() / "work"
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    for i in range(measured):
        if (build / "work" / "data" / f"inserted-test{i}").exists() and not (data / f"inserted-test{i}").exists():
            os.symlink(build / "work" / "data" / f"inserted-test{i}", data / f"inserted-test{i}")
    sources, negatives = recipe_module._sources(recipe, work)  # the recipe's own data, in this variant
    rows = []
    for i, (ct, bone) in enumerate(recipe.backgrounds[:measured]):
        folder = work / ("with-every-background" if seen else f"without-background{i}")
        t = time.perf_counter()
        kept = ([*sources, *negatives.values()] if seen else
                recipe_module.without_patient(sources, negatives, f"B{i}"))
        run = recipe_module._train(recipe, folder, kept)
        row = recipe_module._findings(run, ct, folder / (f"predict{i}" if seen else "predict"), bone)
        row.update(recipe_module._inserted(run, recipe, ct, bone, i, work))
        row["minutes"] = round((time.perf_counter() - t) / 60, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    lesions = [les for row in rows for les in row["lesions"]]
    big = [les for les in lesions if les["diameter_mm"] >= 10.0]
    print(f"inserted lesions of 10 mm or more found: {sum(les['found'] for les in big)}/{len(big)}")
    for row in recipe_module.sensitivity_table(lesions):
        print(row)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    a = [x for x in sys.argv[1:] if not x.startswith("--")]
    main(a[0], int(a[1]), int(a[2]), Path(a[3]), Path(a[4]) if len(a) > 4 else Path("runs/default-model"),
         "--no-intensity-aug" not in sys.argv, "--insert-real" in sys.argv, "--real-in-every-member" in sys.argv,
         next((float(x.split("=", 1)[1]) for x in sys.argv if x.startswith("--lesion-prior=")), None),
         "--seen" in sys.argv, "--partial-bone" in sys.argv,
         next((float(x.split("=", 1)[1]) for x in sys.argv if x.startswith("--scale-aug=")), 0.0),
         next((int(x.split("=", 1)[1]) for x in sys.argv if x.startswith("--seed=")), 0),
         next((int(x.split("=", 1)[1]) for x in sys.argv if x.startswith("--width=")), None))
