"""The recipe of the bundled default model: data, training, packaging and the measurements its model card states.

``bonemet models build OUT --background CT:BONE_MASK ... --real SCAN ...`` runs it end to end:

1. data, every image in one CT window (``--window``, the bone window by default): a CT phantom (8 patients, half
   of them metastatic); for each real background, three copies (``--copies``) with 6 lesions inserted through its
   bone mask, or without one where HU says bone is sure (``data.bone``; such copies have no bone label)
   (lytic, blastic and mixed; one patient per real scan, so that its copies share a
   fold; its slices without an inserted lesion are real negatives); each ``--real`` series (real CT without
   labelled lesions and without a bone mask) whole, as negatives whose bone term is left out of the loss, or with
   ``--partial-bone`` taken from a partial bone label by HU (``data.bone.partial_bone_labels``); a series of a
   background's own patient (``--same-patient SERIES:BACKGROUND``: another series or a longer stretch of the same
   body) the same way, as that patient's, so that it shares the background's fold and is left out with it;
2. leave one real patient out: for each ``--real`` series, an EH-AttUnet++ (2 x Hybrid-AttUnet++, width 8,
   physical scale: 3 mm pixels, a 384 mm field; intensity randomisation; 12 epochs, ``--epochs``) trained on
   everything but that series,
   then run on it: findings per scan on real anatomy it never saw;
3. leave one background out: for each background, the same model trained without it (its lesions come from the
   other backgrounds), then run on that series as it is (findings, bone Dice against its bone mask) and with
   ``test_lesions`` new lesions inserted (lesion-level sensitivity by size band and type, false positives);
4. the model itself, trained the same way on all of it, packaged as a bundled model (weights only, a SHA-256
   manifest) and run on phantom patients of another seed (lesion-level recall, false positives per scan);
5. the model card: data and licences, the recipe command, its time, every table, the limits.

Each stage keeps its output in ``OUT/work``, so an interrupted build goes on with ``--resume``.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import BonemetError
from .fileio import read_json, write_json, write_text
from .log import console

NAME_PATTERN = "ehattunet-{pixel:g}mm{context}-v1"  # a build's bundle, named by its input (model_name)
NAME = NAME_PATTERN.format(pixel=3.0, context="")  # the shipped default: ehattunet-3mm-v1
FIELD_MM = 384  # the field a member sees at any pixel size (size = FIELD_MM / pixel_mm, a multiple of 16)
DESCRIPTION = ("EH-AttUnet++ (2 x Hybrid-AttUnet++) at physical scale, trained on the CT phantom, lesions inserted "
               "into real CT and real negatives; research use only, not a medical device")


@dataclass
class Recipe:
    """What ``models build`` makes; ``quick`` shrinks every stage to check the recipe end to end in a minute."""

    backgrounds: list[tuple[Path, Path | None]]  # real CT and its bone mask (or None: the HU rule of data.bone)
    real: list[Path] = field(default_factory=list)  # real CT without labels: negatives, and left out one at a time
    # real CT without labels of a background's own patient: (series, that background's CT); negatives of that patient
    same_patient: list[tuple[Path, Path]] = field(default_factory=list)
    copies: int = 3
    lesions: int = 6
    phantom_patients: int = 8  # phantom patients in the training data (models build --phantom-patients; 0: none)
    phantom_thighs: bool = False  # the training phantom's scans run on to mid-thigh (models build --phantom-thighs)
    test_patients: int = 4
    test_lesions: int = 8  # inserted into a left-out background to measure sensitivity
    epochs: int = 12
    width: int = 8
    pixel_mm: float = 3.0
    context_mm: float = 0.0  # neighbouring slices this far below and above as input channels (seg train --context-mm)
    intensity_aug: bool = True
    scale_aug: float = 0.0  # random zoom of training samples by up to this fraction either way (seg train --scale-aug)
    density_aug: float = 0.0  # training samples' bone density scaled by up to 1+D either way (seg train --density-aug)
    window: str = "bone"  # the CT window of every training image (``data.windows``; ``multi``: three windows)
    real_in_every_member: bool = False  # real data in both members' training (the folds split the phantom only)
    lesion_prior: float | None = None  # the lesion head's starting bias (models.set_lesion_prior); None: torch's own
    lesion_dice: float = 0.0  # a soft Dice term's weight in each member's lesion loss (seg train --lesion-dice)
    partial_bone: bool = False  # the real series' bone term from a partial label by HU (data.bone) instead of none
    quick: bool = False

    @property
    def size(self) -> int:
        """Pixels of a member's square field: about ``FIELD_MM`` at ``pixel_mm`` (128 at 3 mm), a multiple of 16
        (four halvings in the network)."""
        return 64 if self.quick else max(16, 16 * round(FIELD_MM / self.pixel_mm / 16))

    @property
    def phantom_shape(self) -> tuple[int, int]:
        """Pixels and slices of the phantom patients, for training and for the test patients alike."""
        return (128, 24) if self.quick else (256, 48)

    def __post_init__(self) -> None:
        if self.quick:
            self.copies, self.lesions, self.phantom_patients, self.test_patients, self.test_lesions = 1, 3, 3, 2, 3
            self.epochs, self.width, self.pixel_mm = 1, 4, 6.0


def model_name(recipe: Recipe) -> str:
    """The bundle's name, with its pixel size and its neighbouring slices' distance in it (``ehattunet-2mm-ctx10-v1``):
    ``NAME`` at the default 3 mm and one slice."""
    return NAME_PATTERN.format(pixel=recipe.pixel_mm, context=f"-ctx{recipe.context_mm:g}" if recipe.context_mm else "")


def series_label(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _seg_config(recipe: Recipe, data: Path, real_patients: Sequence[str] = (), device: str = "auto"):
    """One training's configuration: in mixed precision on a GPU (``device``), and on a CPU that has bf16."""
    from .devices import cpu_bf16_supported, resolve_device
    from .runs.seg import SegConfig

    on_cpu = resolve_device(device).type == "cpu"
    return SegConfig(data=str(data), model="hybrid-attunet++", folds=2, test_patients=0.0, epochs=recipe.epochs,
                     size=recipe.size, width=recipe.width, batch_size=4, pixel_mm=recipe.pixel_mm, neg_ratio=1.0,
                     pos_weight=10.0, lr_scale=0.3, bf16=cpu_bf16_supported() if on_cpu else True, eval_every=4,
                     intensity_aug=recipe.intensity_aug, scale_aug=recipe.scale_aug, density_aug=recipe.density_aug,
                     train_always=sorted(set(real_patients)) if recipe.real_in_every_member else [],
                     lesion_prior=recipe.lesion_prior, lesion_dice=recipe.lesion_dice,
                     context_mm=recipe.context_mm)


