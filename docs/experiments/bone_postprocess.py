"""Rules applied to the bone output after the network, against TotalSegmentator's masks of the two real series that
have one, each segmented by the model that never saw it: NOT part of bonemet.

``predict``'s rules (``bonemet.inference.bone``: threshold 0.4, body, fill 150, floor 100, sure) were chosen from
this table. Rules tried, alone and together (each on the canonical grid of the series, HU from the scan itself):

* ``t``: the bone probability cut at ``t`` instead of 0.5;
* ``body``: bone outside the body dropped (the body: the 3D components above -300 HU that hold bone HU alone is
  sure of, holes filled slice by slice; the CT table and cushions lie outside it);
* ``fill A``: holes of at most ``A`` mm2 inside the bone filled slice by slice (marrow inside a cortex the network
  found; a size limit, since the ribs and the spine can close a ring around the whole chest);
* ``floor F``: bone voxels below ``F`` HU dropped, then holes filled again as ``fill`` does (the soft-tissue rim
  around a cortex goes; marrow inside a ring comes back);
* ``sure``: the bone that HU alone is sure of (``bonemet.data.bone.insertion_bone_mask``) added.

    .venv/bin/python docs/experiments/bone_postprocess.py MODELS [CACHE] [--tta]

``MODELS``: a folder with ``without-background0/seg`` and ``without-background1/seg`` (a build's ``work`` folder,
or ``recipe_variants.py``'s ``OUT/work``); ``CACHE``: where the probabilities are kept between runs; ``--tta``: the
models also run on the mirrored slices (``predict --tta``).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

from bone_threshold import REAL, SERIES
from operating_point import segment
from bonemet.data.bone import fill_holes_slices, insertion_bone_mask
from bonemet.data.ct import read_volume
from bonemet.data.volume import read_mask_like
from bonemet.inference.bone import body_mask, refine_bone


def scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    both = float((pred & truth).sum())
    return 2 * both / (pred.sum() + truth.sum()), both / max(1, pred.sum()), both / truth.sum()


def main(models: Path, cache: Path, tta: bool = False) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, (ct, mask) in enumerate(SERIES):
        vol = read_volume(REAL / ct)
        f = cache / f"bone{i}.npy"
        if not f.exists():
            np.save(f, segment(models / f"without-background{i}" / "seg", REAL / ct, tta)["bone"])
        hu, sure = np.asarray(vol.array, np.float32), insertion_bone_mask(vol)
        cases.append({"name": ct, "p": np.load(f), "hu": hu, "spacing": vol.spacing, "vol": vol,
                      "truth": read_mask_like(REAL / mask, vol), "body": body_mask(hu, sure), "sure": sure})
    rows = []
    for t, body, fill, floor, sure in itertools.product((0.4, 0.5), (False, True),
                                                        (None, 150.0, 400.0, 1000.0, 2000.0),
                                                        (None, 0.0, 100.0, 150.0), (False, True)):
        if floor is not None and fill is None:
            continue
        res, masks = [], []
        for c in cases:
            m = c["p"] >= t
            if body:
                m &= c["body"]
            if floor is not None:
                m &= c["hu"] >= floor
            if fill is not None:
                m = fill_holes_slices(m, fill / (c["spacing"][0] * c["spacing"][1]))
            if sure:
                m |= c["sure"] & (c["body"] if body else True)
            res.append(scores(m, c["truth"]))
            masks.append(m)
        rows.append(((t, body, fill, floor, sure), res))
        if (t, body, fill, floor, sure) == (0.4, True, 150.0, 100.0, True):  # predict's rules
            assert all((refine_bone(c["p"], c["vol"]) == m).all() for c, m in zip(cases, masks))
    rows.sort(key=lambda r: -np.mean([d for d, _, _ in r[1]]))
    print("| threshold | body | fill holes mm2 | HU floor | HU-sure bone added | "
          + " | ".join(f"{c['name']}: Dice / precision / recall" for c in cases) + " | mean Dice |")
    print("| --- " * (6 + len(cases)) + "|")
    for (t, body, fill, floor, sure), res in rows:
        cells = " | ".join(f"{d:.3f} / {p:.3f} / {r:.3f}" for d, p, r in res)
        print(f"| {t} | {'yes' if body else '-'} | {fill or '-'} | {'-' if floor is None else floor} | "
              f"{'yes' if sure else '-'} | {cells} | {np.mean([d for d, _, _ in res]):.3f} |")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--tta"]
    main(Path(args[0]), Path(args[1]) if len(args) > 1 else Path("/tmp/bone_postprocess"), "--tta" in sys.argv)
