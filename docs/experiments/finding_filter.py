"""How many inserted lesions do the leave-one-out models find on patients they never saw, counted by findings that
mark them; and can a second stage tell their findings on normal bone from those on inserted lesions (the
false-positive-reduction stage of classic CAD: each finding described by a few measured features, a classifier
trained on other patients' findings keeps or drops it)? NOT part of bonemet.

``collect``: for each held-out patient of a ``bonemet models build`` folder's recipe and each ``MODELS`` folder of
leave-one-out models laid out like ``BUILD/work`` (``without-real*/seg``, ``without-background*/seg``; for example
one per training seed), the model that never saw that patient segments its series as it is and COPIES copies of it
with 6 new lesions inserted (seeds 3000.., used by no training or test; through the background's bone mask, or the
HU rule of ``bonemet.data.bone`` without one). Each finding ``predict`` would keep at each of THRESHOLDS (the bone
rules and the metal rule on) is measured and written to ``OUT/findings-T.csv``, with the inserted lesions it
overlaps and the share of its voxels in them; the lesions to ``OUT/lesions.csv``. Patients and copies are named by
series, so two builds' folders hold the same lesions.

``table``: the network alone: per held-out patient, findings per scan as it is, and inserted lesions of 10 mm or
more found by any overlap and by a localised finding (at least SHARE of its voxels in inserted lesions); then the
localised ones by lesion type.

``contrast``: ``predict --min-contrast-hu`` at several settings, from the same findings (the table of ``table``).

``evaluate``: the second stage, leave one patient out: for each patient, a classifier (logistic regression or
gradient boosting) fitted on the other patients' findings (positive: localised on an inserted lesion), its cut set
to keep SENS of their localised lesions of 10 mm or more; on the held-out patient: findings per scan as it is,
kept, and its inserted lesions still found localised.

    .venv/bin/python docs/experiments/finding_filter.py collect OUT BUILD MODELS [MODELS ...] [--copies=4]
        [--thresholds=0.5,0.35]
    .venv/bin/python docs/experiments/finding_filter.py table OUT [OUT ...] [--threshold=0.5] [--share=0.25]
    .venv/bin/python docs/experiments/finding_filter.py evaluate OUT [--sens=0.85] [--threshold=0.5] [--clf=lr|gb]
        [--share=0.25]
    .venv/bin/python docs/experiments/finding_filter.py contrast OUT [OUT ...] [--threshold=0.5] [--share=0.25]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from operating_point import findings, segment
from bonemet.inference.lesions import mirror_mean_hu, sagittal_midline
from bonemet.markdown import markdown_table
from bonemet.phantom.synth import synthesize_from_ct
from bonemet.recipe import recipe_of, series_label

FEATURES = ("log_volume", "diameter", "z_extent", "elongation", "mean_hu", "max_hu", "contrast", "abs_contrast",
            "hu_std", "lytic_share", "blastic_share", "mean_p", "max_p", "bone_p", "mirror_diff", "no_mirror",
            "spine", "rib", "pelvis")
SITES = ("spine", "rib", "pelvis")
MIRROR_NONE = 300.0  # the mirror difference given to a finding across the midline (it has no other side)


def measure(case: dict, threshold: float = 0.5) -> list[dict]:
    """Each finding ``predict`` keeps on ``case`` (``operating_point.segment``'s output) at ``threshold``, with its
    features and, for a case with inserted lesions, which of them it overlaps (``truth``: lesion ids, native grid)."""
    lesions, kept = findings(case, threshold, 0.05, 2000.0, None, bone_rules=True)
    vol = case["volume"]
    hu, sp = vol.array, vol.spacing
    if "midline" not in case:  # one scan, measured at several thresholds
        case["midline"] = sagittal_midline(hu)
    midline = case["midline"]
    boxes = ndimage.find_objects(kept)
    native = vol.to_native(kept)[0] if "truth" in case else None
    rows = []
    for les in lesions:
        box = boxes[les.id - 1]
        on = kept[box] == les.id
        v = hu[box][on].astype(np.float64)
        sur = les.surrounding_bone_hu if les.surrounding_bone_hu is not None else float(np.median(v))
        z = (les.slice_end - les.slice_start + 1) * sp[2]
        mirror = mirror_mean_hu(hu, kept, les.id, (0, 0, 0), box, midline, sp, float(v.mean()))
        row = {"log_volume": float(np.log(les.volume_ml)), "diameter": les.diameter_mm, "z_extent": z,
               "elongation": z / max(les.diameter_mm, 1.0), "mean_hu": les.mean_hu, "max_hu": les.max_hu,
               "contrast": les.mean_hu - sur, "abs_contrast": abs(les.mean_hu - sur), "hu_std": float(v.std()),
               "lytic_share": float(np.mean(v < sur - 100)), "blastic_share": float(np.mean(v > sur + 100)),
               "mean_p": les.mean_probability, "max_p": les.max_probability,
               "bone_p": float(case["bone"][box][on].mean()),
               "mirror_diff": MIRROR_NONE if mirror is None else abs(mirror - float(v.mean())),
               "no_mirror": int(mirror is None), **{s: int(les.site == s) for s in SITES},
               "volume_ml": les.volume_ml, "type": les.type, "site": les.site}
        if native is not None:
            under = case["truth"][native == les.id]
            ids = set(np.unique(under).tolist()) - {0}
            row["hits"] = ";".join(str(i) for i in sorted(ids))
            row["lesion_share"] = float(np.mean(under > 0)) if under.size else 0.0
        rows.append(row)
    return rows


def held_out_patients(build: Path) -> list[tuple[str, str, str | None]]:
    """(leave-one-out folder, series, bone mask or None) of each real patient of a build's recipe."""
    recipe = recipe_of(build)
    patients = [(f"without-real{k}", scan, None) for k, scan in enumerate(recipe.real)]
    return patients + [(f"without-background{i}", ct, bone) for i, (ct, bone) in enumerate(recipe.backgrounds)]


def test_scans(out: Path, scan: str, bone: str | None, copies: int) -> tuple[str, list[tuple], list[dict]]:
    """A held-out patient's name, its scans to read ((label, path, copy folder or None): as it is, then ``copies``
    copies with 6 test lesions each, made in ``OUT/copies`` when not there yet) and their lesions."""
    name = series_label(scan)  # the same series has the same name and the same copies in every build
    scans, lesions = [("as is", scan, None)], []
    for c in range(copies):
        case_dir = out / "copies" / f"{name.replace('/', '_')}-{3000 + c}"
        if not case_dir.exists():
            synthesize_from_ct(scan, bone, case_dir, lesions=6, seed=3000 + c, formats=("volumes",), patient="T")
        scans.append((f"copy {c}", case_dir / "volumes" / "T" / "ct.nii.gz", case_dir))
        with open(case_dir / "lesions.csv", newline="") as fh:
            lesions += [{**r, "patient": name, "copy": c} for r in csv.DictReader(fh)]
    return name, scans, lesions


def truth_of(case_dir: Path) -> np.ndarray:
    """The test lesions' label volume of a copy."""
    return np.asarray(nib.load(case_dir / "volumes" / "T" / "lesion_mask.nii.gz").dataobj)


def collect(out: Path, build: Path, model_dirs: list[Path], copies: int, thresholds: list[float]) -> None:
    rows: dict = {t: [] for t in thresholds}
    lesions = []
    for folder, scan, bone in held_out_patients(build):
        if not all((models / folder / "seg").exists() for models in model_dirs):
            print(f"skipped {scan}: no model without it in every MODELS folder")
            continue
        name, scans, inserted = test_scans(out, scan, bone, copies)
        lesions += inserted
        for m, models in enumerate(model_dirs):
            for label, path, case_dir in scans:
                case = segment(models / folder / "seg", path)
                if case_dir is not None:
                    case["truth"] = truth_of(case_dir)
                for t in thresholds:
                    found = measure(case, t)
                    print(f"{name} model {m} {label} threshold {t:g}: {len(found)} findings", flush=True)
                    rows[t] += [{"patient": name, "model": m, "scan": label, **r} for r in found]
    out.mkdir(parents=True, exist_ok=True)
    write_tables([*[(out / f"findings-{t:g}.csv", rows[t]) for t in thresholds], (out / "lesions.csv", lesions)])


def write_tables(tables: list[tuple[Path, list[dict]]]) -> None:
    """Each (path, rows) as a CSV file, its columns every key of its rows in order of first appearance."""
    for path, table in tables:
        keys = list(dict.fromkeys(k for r in table for k in r))
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, keys)
            w.writeheader()
            w.writerows(table)


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _classifier(kind: str):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "gb":
        return HistGradientBoostingClassifier(max_depth=3, max_iter=200, learning_rate=0.05, class_weight="balanced",
                                              random_state=0)
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced"))