def _sources(recipe: Recipe, work: Path) -> tuple[list, dict[Path, tuple]]:
    """Every stage-1 data set (made once, shared by all trainings): the phantom and inserted-lesion sources, and
    each real series' negatives by its path."""
    from .data.convert import convert_to_bmseg
    from .phantom.anatomy import slices_with_thighs
    from .phantom.synth import synthesize, synthesize_from_ct

    data = work / "data"
    size, slices = recipe.phantom_shape
    if recipe.phantom_patients and not (data / "phantom").exists():
        synthesize(data / "phantom", patients=recipe.phantom_patients, seed=11, size=size,
                   slices=slices_with_thighs(slices) if recipe.phantom_thighs else slices, formats=("bmseg",),
                   window=recipe.window, thighs=recipe.phantom_thighs)
    sources = [(data / "phantom" / "bmseg", "ph", None)] if recipe.phantom_patients else []
    for i, (ct, bone) in enumerate(recipe.backgrounds):
        for c in range(recipe.copies):
            out = data / f"background{i}-{c}"
            if not out.exists():
                synthesize_from_ct(ct, bone, out, lesions=recipe.lesions, seed=100 + c, formats=("bmseg",),
                                   patient=f"B{i}", window=recipe.window)
            sources.append((out / "bmseg", f"background{i}-{c}", f"B{i}"))  # the patient names the background
    negatives = {}
    patients = _patients(recipe)
    for name, scan in [*((f"real{j}", s) for j, s in enumerate(recipe.real)),
                       *((f"same-patient{k}", s) for k, (s, _) in enumerate(recipe.same_patient))]:
        out = data / name
        if not out.exists():
            convert_to_bmseg(scan, out, lesion_free=True, patient=patients[scan], window=recipe.window,
                             partial_bone=recipe.partial_bone)
        negatives[scan] = (out, name, patients[scan])
    return sources, negatives


def _patients(recipe: Recipe) -> dict[Path, str]:
    """Every series of the recipe and its patient: ``B{i}`` for background ``i`` and the ``same_patient`` series of
    it, ``N{j}`` for ``--real`` series ``j``."""
    patients = {ct: f"B{i}" for i, (ct, _) in enumerate(recipe.backgrounds)}
    patients.update({p: f"B{background_index(recipe, ct)}" for p, ct in recipe.same_patient})
    patients.update({p: f"N{j}" for j, p in enumerate(recipe.real)})
    return patients


