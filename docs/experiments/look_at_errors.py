"""Pictures of what the default recipe's models get wrong on real anatomy they never saw, to be looked at by eye:
NOT part of bonemet.

``bone``: each leave-one-background-out model (``MODELS/without-background*/seg``: a build's ``work`` folder) on its
left-out series, ``predict``'s bone mask against TotalSegmentator's, slice by slice (Dice, whether the reference
repeats the slice before it, as a mask drawn on a coarser grid does, and the voxels of 100 HU or more within 23 mm
of the spine's middle), the median HU of the reference's bone there, the largest connected piece of wrong bone and
the Dice without it; and a picture of the 1 mm chest series: the slice with the most wrong bone and the one with
the least, cropped to the spine, and a sagittal reformat through the spine (green: both; red: the model only; blue:
the reference only).

``findings``: each leave-one-real-out model (``MODELS/without-real*/seg``) on its left-out series, ``predict``'s
defaults: every finding cropped at its middle slice (120 mm square, bone window, the finding outlined), with its
volume, slices, mean HU and the median HU of the bone around it, one sheet per series.

``lesions``: the inserted test lesions of a ``finding_filter.py collect`` folder (``FILTER``, made with ``BUILD``'s
recipe): how much each changed the HU of its voxels (the copy against the series as it is), by type, and how many
of them the models found localised (per model, from ``collect``'s findings); and a picture of two lytic lesions of
10 mm or more per patient, outlined.

    .venv/bin/python docs/experiments/look_at_errors.py bone MODELS OUT
    .venv/bin/python docs/experiments/look_at_errors.py findings BUILD OUT [--models DIR]
    .venv/bin/python docs/experiments/look_at_errors.py lesions FILTER BUILD OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from bone_threshold import REAL, SERIES  # noqa: E402
from finding_filter import _read, _rows, held_out_patients, test_scans  # noqa: E402
from operating_point import findings as find, segment  # noqa: E402
from bonemet.data.ct import read_volume  # noqa: E402
from bonemet.data.volume import read_mask_like, read_nifti  # noqa: E402
from bonemet.inference.bone import refine_bone  # noqa: E402
from bonemet.recipe import recipe_of, series_label  # noqa: E402

LOW, WIDTH = -200.0, 1400.0  # the grey scale of the pictures, HU


def grey(hu: np.ndarray) -> np.ndarray:
    g = np.clip((hu - LOW) / WIDTH, 0, 1)
    return np.stack([g] * 3, -1)


def errors(hu: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """An RGB picture of ``hu`` (2D) with both masks' agreement and disagreement painted on it."""
    rgb = grey(hu)
    rgb[pred & truth] = rgb[pred & truth] * 0.4 + np.array([0.0, 0.6, 0.0])
    rgb[pred & ~truth] = (1.0, 0.0, 0.0)
    rgb[truth & ~pred] = (0.0, 0.4, 1.0)
    return rgb


