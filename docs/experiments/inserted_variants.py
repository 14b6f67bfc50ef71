"""Recipe variants compared on many inserted lesions instead of the build's 14: for the build itself and each
``recipe_variants.py`` output, its two models that never saw a background segment SEEDS new copies of that
background with 8 lesions each (the copies of ``symmetry_inserted.py``, seeds no training or test used), at
``predict``'s threshold and smallest volume, the metal rule on: inserted lesions of 10 mm or more found, by type and
size, and the findings on no inserted lesion: NOT part of bonemet.

    .venv/bin/python docs/experiments/inserted_variants.py runs/default-model OUT [VARIANT_OUT ...] [--seeds=N]

OUT keeps the copies (made once); each VARIANT_OUT is a ``recipe_variants.py`` output folder (its ``work``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from symmetry_inserted import BANDS, count_inserted
from bonemet.markdown import markdown_table


def row(name: str, config: dict, c: dict) -> dict:
    return {"variant": name, "epochs": config["epochs"], "window": config["preprocessing"].get("window"),
            "inserted >= 10 mm found": f"{c['found']}/{c['big']}",
            **{kind: f"{n[0]}/{n[1]}" for kind, n in sorted(c["kind"].items())},
            **{band: "{}/{}".format(*c["band"].get(band, [0, 0])) for band, _, _ in BANDS},
            "findings on no inserted lesion": c["fp"]}


def main(build: Path, out: Path, variants: list[Path], seeds: int) -> None:
    rows = []
    for name, work in [("build", build / "work"), *((v.name, v / "work") for v in variants)]:
        c = count_inserted(build, work, out, seeds, rules=(None,))[None]
        config = json.loads((work / "without-background0" / "seg" / "config.json").read_text())
        rows.append(row(name, config, c))
        print(json.dumps(rows[-1]), flush=True)
    print(markdown_table(rows))


if __name__ == "__main__":
    a = [x for x in sys.argv[1:] if not x.startswith("--")]
    main(Path(a[0]), Path(a[1]), [Path(x) for x in a[2:]],
         next((int(x.split("=", 1)[1]) for x in sys.argv if x.startswith("--seeds=")), 6))