def background_index(recipe: Recipe, ct: Path) -> int:
    """The index of background ``ct`` in ``recipe.backgrounds`` (paths compared resolved)."""
    found = [i for i, (c, _) in enumerate(recipe.backgrounds) if c.resolve() == ct.resolve()]
    if not found:
        raise BonemetError("--same-patient names a background that is not a --background", ct)
    return found[0]


def without_patient(sources: Sequence[tuple], negatives: dict, patient: str) -> list[tuple]:
    """Every training source but those of ``patient`` (a background's copies and its own patient's negatives)."""
    return [s for s in [*sources, *negatives.values()] if s[2] != patient]


def _merge(recipe: Recipe, folder: Path, sources: list) -> Path:
    """``sources`` merged into ``folder/mixed`` (once), the data of one training."""
    from .data.bmseg import merge_bmseg

    data = folder / "mixed"
    if not (data / "conversion.json").exists():
        shutil.rmtree(data, ignore_errors=True)  # a merge cut short
        merge_bmseg(sources, data, {"window": recipe.window, "merged": [str(s[0]) for s in sources]})
    return data


def _train(recipe: Recipe, folder: Path, sources: list, device: str = "auto") -> Path:
    """A run trained on ``sources`` merged (``folder/mixed``) into ``folder/seg`` on ``device``; goes on where it
    stopped."""
    from .devices import resolve_device
    from .training.loop import Runtime
    from .training.seg import train_segmentation

    data = _merge(recipe, folder, sources)
    run = folder / "seg"
    if not all((run / f"fold{k}" / "done.json").exists() for k in range(2)):
        real = [s[2] for s in sources if s[2]]  # the real backgrounds' and negatives' patients
        train_segmentation(_seg_config(recipe, data, real, device), run, resume=(run / "config.json").exists(),
                           rt=Runtime(resolve_device(device)))
    return run


def _predict(model: Path, scan: Path, out: Path, device: str = "auto", **truth):
    """``predict`` with its default options (no viewer, no DICOM-SEG) on ``device``, ``truth`` / ``bone_truth`` to
    score against."""
    from .inference.predict import PredictOptions, Predictor

    return Predictor(PredictOptions(seg=model, viewer=False, dicom_seg=False, overwrite=True, device=device,
                                    **truth)).predict(scan, out)


def _predict_defaults() -> str:
    """What ``predict`` keeps by default, in words, from its options' own defaults (for the model card)."""
    from dataclasses import fields

    from .inference.predict import PredictOptions

    d = {f.name: f.default for f in fields(PredictOptions)}
    return (f"threshold {d['threshold']:g}, components from {d['min_volume_ml']:g} mL, the {d['bone_margin_mm']:g} mm "
            f"bone gate, findings of mean {d['max_mean_hu']:g} HU or more left out as metal"
            + (", the bone mask by its HU rules" if d["refine_bone"] else ""))


def _findings(model: Path, scan: Path, out: Path, bone: Path | None = None, device: str = "auto") -> dict:
    """``model`` on a real series without labelled lesions: findings, the largest, the verdict; with ``bone``
    (its bone mask) also the bone Dice."""
    pred = _predict(model, scan, out, device, bone_truth=bone)
    row = {"series": series_label(scan), "slices": pred.summary["input"]["slices"], "findings": len(pred.lesions),
           "largest mL": round(pred.largest_ml, 1),
           "verdict": pred.verdict, "probability": pred.probability}
    if bone is not None:
        row["bone Dice"] = pred.summary["bone_truth"]["dice"]
    return row


SIZE_BANDS = ((0.0, 10.0, "under 10 mm"), (10.0, 20.0, "10-20 mm"), (20.0, float("inf"), "20 mm or more"))