def bone(models: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for i, (ct, mask) in enumerate(SERIES):
        vol = read_volume(REAL / ct)
        pred = refine_bone(segment(models / f"without-background{i}" / "seg", REAL / ct)["bone"], vol)
        truth = read_mask_like(REAL / mask, vol)
        hu = np.asarray(vol.array, np.float32)
        # the spine: the middle of the reference's bone near the body's middle column; a box of 70 mm either way
        ys, xs = np.nonzero(truth.sum(2).T)
        middle = np.abs(xs - hu.shape[0] / 2) < 40 / vol.spacing[0]
        cx, cy = int(np.median(xs[middle])), int(np.median(ys[middle]))
        h = int(70 / vol.spacing[0])
        box = (slice(max(0, cx - h), cx + h), slice(max(0, cy - h), cy + h))
        near = slice(max(0, cx - h // 3), cx + h // 3), slice(max(0, cy - h // 3), cy + h // 3)  # 23 mm either way
        print(f"\n{ct}: Dice {2 * (pred & truth).sum() / (pred.sum() + truth.sum()):.3f}; the reference's bone "
              f"within 23 mm of the spine's middle: median {np.median(hu[near][truth[near]]):.0f} HU\n")
        print("| slice | model | reference | both | Dice | reference equals the slice before | "
              "voxels of 100 HU or more within 23 mm of the spine's middle |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for k in range(hu.shape[2]):
            p, t = pred[:, :, k], truth[:, :, k]
            same = k > 0 and bool((truth[:, :, k - 1] == t).all())
            print(f"| {k} | {p.sum()} | {t.sum()} | {(p & t).sum()} | {2 * (p & t).sum() / (p.sum() + t.sum()):.3f} "
                  f"| {'yes' if same else '-'} | {(hu[near + (k,)] >= 100).sum()} |")
        pieces, n = ndimage.label(pred & ~truth, np.ones((3, 3, 3)))
        sizes = np.bincount(pieces.ravel())[1:]
        big = pieces == 1 + int(np.argmax(sizes))
        both, rest = (pred & truth).sum(), pred.sum() - big.sum()
        print(f"\nwrong bone: {sizes.sum()} voxels in {n} pieces; the largest {sizes.max()} "
              f"({sizes.max() / sizes.sum():.0%}), centre (voxels) {np.argwhere(big).mean(0).round().tolist()}; "
              f"the Dice without it {2 * both / (rest + truth.sum()):.3f}")
        if i:
            continue
        wrong = (pred & ~truth)[box].sum((0, 1))  # per slice, near the spine
        worst, best = int(np.argmax(wrong)), int(np.argmin(wrong))
        fig, ax = plt.subplots(1, 3, figsize=(15, 5.4))
        for a, k in zip(ax, (worst, best)):
            a.imshow(errors(hu[box + (k,)].T, pred[box + (k,)].T, truth[box + (k,)].T), interpolation="nearest")
            a.set_title(f"slice {k}: {wrong[k]} voxels of the model's only", fontsize=10)
        cut = box[1]  # the sagittal plane through the spine's middle column
        pic = errors(hu[cx, cut].T[::-1], pred[cx, cut].T[::-1], truth[cx, cut].T[::-1])
        ax[2].imshow(pic, aspect=vol.spacing[2] / vol.spacing[1], interpolation="nearest")
        ax[2].set_title("sagittal through the spine (head at the top)", fontsize=10)
        for a in ax:
            a.axis("off")
        fig.suptitle(f"{ct}: green both, red the model only, blue TotalSegmentator only", fontsize=11)
        fig.tight_layout()
        fig.savefig(out / "bone-errors.png", dpi=70)
        plt.close(fig)


def findings(build: Path, out: Path, models: Path | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    models = models or build / "work"
    for j, scan in enumerate(recipe_of(build).real):
        case = segment(models / f"without-real{j}" / "seg", scan)
        lesions, labels = find(case, 0.5, 0.05, 2000.0, bone_rules=True)
        vol = case["volume"]
        hu, sp = np.asarray(vol.array, np.float32), vol.spacing
        print(f"\n{series_label(scan)}: {len(lesions)} findings\n")
        print("| finding | mL | slices | mean HU | bone around, median HU |")
        print("| --- | --- | --- | --- | --- |")
        cols = 4
        rows = max(1, -(-len(lesions) // cols))
        fig, axs = plt.subplots(rows, cols, figsize=(cols * 3, rows * 3.2), squeeze=False)
        for a in axs.flat:
            a.axis("off")
        h = int(60 / sp[0])
        for a, les in zip(axs.flat, lesions):
            v = labels == les.id
            at = np.argwhere(v)
            k = int(np.median(at[:, 2]))
            cx, cy = (int(c) for c in at[:, :2].mean(0))
            box = (slice(max(0, cx - h), cx + h), slice(max(0, cy - h), cy + h), k)
            rgb = grey(hu[box].T)
            edge = v[box].T & ~ndimage.binary_erosion(v[box].T)
            rgb[edge] = (1.0, 0.15, 0.15)
            a.imshow(rgb, interpolation="nearest")
            ml = v.sum() * float(np.prod(sp)) / 1000
            sur = "-" if les.surrounding_bone_hu is None else f"{les.surrounding_bone_hu:.0f}"
            a.set_title(f"{ml:.1f} mL, slices {at[:, 2].min()}-{at[:, 2].max()}, {hu[v].mean():.0f} HU", fontsize=9)
            print(f"| {les.id} | {ml:.2f} | {at[:, 2].min()}-{at[:, 2].max()} | {hu[v].mean():.0f} | {sur} |")
        fig.suptitle(f"{series_label(scan)}, left out of the model's training: its findings (outlined)", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / f"findings-{j}.png", dpi=60)
        plt.close(fig)


def lesions(filt: Path, build: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows, big = _rows(filt, 0.5, 0.25)
    info = {(r["patient"], r["copy"], r["lesion_id"]): r for r in _read(filt / "lesions.csv")}
    models = sorted({r["model"] for r in rows})
    found = {m: set().union(set(), *(r["big"] for r in rows if r["model"] == m)) for m in models}
    change, crops = {}, []
    for _, scan, bone_mask in held_out_patients(build):
        copies = len({k[1] for k in info if k[0] == series_label(Path(scan))})
        name, scans, _ = test_scans(filt, scan, bone_mask, copies)  # the copies collect made, as it found them
        original = np.asarray(read_volume(Path(scan)).array, np.float32)
        for label, path, _ in scans[1:]:
            copy = label.split()[-1]
            hu = np.asarray(read_volume(path).array, np.float32)
            labels = np.asarray(read_nifti(path.parent / "lesion_mask.nii.gz", dtype=None).array)
            for key in sorted(k for k in big if k[0] == name and k[1] == copy):
                on = labels == int(key[2])
                change[key] = float(np.abs(hu[on] - original[on]).mean())
                if info[key]["kind"] == "lytic" and sum(c[0] == name for c in crops) < 2:
                    crops.append((name, hu, on, info[key]))
    print("| type | lesions >= 10 mm | mean HU change, 10 / 50 / 90 % | localised (all models): change under 100 HU "
          "| change of 100 HU or more |")
    print("| --- | --- | --- | --- | --- |")
    for kind in ("lytic", "blastic", "mixed"):
        keys = [k for k in change if info[k]["kind"] == kind]
        small, large = ([k for k in keys if (change[k] < 100) == s] for s in (True, False))
        share = [f"{sum(k in found[m] for m in models for k in ks)} of {len(models) * len(ks)}"
                 for ks in (small, large)]
        spread = " / ".join(f"{v:.0f}" for v in np.percentile([change[k] for k in keys], (10, 50, 90)))
        print(f"| {kind} | {len(keys)} | {spread} | {share[0]} | {share[1]} |")
    fig, axs = plt.subplots(2, 6, figsize=(18, 6.4), squeeze=False)
    for a in axs.flat:
        a.axis("off")
    for a, (name, hu, on, r) in zip(axs.flat, crops):
        at = np.argwhere(on)
        k, (cx, cy) = int(np.median(at[:, 2])), (int(c) for c in at[:, :2].mean(0))
        h = 40  # voxels either way
        box = (slice(max(0, cx - h), cx + h), slice(max(0, cy - h), cy + h), k)
        rgb = grey(hu[box].T)
        rgb[on[box].T & ~ndimage.binary_erosion(on[box].T)] = (1.0, 0.15, 0.15)
        a.imshow(rgb, interpolation="nearest")
        a.set_title(f"{name.split('/')[0][:14]}: {r['diameter_mm']} mm, {float(r['mean_hu']):.0f} HU", fontsize=9)
    fig.suptitle("inserted lytic test lesions of 10 mm or more (outlined), two per patient", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "lytic-lesions.png", dpi=60)
    plt.close(fig)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    if args[0] == "bone":
        bone(Path(args[1]), Path(args[2]))
    elif args[0] == "lesions":
        lesions(Path(args[1]), Path(args[2]), Path(args[3]))
    else:
        findings(Path(args[1]), Path(args[2]), Path(opts["models"]) if "models" in opts else None)
