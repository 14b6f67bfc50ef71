"""Rules applied to the bone output after the network, against TotalSegmentator's masks of the two real series that
have one, each segmented by the model that never saw it: NOT part of bonemet.

Rules tried, alone and together (each on the canonical grid of the series, HU from the scan itself):

* ``t``: the bone probability cut at ``t`` instead of 0.5;
* ``body``: bone outside the body dropped (the body: the largest 3D component above -300 HU, holes filled slice by
  slice; the CT table and cushions lie outside it);
* ``fill A``: holes of at most ``A`` mm2 inside the bone filled slice by slice (the marrow of a vertebral body whose
  cortex the network found; a size limit, since the ribs and the spine can close a ring around the whole chest);
* ``floor F``: bone voxels below ``F`` HU dropped, then holes filled again as ``fill`` does (the soft-tissue rim
  around a cortex goes; marrow inside a ring comes back);
* ``sure``: the bone that HU alone is sure of (``bonemet.data.bone.insertion_bone_mask``) added.

    .venv/bin/python docs/experiments/bone_postprocess.py MODELS [CACHE]

``MODELS``: a folder with ``without-background0/seg`` and ``without-background1/seg`` (a build's ``work`` folder,
or ``recipe_variants.py``'s ``OUT/work``); ``CACHE``: where the probabilities are kept between runs.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from bone_threshold import REAL, SERIES
from operating_point import segment
from bonemet.data.bone import insertion_bone_mask
from bonemet.data.ct import read_volume
from bonemet.data.volume import read_mask_like

BODY_HU = -300.0


def body_mask(hu: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(hu > BODY_HU)
    if n == 0:
        return np.zeros(hu.shape, bool)
    body = labels == 1 + int(np.argmax(ndi.sum(np.ones_like(hu), labels, range(1, n + 1))))
    for k in range(body.shape[2]):
        body[:, :, k] = ndi.binary_fill_holes(body[:, :, k])
    return body


def fill_small_holes(mask: np.ndarray, spacing: tuple[float, ...], max_mm2: float) -> np.ndarray:
    out = mask.copy()
    pixel_mm2 = spacing[0] * spacing[1]
    for k in range(mask.shape[2]):
        holes = ndi.binary_fill_holes(mask[:, :, k]) & ~mask[:, :, k]
        labels, n = ndi.label(holes)
        if n:
            small = np.zeros(n + 1, bool)
            small[1:] = ndi.sum(holes, labels, range(1, n + 1)) * pixel_mm2 <= max_mm2
            out[:, :, k] |= small[labels]
    return out


def scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    both = float((pred & truth).sum())
    return 2 * both / (pred.sum() + truth.sum()), both / max(1, pred.sum()), both / truth.sum()


def main(models: Path, cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, (ct, mask) in enumerate(SERIES):
        vol = read_volume(REAL / ct)
        f = cache / f"bone{i}.npy"
        if not f.exists():
            np.save(f, segment(models / f"without-background{i}" / "seg", REAL / ct)["bone"])
        hu = np.asarray(vol.array, np.float32)
        cases.append({"name": ct, "p": np.load(f), "hu": hu, "spacing": vol.spacing,
                      "truth": read_mask_like(REAL / mask, vol), "body": body_mask(hu),
                      "sure": insertion_bone_mask(vol)})
    rows = []
    for t, body, fill, floor, sure in itertools.product((0.4, 0.5, 0.6), (False, True), (None, 150.0, 400.0),
                                                        (None, 0.0, 100.0), (False, True)):
        if floor is not None and fill is None:
            continue
        res = []
        for c in cases:
            m = c["p"] >= t
            if body:
                m &= c["body"]
            if floor is not None:
                m &= c["hu"] >= floor
            if fill is not None:
                m = fill_small_holes(m, c["spacing"], fill)
            if sure:
                m |= c["sure"] & (c["body"] if body else True)
            res.append(scores(m, c["truth"]))
        rows.append(((t, body, fill, floor, sure), res))
    rows.sort(key=lambda r: -np.mean([d for d, _, _ in r[1]]))
    print("| threshold | body | fill holes mm2 | HU floor | HU-sure bone added | "
          + " | ".join(f"{c['name']}: Dice / precision / recall" for c in cases) + " | mean Dice |")
    print("| --- " * (6 + len(cases)) + "|")
    for (t, body, fill, floor, sure), res in rows:
        cells = " | ".join(f"{d:.3f} / {p:.3f} / {r:.3f}" for d, p, r in res)
        print(f"| {t} | {'yes' if body else '-'} | {fill or '-'} | {'-' if floor is None else floor} | "
              f"{'yes' if sure else '-'} | {cells} | {np.mean([d for d, _, _ in res]):.3f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/bone_postprocess"))