def _inserted(model: Path, recipe: Recipe, ct: Path, bone: Path, i: int, work: Path, device: str = "auto") -> dict:
    """``model`` on background ``i`` with ``test_lesions`` new lesions inserted (a seed no training used): each
    true lesion found or not (a kept finding overlaps it), with its type and largest axial diameter, and the
    findings that overlap none."""
    import csv

    import nibabel as nib
    import numpy as np

    from .evaluation.metrics import lesions_found
    from .phantom.synth import synthesize_from_ct

    case = work / "data" / f"inserted-test{i}"
    if not case.exists():
        synthesize_from_ct(ct, bone, case, lesions=recipe.test_lesions, seed=999, formats=("volumes",),
                           patient="T")
    vol = case / "volumes" / "T"
    pred = _predict(model, vol / "ct.nii.gz", work / f"without-background{i}" / "predict-inserted", device,
                    truth=vol / "lesion_mask.nii.gz")
    ids = np.asarray(nib.load(vol / "lesion_mask.nii.gz").dataobj)
    kept = pred.scan.volume.to_native(pred.labels)[0]
    found, localised, _ = lesions_found(kept, ids, {les.id: les.voxels for les in pred.lesions})
    with open(case / "lesions.csv", newline="") as fh:
        lesions = [{"kind": r["kind"], "diameter_mm": float(r["diameter_mm"]), "found": int(r["lesion_id"]) in found,
                    "localised": int(r["lesion_id"]) in localised} for r in csv.DictReader(fh)]
    truth = pred.summary["truth"]
    return {"lesions": lesions, "false_positives": truth["false_positive_lesions"],
            "off_target": truth["off_target_lesions"]}


def sensitivity_table(lesions: list[dict], key: str = "found") -> list[dict]:
    """Found / true by size band (rows) and lesion type (columns); ``key``: which flag counts a lesion as found
    (``found``: any overlap, ``localised``: a finding that marks it)."""
    kinds = sorted({les["kind"] for les in lesions})
    rows = []
    for lo, hi, name in SIZE_BANDS:
        band = [les for les in lesions if lo <= les["diameter_mm"] < hi]
        row = {"size": name}
        for kind in [*kinds, "all"]:
            sel = [les for les in band if kind in ("all", les["kind"])]
            row[kind] = f"{sum(les[key] for les in sel)}/{len(sel)}" if sel else "-"
        rows.append(row)
    return rows


def _phantom_test(model: Path, recipe: Recipe, work: Path, device: str = "auto") -> list[dict]:
    from .phantom.synth import synthesize

    test = work / "data" / "phantom-test"
    if not test.exists():
        size, slices = recipe.phantom_shape
        synthesize(test, patients=recipe.test_patients, seed=12, size=size, slices=slices, formats=("volumes",))
    rows = []
    for case in sorted((test / "volumes").iterdir()):
        pred = _predict(model, case / "ct.nii.gz", work / "predict-phantom" / case.name, device,
                        truth=case / "lesion_mask.nii.gz")
        rows.append({"patient": case.name, **pred.summary["truth"], "verdict": pred.verdict})
    return rows


def _geometry(cfg: dict) -> str:
    """The card's words for a run's geometric augmentation."""
    s = cfg.get("scale_aug", 0.0)
    return "rotations and flips" + (f", zoom by up to {s:g} either way" if s else "")


def _density(cfg: dict) -> str:
    """The card's words for a run's bone density randomisation."""
    d = cfg.get("density_aug", 0.0)
    return f", bone density (HU above 100) scaled by up to {d:g} either way" if d else ""


def _phantom(recipe: Recipe) -> str:
    """The card's words for the phantom patients of a recipe's training data."""
    if not recipe.phantom_patients:
        return "none (--phantom-patients 0): real CT only"
    thighs = (", each scan on to mid-thigh (--phantom-thighs: femoral shafts with a thick, fully dense cortex around a "
              "fatty canal)" if recipe.phantom_thighs else "")
    return f"{recipe.phantom_patients} patients (seed 11), half of them with metastases{thighs}"


def _epoch_seconds(work: Path) -> float:
    """The training time of every run of the build, from the epochs' times in their metrics.csv (so that a build
    that was interrupted and resumed still counts each training once)."""
    from .training.loop import read_rows

    return sum(float(r["seconds"]) for metrics in work.glob("*/seg/fold*/metrics.csv")
               for r in read_rows(metrics, 10**9) if r.get("seconds"))


OPTIONS = ("epochs", "copies", "window", "real_in_every_member", "lesion_prior", "lesion_dice", "partial_bone",
           "scale_aug", "density_aug", "width", "pixel_mm", "context_mm", "phantom_patients",
           "phantom_thighs")  # recorded in recipe.json


def _option_flags() -> str:
    """The command-line flags of ``OPTIONS``, as a list in words."""
    return ", ".join("--" + k.replace("_", "-") for k in OPTIONS)


