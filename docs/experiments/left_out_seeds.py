"""Findings on the real series each left out of training, at several training seeds, for two builds' recipes: does
a recipe change (more data, another option) lower the findings on real anatomy a model never saw by more than the
seed moves them? NOT part of bonemet.

For each ``BUILD`` (a ``bonemet models build`` folder: its recipe, and its ``work/data``, linked, not made again),
each seed and each real series named (``--real=J,K``: indices into the build's ``--real`` list; all by default):
the build's leave-one-out model for that series trained again at that seed (``without-realJ-seedS``), then
``predict`` on the series with its default options. Seed 0 is the build's own model where it has one (not trained
again; ``BUILD`` may also be a folder with only a ``recipe.json``, whose data are then made in ``work/data``). With
several seeds, also their models as one ensemble (every seed's members' probabilities averaged, then the lesions
found as ``predict`` finds them: ``operating_point.findings`` with the bone rules and the metal rule; seed "all").
Prints one row per series and seed, then a table: findings per series, builds as columns.

    .venv/bin/python docs/experiments/left_out_seeds.py OUT BUILD [BUILD ...] [--seeds=0,1,2] [--real=2,3]
        [--neg-ratio=R] [--pos-weight=W]

``--neg-ratio`` / ``--pos-weight``: every training with that ``seg train`` option instead of the recipe's (1 and 10);
seed 0 is then trained too.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import bonemet.recipe as recipe_module
from operating_point import averaged, findings, segment
from bonemet.markdown import markdown_table


def _configure(seed: int, overrides: dict) -> None:
    """Every training the recipe starts from now on uses ``seed`` (as ``recipe_variants.py --seed``) and the
    training options ``overrides`` (``neg_ratio``, ``pos_weight``)."""
    original = getattr(recipe_module, "_original_seg_config", recipe_module._seg_config)
    recipe_module._original_seg_config = original
    recipe_module._seg_config = lambda *a, **k: replace(original(*a, **k), seed=seed, **overrides)


def main(out: Path, builds: list[Path], seeds: list[int], real: list[int] | None, overrides: dict) -> None:
    rows = []
    for build in builds:
        build = build.resolve()
        recipe = recipe_module.recipe_of(build)
        work = out.resolve() / build.name / "work"
        work.mkdir(parents=True, exist_ok=True)
        (build / "work" / "data").mkdir(parents=True, exist_ok=True)
        if not (work / "data").exists():
            (work / "data").symlink_to(build / "work" / "data")
        sources, negatives = recipe_module._sources(recipe, work)  # made once, in BUILD/work/data
        for j in real if real is not None else range(len(recipe.real)):
            scan = recipe.real[j]
            runs = []
            for seed in seeds:
                t = time.perf_counter()
                own = build / "work" / f"without-real{j}" / "seg"
                if seed == 0 and not overrides and (own / "fold1" / "done.json").exists():
                    run, folder = own, work / f"without-real{j}-seed0"
                else:
                    _configure(seed, overrides)
                    folder = work / f"without-real{j}-seed{seed}"
                    run = recipe_module._train(recipe, folder, sources + [v for k, v in negatives.items()
                                                                          if k != scan])
                runs.append(run)
                row = recipe_module._findings(run, scan, folder / "predict")
                row.update(build=build.name, seed=seed, minutes=round((time.perf_counter() - t) / 60, 1))
                rows.append(row)
                print(json.dumps(row), flush=True)
            if len(runs) > 1:
                cases = [segment(run, scan) for run in runs]
                case = averaged(cases)
                lesions, _ = findings(case, 0.5, 0.05, 2000.0, bone_rules=True)
                rows.append({"series": rows[-1]["series"], "findings": len(lesions), "largest mL": round(max(
                    [les.volume_ml for les in lesions], default=0.0), 1), "build": build.name, "seed": "all"})
                print(json.dumps(rows[-1]), flush=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1))
    names = [b.resolve().name for b in builds]
    table = []
    for series in dict.fromkeys(r["series"] for r in rows):
        for seed in [*seeds, "all"]:
            cells = {r["build"]: f"{r['findings']} ({r['largest mL']} mL)" for r in rows
                     if r["series"] == series and r["seed"] == seed}
            table.append({"series": series, "seed": seed, **{n: cells.get(n, "-") for n in names}})
    print(markdown_table(table))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    main(Path(args[0]), [Path(b) for b in args[1:]], [int(s) for s in opts.get("seeds", "0,1").split(",")],
         [int(j) for j in opts["real"].split(",")] if "real" in opts else None,
         {k.replace("-", "_"): float(opts[k]) for k in ("neg-ratio", "pos-weight") if k in opts})