def _rows(out: Path, threshold: float, share: float) -> tuple[list[dict], set]:
    """The findings at ``threshold``, each with its features ``x``, label ``y`` (it overlaps an inserted lesion and
    at least ``share`` of its voxels lie in inserted lesions) and the inserted lesions of 10 mm or more it finds by
    that rule (``big``) and by any overlap (``touched``); and every such lesion (patient, copy, id)."""
    rows = _read(out / f"findings-{threshold:g}.csv")
    big = {(r["patient"], r["copy"], r["lesion_id"]) for r in _read(out / "lesions.csv")
           if float(r["diameter_mm"]) >= 10.0}
    for r in rows:
        r["x"] = [float(r[f]) for f in FEATURES]
        copy = r["scan"].split()[-1] if r["scan"] != "as is" else None
        r["touched"] = {(r["patient"], copy, i) for i in r.get("hits", "").split(";") if i} & big if copy else set()
        r["y"] = int(bool(r.get("hits")) and float(r["lesion_share"] or 0) >= share)
        r["big"] = r["touched"] if r["y"] else set()
    return rows, big


def evaluate(out: Path, sens: float, threshold: float, share: float, kind: str) -> None:
    """Leave one patient out (see the module docstring); prints a row per held-out patient and model, then the
    totals, without and with the filter."""
    rows, big = _rows(out, threshold, share)
    patients = sorted({r["patient"] for r in rows})
    table = []
    for p in patients:
        train = [r for r in rows if r["patient"] != p]
        clf = _classifier(kind).fit(np.array([r["x"] for r in train]), np.array([r["y"] for r in train]))
        cut = _cut(clf, train, sens)
        n_big = len({k for k in big if k[0] == p})
        for m in sorted({r["model"] for r in rows}):
            part = [r for r in rows if r["patient"] == p and r["model"] == m]
            score = clf.predict_proba(np.array([r["x"] for r in part]))[:, 1] if part else np.zeros(0)
            kept = [r for r, s in zip(part, score) if s >= cut]
            as_is = [r for r in part if r["scan"] == "as is"]
            as_is_kept = [r for r in kept if r["scan"] == "as is"]
            table.append({
                "held-out patient": p, "model": m, "findings as is": len(as_is), "kept": len(as_is_kept),
                "largest kept mL": round(max([float(r["volume_ml"]) for r in as_is_kept], default=0.0), 1),
                "found, any overlap": f"{len(set().union(set(), *(r['touched'] for r in part)))}/{n_big}",
                f"found, >= {share:g} of the finding": f"{len(set().union(set(), *(r['big'] for r in part)))}/{n_big}",
                "after the filter": f"{len(set().union(set(), *(r['big'] for r in kept)))}/{n_big}",
                "cut": round(cut, 3)})
    print(markdown_table(table))
    n = len(table)
    print(f"threshold {threshold:g}, {kind}, cut for {sens:g} of the training patients' found lesions")
    print(f"findings per scan as is: {sum(t['findings as is'] for t in table) / n:.2f}; "
          f"kept: {sum(t['kept'] for t in table) / n:.2f}; scans with a kept finding over 5 mL: "
          f"{sum(t['largest kept mL'] > 5 for t in table)} of {n}")
    for key in list(table[0])[5:8]:
        a, b = (sum(int(t[key].split("/")[i]) for t in table) for i in (0, 1))
        print(f"{key}: {a}/{b} = {a / b:.3f}")
    if kind == "lr":
        clf = _classifier(kind).fit(np.array([r["x"] for r in rows]), np.array([r["y"] for r in rows]))
        print(markdown_table([{"feature": f, "weight (standardised)": round(float(c), 2)}
                              for f, c in sorted(zip(FEATURES, clf[-1].coef_[0]), key=lambda t: -abs(t[1]))]))