def _inputs(recipe: Recipe) -> dict:
    return {"backgrounds": [[str(c), str(b) if b else None] for c, b in recipe.backgrounds],
            "real": [str(p) for p in recipe.real], "quick": recipe.quick,
            "same_patient": [[str(p), str(c)] for p, c in recipe.same_patient],
            **{k: getattr(recipe, k) for k in OPTIONS}}


def _recipe_from(inputs: dict) -> Recipe:
    """The recipe of recorded ``inputs`` (``_inputs``); an option a build did not record yet had its default."""
    options = {k: inputs[k] for k in OPTIONS if k in inputs}
    return Recipe([(Path(c), Path(b) if b else None) for c, b in inputs["backgrounds"]],
                  [Path(p) for p in inputs["real"]],
                  [(Path(p), Path(c)) for p, c in inputs.get("same_patient", [])],
                  quick=inputs.get("quick", False), **options)


def recipe_of(out: Path) -> Recipe:
    """The recipe the build in ``out`` was started with (its ``recipe.json``): for tools that study a build."""
    return _recipe_from(read_json(out / "recipe.json", "recipe.json")["inputs"])


def _check(recipe: Recipe) -> None:
    if recipe.phantom_patients == 0 and recipe.phantom_thighs:
        raise BonemetError("--phantom-thighs draws the phantom's patients on to mid-thigh: it needs --phantom-patients "
                           "1 or more")
    if recipe.phantom_patients == 0 and recipe.real_in_every_member:
        raise BonemetError("--real-in-every-member lets the folds split the phantom patients only: it needs "
                           "--phantom-patients 1 or more")
    if recipe.lesion_prior is not None and not 0 < recipe.lesion_prior < 1:
        raise BonemetError(f"--lesion-prior must be a probability between 0 and 1, got {recipe.lesion_prior}")
    for ct, bone in recipe.backgrounds:
        for p in (ct, bone) if bone else (ct,):
            if not p.exists():
                raise BonemetError("not found (a background is CT:BONE_MASK or CT)", p)
    trained = {ct.resolve() for ct, _ in recipe.backgrounds}
    for p in recipe.real:
        if not p.exists():
            raise BonemetError("real series not found", p)
        if p.resolve() in trained:
            raise BonemetError("the series is also a background (lesions are inserted into it), so it cannot be "
                               "left out", p)
    if len({p.resolve() for p in recipe.real}) < len(recipe.real):
        raise BonemetError("a --real series is given twice")
    given = trained | {p.resolve() for p in recipe.real}
    for p, ct in recipe.same_patient:
        if not p.exists():
            raise BonemetError("--same-patient series not found", p)
        if p.resolve() in given:
            raise BonemetError("the --same-patient series is also a --background or a --real series", p)
        given.add(p.resolve())
        background_index(recipe, ct)
    _check_patients_apart(recipe)


def _check_patients_apart(recipe: Recipe) -> None:
    """Refuse two patients of the recipe (a background with its ``same_patient`` series, or a ``--real`` series)
    that share an axial slice voxel for voxel: one scan cut into two (a longer series and a stretch of it) is one
    patient, and as two it would leak a "held-out" series into the training that measures it."""
    import hashlib

    import numpy as np

    from .data.ct import read_volume

    seen: dict[bytes, tuple[str, Path]] = {}
    for path, patient in _patients(recipe).items():
        arr = read_volume(path).array
        shared: dict[Path, int] = {}
        for k in range(arr.shape[2]):
            plane = np.ascontiguousarray(arr[..., k])
            if plane.min() == plane.max():
                continue  # a blank slice says nothing about the patient
            key = hashlib.blake2b(repr(plane.shape).encode() + plane.tobytes(), digest_size=16).digest()
            other = seen.setdefault(key, (patient, path))
            if other[0] != patient:
                shared[other[1]] = shared.get(other[1], 0) + 1
        if shared:
            other, n = next(iter(shared.items()))
            raise BonemetError(f"shares {n} axial slice(s), voxel for voxel, with {other}: one patient, which would "
                               "leak into the training that leaves it out (give a series of a background's patient "
                               "as --same-patient SERIES:BACKGROUND_CT, or leave it out)", path)


