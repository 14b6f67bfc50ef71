"""Recipe variants compared on many inserted lesions instead of the build's 14: for the build itself and each
``recipe_variants.py`` output, its two models that never saw a background segment SEEDS new copies of that
background with 8 lesions each (the copies of ``symmetry_inserted.py``, seeds no training or test used), at
``predict``'s smallest volume, the metal rule on: inserted lesions of 10 mm or more found, by type and
size, and the findings on no inserted lesion, at ``predict``'s threshold and at 0.6 and 0.7 (to compare variants
at a like number of findings): NOT part of bonemet.

    .venv/bin/python docs/experiments/inserted_variants.py runs/default-model OUT [VARIANT_OUT ...] [--seeds=N]

OUT keeps the copies (made once); each VARIANT_OUT is a ``recipe_variants.py`` output folder (its ``work``), or
several joined by ``+`` (``build`` names the build's own): their members averaged, one ensemble (of recipes
that differ in their seed, for example). The bone Dice is each copy's, against its mask, averaged per background.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from symmetry_inserted import BANDS, count_inserted
from bonemet.markdown import markdown_table


THRESHOLDS = (0.5, 0.6, 0.7)


def row(name: str, config: dict, threshold: float, c: dict) -> dict:
    return {"variant": name, "epochs": config["epochs"], "window": config["preprocessing"].get("window"),
            "threshold": threshold,
            "inserted >= 10 mm found": f"{c['found']}/{c['big']}",
            **{kind: f"{n[0]}/{n[1]}" for kind, n in sorted(c["kind"].items())},
            **{band: "{}/{}".format(*c["band"].get(band, [0, 0])) for band, _, _ in BANDS},
            "findings on no inserted lesion": c["fp"],
            "bone Dice 0 / 1": " / ".join(f"{np.mean(d):.3f}" for _, d in sorted(c["bone"].items()))}


def main(build: Path, out: Path, variants: list[str], seeds: int) -> None:
    rows = []
    for name in ["build", *variants]:
        works = [build / "work" if part == "build" else Path(part) / "work" for part in name.split("+")]
        counts = count_inserted(build, works, out, seeds, points=tuple((t, None) for t in THRESHOLDS))
        config = json.loads((works[0] / "without-background0" / "seg" / "config.json").read_text())
        for (threshold, _), c in counts.items():
            rows.append(row("+".join(Path(part).name for part in name.split("+")), config, threshold, c))
            print(json.dumps(rows[-1]), flush=True)
    print(markdown_table(rows))


if __name__ == "__main__":
    a = [x for x in sys.argv[1:] if not x.startswith("--")]
    main(Path(a[0]), Path(a[1]), a[2:],
         next((int(x.split("=", 1)[1]) for x in sys.argv if x.startswith("--seeds=")), 6))