def table(outs: list[Path], threshold: float, share: float) -> None:
    """The network alone (no filter) for each ``collect`` folder: per held-out patient, findings per scan as it is
    (each model's, mean), and the inserted lesions of 10 mm or more found by any overlap and by a localised finding;
    then the localised ones by lesion type."""
    per_patient, per_kind = [], []
    for out in outs:
        rows, big = _rows(out, threshold, share)
        kinds = {(r["patient"], r["copy"], r["lesion_id"]): r["kind"] for r in _read(out / "lesions.csv")}
        models = sorted({r["model"] for r in rows})
        for p in sorted({k[0] for k in big}):
            as_is = [sum(r["patient"] == p and r["model"] == m and r["scan"] == "as is" for r in rows) for m in models]
            n = len({k for k in big if k[0] == p})
            cells = {f"model {m}": "{} / {} / {}".format(
                a, *(len(set().union(set(), *(r[key] for r in rows if r["patient"] == p and r["model"] == m)))
                     for key in ("touched", "big"))) for m, a in zip(models, as_is)}
            per_patient.append({"build": out.name, "held-out patient": p, "lesions >= 10 mm": n, **cells})
        for kind in sorted(set(kinds.values())):
            n = sum(kinds[k] == kind for k in big)
            found = [len({k for r in rows if r["model"] == m for k in r["big"] if kinds[k] == kind}) for m in models]
            per_kind.append({"build": out.name, "type": kind, "lesions >= 10 mm": n,
                             **{f"model {m}": f for m, f in zip(models, found)}})
    print(f"threshold {threshold:g}; each model: findings as is / found by any overlap / found localised")
    print(markdown_table(per_patient))
    print(markdown_table(per_kind))