def build_default_model(out: Path, recipe: Recipe, command: str, resume: bool = False, device: str = "auto"
                        ) -> Path:
    """Run the recipe into ``out`` (``out/work``: every stage's output; ``out/<model_name(recipe)>``: the bundled
    model, with its card), training and predicting on ``device``. Returns the bundled model's folder."""
    from .bench.seg import cpu_name
    from .devices import describe_device, resolve_device
    from .fileio import check_output
    from .runs.bundled import package_run

    dev = resolve_device(device)
    device = str(dev)
    _check(recipe)
    if not resume:
        check_output(out, "models build", False, [*(p for b in recipe.backgrounds for p in b if p), *recipe.real,
                                                  *(p for p, _ in recipe.same_patient)])
    elif not (out / "recipe.json").exists():
        raise BonemetError("--resume needs a folder an earlier 'bonemet models build' started (no recipe.json)", out)
    else:
        started = read_json(out / "recipe.json", "recipe.json")
        if "inputs" in started and _inputs(_recipe_from(started["inputs"])) != _inputs(recipe):
            raise BonemetError(f"--resume with other backgrounds, real series, {_option_flags()}, --same-patient "
                               f"or --quick than the build in this folder was started with: {started['command']}",
                               out / "recipe.json")
        command = started["command"]  # the card names the build's own command
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    if not (out / "recipe.json").exists():
        write_json(out / "recipe.json", {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                         "inputs": _inputs(recipe)})
    t0 = time.perf_counter()
    console.print("[bold]data[/bold]: phantom, lesions inserted into each background, real negatives")
    sources, negatives = _sources(recipe, work)
    lopo = []
    for j, scan in enumerate(recipe.real):
        console.print(f"[bold]leave one out[/bold] ({j + 1}/{len(recipe.real)}): trained without {scan}")
        run = _train(recipe, work / f"without-real{j}", sources + [v for k, v in negatives.items() if k != scan],
                     device)
        lopo.append(_findings(run, scan, work / f"without-real{j}" / "predict", device=device))
    by_background = []
    left_out = recipe.backgrounds if len(recipe.backgrounds) > 1 else []  # with one, no lesions left to train on
    for i, (ct, bone) in enumerate(left_out):
        console.print(f"[bold]leave one background out[/bold] ({i + 1}/{len(recipe.backgrounds)}): "
                      f"trained without {ct}")
        run = _train(recipe, work / f"without-background{i}", without_patient(sources, negatives, f"B{i}"), device)
        row = _findings(run, ct, work / f"without-background{i}" / "predict", bone, device)
        by_background.append({**row, **_inserted(run, recipe, ct, bone, i, work, device)})
    console.print("[bold]the model[/bold]: trained on all of it")
    run = _train(recipe, work / "all", sources + list(negatives.values()), device)
    staged = work / "bundle"
    shutil.rmtree(staged, ignore_errors=True)  # a bundle of an interrupted build: made again from the run
    name = model_name(recipe)
    package_run(run, staged, name, DESCRIPTION)
    console.print("[bold]measuring[/bold] on phantom patients of another seed")
    phantom = _phantom_test(staged, recipe, work, device)
    shutil.rmtree(staged)
    true = sum(r["true_lesions"] for r in phantom)
    inserted = [les for row in by_background for les in row["lesions"]]
    big = [les for les in inserted if les["diameter_mm"] >= 10.0]
    results = {"leave_one_out": lopo, "leave_background_out": by_background,
               "inserted_sensitivity": sensitivity_table(inserted),
               "inserted_localised_sensitivity": sensitivity_table(inserted, "localised"),
               "inserted_sensitivity_10mm": round(sum(les["found"] for les in big) / len(big), 3) if big else None,
               "inserted_localised_sensitivity_10mm": (round(sum(les["localised"] for les in big) / len(big), 3)
                                                       if big else None),
               "inserted_false_positives_per_scan": (round(sum(r["false_positives"] for r in by_background)
                                                           / len(by_background), 2) if by_background else None),
               "leave_one_out_mean_findings": round(sum(r["findings"] for r in lopo) / len(lopo), 2) if lopo else None,
               "leave_one_out_called_metastatic": sum(r["verdict"] == "metastatic" for r in lopo),
               "phantom_test": phantom,
               "phantom_lesion_recall": round(sum(r["found"] for r in phantom) / true, 3) if true else None,
               "phantom_false_positives_per_scan": round(sum(r["false_positive_lesions"] for r in phantom)
                                                         / max(1, len(phantom)), 2),
               "recipe_command": command, "minutes": round((time.perf_counter() - t0) / 60, 1),
               "training_minutes": round(_epoch_seconds(work) / 60, 1), "date": time.strftime("%Y-%m-%d"),
               "cpu": cpu_name(), "device": describe_device(dev), "bonemet": __version__,
               "python": platform.python_version()}
    write_json(work / "results.json", results)
    write_text(work / "MODEL_CARD.md", model_card(recipe, results, read_json(run / "config.json", "run config")))
    bundle = out / name
    shutil.rmtree(bundle, ignore_errors=True)  # this build's own earlier bundle (OUT is a models-build folder)
    package_run(run, bundle, name, DESCRIPTION,
                extra={"MODEL_CARD.md": work / "MODEL_CARD.md", "results.json": work / "results.json"})
    console.print(f"bundled model: {bundle} (copy it to bonemet/pretrained/{name} to ship it)")
    return bundle


def model_card(recipe: Recipe, r: dict, cfg: dict) -> str:
    from .data.bone import DENSE_HU, LOW_HU
    from .evaluation.metrics import LOCALISED_SHARE

    lopo = "\n".join(f"| {x['series']} | {x['slices']} | {x['findings']} | {x['largest mL']} | "
                     f"{x['verdict']} ({x['probability']}) |" for x in r["leave_one_out"])
    phantom = "\n".join(f"| {x['patient']} | {x['true_lesions']} | {x['found']} | {x['false_positive_lesions']} | "
                        f"{x['verdict']} |" for x in r["phantom_test"])
    backgrounds = "\n".join(f"  - `{series_label(Path(c))}` " + (f"(bone mask `{Path(b).name}`)" if b else
                                                                  "(no bone mask: placed by HU, no bone label)")
                            for c, b in recipe.backgrounds)
    real = "\n".join([*(f"  - `{series_label(p)}`" for p in recipe.real),
                      *(f"  - `{series_label(p)}`, the same patient as `{series_label(c)}`: in its fold, left out with "
                        "it, not measured on its own" for p, c in recipe.same_patient)]) or "  - none"
    real_bone = ("a partial bone label from HU alone: sure bone, sure no bone, and the unknown pixels left out of "
                 "the bone term, `bonemet/data/bone.py`" if recipe.partial_bone
                 else "no bone mask: the bone term leaves them out")
    held_bg = "\n".join(f"| {x['series']} | {x.get('bone Dice', '-')} | {x['findings']} | {x['largest mL']} | "
                        f"{sum(les['found'] for les in x['lesions'])}/{len(x['lesions'])} | {x['false_positives']} |"
                        for x in r["leave_background_out"])
    def sens_table(sens: list[dict]) -> str:
        kinds = [k for k in (sens[0] if sens else {}) if k != "size"]
        return "\n".join(["| size | " + " | ".join(kinds) + " |", "| --- " * (len(kinds) + 1) + "|",
                          *("| " + " | ".join(str(row[k]) for k in ["size", *kinds]) + " |" for row in sens)])

    context = f" ({cfg['preprocessing']['context']})" if cfg["preprocessing"].get("context") else ""
    dice = f" plus {cfg['lesion_dice']:g} x a soft Dice loss over the batch" if cfg.get("lesion_dice") else ""
    return f"""# {model_name(recipe)}

{DESCRIPTION}.

**Research use only. Not a medical device.** It has never seen a real bone metastasis: its lesions are inserted
into real CT, or drawn in a phantom, by bonemet itself. Read its findings on real scans without labelled lesions
(below) before trusting any finding; treat each one as a region to look at, not as a diagnosis.

## Model

- EH-AttUnet++: {cfg['folds']} x {cfg['model']} (width {cfg['width']}, {cfg['block']} block), one per fold,
  probabilities averaged; lesion and bone outputs.
- Physical scale: every axial slice resampled to {cfg['pixel_mm']} mm pixels, a {cfg['size']} px window
  ({cfg['size'] * cfg['pixel_mm']:.0f} mm) tiled over the body with Gaussian blending; CT window
  {json.dumps(cfg['preprocessing'].get('window'))}, 3 channels{context}.
- Trained {cfg['epochs']} epoch(s) per fold, batch {cfg['batch_size']}, lesion pos-weight {cfg['pos_weight']}{dice},
  at most one lesion-free slice per lesion slice each epoch, bf16 {cfg['bf16']}, {_geometry(cfg)}, intensity
  randomisation {cfg.get('intensity_aug', False)} (contrast, offset, noise, blur or sharpening){_density(cfg)}.
- The folds split {"the phantom patients only: every real series trains both members" if cfg.get('train_always')
                   else "every patient, real series too: each real series trains one member"}.
- The lesion head's bias starts at {f"the log-odds of {cfg['lesion_prior']} (a pixel with no active feature means "
                                    "no lesion)" if cfg.get('lesion_prior') else "torch's default initialisation"}.

## Training data

- The bonemet CT phantom: {_phantom(recipe)}.
- Lesions inserted into real CT ({recipe.copies} copies x {recipe.lesions} lesions each; lytic, blastic, mixed; one
  patient per scan), through each one's bone mask, or where bone is sure from HU alone (voxels of {LOW_HU:g} HU or
  more near cortex of {DENSE_HU:g} HU or more, marrow filled, the rim eroded: `bonemet/data/bone.py`, checked
  against the masks we have) for a series without one, which then leaves the bone term:
{backgrounds}
- Real CT without labelled lesions, every slice a negative ({real_bone}):
{real}

The series with bone masks are public test data of the TotalSegmentator project (Apache-2.0); the masks are
TotalSegmentator's outputs, not manual annotation. The other real series are TCIA (CC BY 3.0 / 4.0) and IBSI
(CC BY 3.0) series; each folder's SOURCES.md gives its licence and citation. Cite them wherever you publish a result
made with this model.

## Recreate it

    {r['recipe_command']}

Its {len(recipe.real) + len(r['leave_background_out']) + 1} trainings took {r['training_minutes']} min (the epochs'
times in their metrics.csv), the last invocation {r['minutes']} min in all; {r['date']}, {r['cpu']}, trained on
{r.get('device', 'cpu')}, bonemet {r['bonemet']}. Training is seeded; on another CPU or a GPU figures can differ.

## Measured on real anatomy it never saw: leave one patient out

For each real series in turn, the same recipe trained without it, then run on it with the default `predict`
options ({_predict_defaults()}). None of these series has labelled bone
lesions and their patients had cancer, so a finding is not proven false: these are findings on scans without
labelled bone lesions.

| series | slices | findings | largest (mL) | verdict |
| --- | --- | --- | --- | --- |
{lopo}

Mean findings per scan: {r['leave_one_out_mean_findings']}; called metastatic: {r['leave_one_out_called_metastatic']}
of {len(r['leave_one_out'])}.

## Left-out backgrounds: bone, and lesions inserted into anatomy it never saw

For each background in turn, the same recipe trained without it (its lesions come from the other backgrounds),
then run on it as it is (findings; bone Dice against its bone mask) and with {recipe.test_lesions} new lesions
inserted (seed 999; found = a kept finding overlaps the lesion; false positives = kept findings that overlap
none):

| series | bone Dice | findings as it is | largest (mL) | inserted lesions found | false positives |
| --- | --- | --- | --- | --- | --- |
{held_bg}

Inserted lesions found by a localised finding (at least {LOCALISED_SHARE:.0%} of its voxels in inserted lesions: a
long stretch of normal bone that touches a lesion does not count), by largest axial diameter and type (the
left-out backgrounds together):

{sens_table(r["inserted_localised_sensitivity"])}

Found by any overlap:

{sens_table(r["inserted_sensitivity"])}

Sensitivity for lesions of 10 mm or more: {r['inserted_sensitivity_10mm']}; false positives per scan with inserted
lesions: {r['inserted_false_positives_per_scan']}. Counted only when the finding is localised (at least
{LOCALISED_SHARE:.0%} of its voxels in inserted lesions: a long stretch of normal bone that touches a lesion does not
count): {r['inserted_localised_sensitivity_10mm']}.

## Measured on phantom patients of another seed

The model itself on {recipe.test_patients} phantom patients (seed 12), lesion-level against the drawn lesions:

| patient | lesions | found | false positives | verdict |
| --- | --- | --- | --- | --- |
{phantom}

Lesion recall {r['phantom_lesion_recall']}, false positives per scan {r['phantom_false_positives_per_scan']}.

## Limits

- Lesions are inserted into {len(recipe.backgrounds)} real backgrounds only
  ({sum(b is not None for _, b in recipe.backgrounds)} with a bone mask): far too few for the anatomy, scanners and
  kernels of real practice.
- Inserted lesions are not real metastases: their shapes, densities and margins follow bonemet's own lesion model.
  No labelled real bone-metastasis CT was available: its sensitivity on real metastases is unknown. Sensitivity
  is measured on lesions inserted into the left-out backgrounds, a handful of lesions: read the counts, not just
  the rates.
- Small: width {cfg['width']}, {cfg['epochs']} epochs on 2 CPU cores; the thesis' models are width 32, 60 epochs.
"""