CONTRAST_CUTS = (0.0, 20.0, 30.0, 50.0, 75.0, 100.0)


def contrast(outs: list[Path], threshold: float, share: float) -> None:
    """``predict --min-contrast-hu C`` for each C of CONTRAST_CUTS, from the findings ``collect`` measured (the rule
    drops a finding whose mean is within C HU of the bone around it, after every rule ``predict`` applies by
    default): per build and model, findings per scan as it is / inserted lesions of 10 mm or more found by any
    overlap / found localised, and the types of the localised lesions the rule loses at 30 HU."""
    table = []
    for out in outs:
        rows, big = _rows(out, threshold, share)
        kinds = {(r["patient"], r["copy"], r["lesion_id"]): r["kind"] for r in _read(out / "lesions.csv")}
        patients = {k[0] for k in big}
        for m in sorted({r["model"] for r in rows}):
            row = {"build": out.name, "model": m}
            found = {}
            for c in CONTRAST_CUTS:
                kept = [r for r in rows if r["model"] == m and float(r["abs_contrast"]) >= c]
                found[c] = set().union(set(), *(r["big"] for r in kept))
                row[f"{c:g} HU"] = "{:.1f} / {} / {}".format(
                    sum(r["scan"] == "as is" for r in kept) / len(patients),
                    len(set().union(set(), *(r["touched"] for r in kept))), len(found[c]))
            row["lost at 30 HU"] = ", ".join(sorted(kinds[k] for k in found[0.0] - found[30.0])) or "-"
            table.append(row)
    print(f"threshold {threshold:g}; at each contrast rule: findings per scan as is / found by any overlap / found "
          "localised")
    print(markdown_table(table))


def _cut(clf, train: list[dict], sens: float) -> float:
    """The highest score cut that keeps ``sens`` of the training patients' inserted lesions of 10 mm or more that
    the network found (a lesion is kept when its best-scoring finding is)."""
    score = clf.predict_proba(np.array([r["x"] for r in train]))[:, 1]
    best: dict = {}
    for r, s in zip(train, score):
        for key in r["big"]:
            best[(r["model"], *key)] = max(best.get((r["model"], *key), 0.0), float(s))
    values = np.sort(np.array(list(best.values())))[::-1]
    return float(values[int(np.ceil(sens * len(values))) - 1])


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    if args[0] == "collect":
        collect(Path(args[1]), Path(args[2]), [Path(a) for a in args[3:]], int(opts.get("copies", 4)),
                [float(t) for t in opts.get("thresholds", "0.5").split(",")])
    elif args[0] == "table":
        table([Path(a) for a in args[1:]], float(opts.get("threshold", 0.5)), float(opts.get("share", 0.25)))
    elif args[0] == "contrast":
        contrast([Path(a) for a in args[1:]], float(opts.get("threshold", 0.5)), float(opts.get("share", 0.25)))
    else:
        evaluate(Path(args[1]), float(opts.get("sens", 0.85)), float(opts.get("threshold", 0.5)),
                 float(opts.get("share", 0.25)), opts.get("clf", "lr"))
