"""Knowledge distillation of an ensemble run (EH-AttUnet++) into one student model.

The student learns the ensemble's soft probabilities (lesion and, for two-headed students, bone) on
the slices of the run's non-test patients, and optionally on the slices of an unlabelled root
(``extra``: more scans for the teacher to label; their own masks, if any, are never read), a share of
which can set the student's lesion threshold instead (``calibrate_student``). The held-out test
patients stay unseen by teacher and student alike, and score both. The student is written as a
one-model segmentation run, so ``bonemet predict --seg STUDENT`` uses it like any run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.bmseg import SegSlice, load_bmseg, scan_bmseg
from ..data.datasets import SegmentationDataset
from ..data.layout import raise_first_fatal
from ..devices import on_device, resolve_device
from ..errors import BonemetError
from ..fileio import write_json
from ..log import console
from ..models import forward, model_info
from ..runs.checkpoint import save_checkpoint
from ..runs.seg import SegConfig, build_model, load_member, load_run, predict_probs, seg_dataset
from .augment import SegAugment
from .loop import FoldRecipe, Runtime, epoch_loader, fit_fold, make_optimizer
from .schedule import PiecewiseLR
from .seg import lesion_slice_flags, seg_loss
from .teacher import CALIBRATIONS, calibrate_student, calibration_patients, closest_member, heldout_member

LABEL_BATCH = 16  # teacher labelling is inference only: larger batches run faster on CPU


class _SoftTargets(Dataset):
    """Slices whose ``lesion`` / ``bone`` targets are the teacher's probabilities; with ``labelled`` > 0, the first
    ``labelled`` slices also carry their true lesion mask (``truth``) and every sample says whether it has one."""

    def __init__(self, base: SegmentationDataset, lesion: np.ndarray, bone: np.ndarray | None, augment,
                 labelled: int = 0) -> None:
        self.base, self.lesion, self.bone, self.augment, self.labelled = base, lesion, bone, augment, labelled

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        s = dict(self.base[i])
        if self.labelled:
            s["truth"] = s["lesion"]
            s["labelled"] = torch.tensor(float(i < self.labelled))
        s["lesion"] = torch.from_numpy(self.lesion[i])[None]
        if self.bone is not None:
            s["bone"] = torch.from_numpy(self.bone[i])[None]
            s["bone_partial"] = False  # the teacher's bone probabilities cover every pixel
        return self.augment(s) if self.augment else s


def distill(teacher: str | Path, out: str | Path, student: str = "unet++", width: int | None = None,
            epochs: int = 40, batch_size: int = 4, neg_ratio: float | None = 0.5, lr_scale: float = 0.3,
            seed: int = 0, extra: str | Path | None = None, calibration: float = 0.2, bf16: bool = False,
            calibrate: str = "agreement", pos_weight: float = 1.0, init_member: int | str | None = None,
            hard_weight: float = 0.0, device: str | None = "cpu",
            prepare_teacher: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> Path:
    """Train ``student`` on the ensemble's soft outputs; returns the student run folder.

    ``extra``: a BM-Seg root of further scans (not the teacher's data root, whose test patients must stay
    unseen) that only the teacher labels; for ``neg_ratio`` sampling, their lesion slices are the
    slices where the teacher finds a lesion pixel. With ``calibration`` > 0, that share of the extra
    patients is kept out of training and sets the student's lesion threshold (``calibrate_student`` with
    ``calibrate``, see ``choose_threshold``). ``bf16``: train the student with bfloat16 autocast
    (``training_precision``). ``pos_weight`` > 1 weighs the teacher's lesion probabilities more in the soft BCE
    (the student then leans to the lesion side of the teacher; calibration moves its threshold back).
    ``init_member``: start the student from that teacher member's weights (``warm_start``) instead of at random;
    ``"auto"``: from the member closest to the ensemble on the calibration patients (``closest_member``);
    ``"heldout"``: from the member with the best lesion F1 on its own fold's held-out patients (``heldout_member``).
    ``hard_weight``: on the teacher's own (labelled) training slices, this share of the lesion loss is BCE against
    the true mask (weighted as the teacher trained, ``pos_weight`` of its run), the rest the soft BCE (Hinton's
    mixed distillation loss; 0 = soft targets only). ``prepare_teacher``: how each member runs while it labels
    (``bonemet seg distill`` passes predict's default fast path, so that the labels are the answers users get, and
    sooner); None: eagerly.
    """
    teacher, out = Path(teacher), Path(out)
    if calibrate not in CALIBRATIONS:  # before minutes of teacher labelling
        raise BonemetError(f"unknown calibration method '{calibrate}' ({' or '.join(CALIBRATIONS)})")
    if (out / "config.json").exists():
        raise BonemetError("student folder already holds a run", out)
    tcfg, split = load_run(teacher)
    if not 0 <= hard_weight <= 1:
        raise BonemetError(f"--hard-weight is a share of the lesion loss, between 0 and 1, not {hard_weight}")
    if not epochs and init_member is None:
        raise BonemetError("--epochs 0 keeps a teacher member as it is: give --init-member", teacher)
    if init_member == "auto" and not (extra is not None and calibration > 0):
        raise BonemetError("--init-member auto picks the member on the calibration patients: give --extra-data "
                           "and --calibration > 0", teacher)
    if init_member is not None:
        if init_member not in ("auto", "heldout") and not 0 <= init_member < len(split["folds"]):
            raise BonemetError(f"the teacher has members 0-{len(split['folds']) - 1}, not {init_member}", teacher)
        # unet++ tensors fit into attunet++ shapes too, but nodes trained on gated skips are no start for it
        starts = (tcfg.model, model_info(tcfg.model).single_decoder)
        if student not in starts:
            raise BonemetError(f"a {student} student cannot start from a {tcfg.model} member (only "
                               f"{' or '.join(m for m in starts if m)})", teacher)
    if split["protocol"] != "patient" or not split.get("test_patients"):
        raise BonemetError("distillation needs a patient-level run with held-out test patients (scored after)",
                           teacher)
    members = [load_member(tcfg, teacher, k) for k in range(len(split["folds"]))]
    if prepare_teacher is not None:
        members = [prepare_teacher(m) for m in members]
    index = load_bmseg(tcfg.data, require_patients=True)
    test_p = set(split["test_patients"])
    fit = [s for s in index.slices if s.patient not in test_p]
    calib: list[SegSlice] = []
    flags = lesion_slice_flags(fit, tcfg.threshold)  # the same sampling as the teacher's training
    n_labelled = len(fit)
    if extra is not None:
        if Path(extra).resolve() == Path(tcfg.data).resolve():
            raise BonemetError("this is the teacher's own data root (its test patients must stay unseen): give "
                               "another root as extra data", extra)
        unlabelled = scan_unlabelled(extra)
        calib_p = calibration_patients(unlabelled, calibration, seed)
        fit += [s for s in unlabelled if s.patient not in calib_p]
        calib = [s for s in unlabelled if s.patient in calib_p]
    cfg = replace(tcfg, model=student, width=width or tcfg.width, folds=1, epochs=epochs, batch_size=batch_size,
                  pos_weight=pos_weight, neg_ratio=neg_ratio, lr_scale=lr_scale, select="last", seed=seed,
                  dual_decoder=None, block="mb", bf16=bf16)
    calib_ds = seg_dataset(cfg, calib) if calib else None
    closest, calib_teacher = None, None
    if init_member == "heldout":
        closest = heldout_member(teacher, len(members))
        init_member = closest["member"]
        console.print(f"student starts from member {init_member}: lesion F1 on each member's held-out fold "
                      f"{', '.join(f'{a:.3f}' for a in closest['held-out F1'])}")
    elif init_member == "auto":
        closest, calib_teacher = closest_member(members, calib_ds, LABEL_BATCH)
        init_member = closest["member"]
        console.print(f"student starts from member {init_member}: lesion-mask agreement with the ensemble on "
                      f"{len(calib)} calibration slices {', '.join(f'{a:.3f}' for a in closest['agreement F1'])}")
    torch.manual_seed(seed)
    model = build_model(cfg)
    if init_member is not None:  # checked before minutes of teacher labelling
        warm_start(model, load_member(tcfg, teacher, init_member).state_dict(), f"teacher member {init_member}")
    fold_dir = out / "fold0"
    fold_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if epochs:
        _fit_student(model, cfg, members, fit, n_labelled, flags, fold_dir, hard_weight, tcfg.pos_weight,
                     resolve_device(device))
    calibrated = None
    if calib_ds is not None:
        calibrated = calibrate_student(model, members, calib_ds, LABEL_BATCH, calibrate, calib_teacher)
        console.print(f"lesion threshold {calibrated['threshold']:.2f} ({calibrate}) on {len(calib)} calibration "
                      f"slices: agreement with the teacher F1 {calibrated['agreement F1 at 0.5']:.3f} -> "
                      f"{calibrated['agreement F1']:.3f} (agreement threshold {calibrated['agreement threshold']:.2f}, "
                      f"rate threshold {calibrated['rate threshold']:.2f})")
    if calibrated is not None or not epochs:  # training saved last.pt; its head bias moved, or there was none
        save_checkpoint(fold_dir / "last.pt", model=model.state_dict(), epoch=epochs - 1, best=-1.0,  # no selection
                        calibration=calibrated)
    write_json(fold_dir / "done.json", {"fold": 0, "epochs": epochs, "checkpoint": "last.pt",
                                        "selection": "last epoch (distilled)" if epochs else
                                        f"teacher member {init_member} as it is (no training)"})
    student_split = {**split, "k": 1, "folds": [{"train_patients": sorted({s.patient for s in fit}),
                                                 "val_patients": [], "train": sorted(s.name for s in fit), "val": []}]}
    write_json(out / "splits.json", student_split)
    write_json(out / "config.json", asdict(cfg))
    write_json(out / "distilled_from.json", {"teacher": str(teacher), "members": len(members),
                                             "teacher_model": tcfg.model, "labelled_slices": n_labelled,
                                             "teacher_path": "+".join(getattr(members[0], "paths", ()))
                                             or "eager fp32",
                                             "extra_data": None if extra is None else str(extra),
                                             "extra_slices": len(fit) - n_labelled,
                                             "calibration": calibrated, "init_member": init_member,
                                             "closest_member": closest, "hard_weight": hard_weight,
                                             "seconds": round(time.perf_counter() - t0)})
    return out


def _fit_student(model: torch.nn.Module, cfg: SegConfig, members: list[torch.nn.Module], fit: list[SegSlice],
                 n_labelled: int, flags: np.ndarray, fold_dir: Path, hard_weight: float = 0.0,
                 truth_pos_weight: float = 1.0, device: torch.device = torch.device("cpu")) -> None:
    """Label ``fit`` with the ensemble (soft targets; the flags of its unlabelled slices from the teacher's
    masks) and train ``model`` on them for ``cfg.epochs`` (``hard_weight``: see ``distill``); writes ``last.pt``
    and the epoch log."""
    base = seg_dataset(cfg, fit)
    console.print(f"teacher: {len(members)} members on {len(fit)} training slices ({len(fit) - n_labelled} unlabelled)")
    t_lesion, t_bone = predict_probs(members, base, LABEL_BATCH)
    flags = np.concatenate([flags, (t_lesion[n_labelled:] >= 0.5).any(axis=(1, 2))])
    aug = SegAugment() if cfg.augment else None
    ds = _SoftTargets(base, t_lesion.astype(np.float32), None if t_bone is None else t_bone.astype(np.float32), aug,
                      n_labelled if hard_weight else 0)
    per_epoch = len(epoch_loader(ds, cfg.batch_size, 0, flags, cfg.neg_ratio).dataset)
    console.print(f"{int(flags.sum())} lesion slices (ground truth, or the teacher's on unlabelled slices); "
                  f"{per_epoch} slices per epoch")

    def step(model: torch.nn.Module, precision) -> Callable:
        def one(batch: dict) -> tuple[torch.Tensor, int]:
            batch = on_device(batch, device)
            with precision.autocast():
                lo, bo = forward(model, precision.to_input(batch["image"]))
                loss = seg_loss(lo, bo if t_bone is not None else None, batch, cfg)
                if hard_weight:
                    loss = loss + hard_weight * _truth_term(lo, batch, truth_pos_weight, cfg, t_bone is not None)
                return loss, len(batch["image"])
        return one

    recipe = FoldRecipe(name="student", build=lambda: (model, make_optimizer(cfg.optimizer, model.parameters())),
                        schedule=PiecewiseLR("seg", cfg.epochs, cfg.lr_scale), datasets=lambda _m: (ds, None, None),
                        step=step, scores=None, selection_score=None, heldout_shown=None, selection="",
                        flags=flags, augment=aug)
    fit_fold(cfg, fold_dir.parent, 0, recipe, False, Runtime(device=device), has_sel=False)
    model.to("cpu")  # calibrated and scored beside the teacher's members, on the CPU


def _truth_term(lesion_logits: torch.Tensor, batch: dict, pos_weight: float, cfg: SegConfig,
                two_headed: bool) -> torch.Tensor:
    """What moves a share of the lesion loss from the soft targets to the true masks of labelled samples:
    (BCE against the truth on labelled samples) minus (the soft BCE on them), in the lesion loss's own weight."""
    import torch.nn.functional as F

    logits = lesion_logits.float()
    pw = None if pos_weight == 1.0 else torch.tensor(pos_weight, device=logits.device)
    spw = None if cfg.pos_weight == 1.0 else torch.tensor(cfg.pos_weight, device=logits.device)
    hard = F.binary_cross_entropy_with_logits(logits, batch["truth"], pos_weight=pw, reduction="none")
    soft = F.binary_cross_entropy_with_logits(logits, batch["lesion"], pos_weight=spw, reduction="none")
    per_sample = (hard - soft).flatten(1).mean(1) * batch["labelled"]
    return per_sample.mean() * (cfg.lesion_weight if two_headed else 1.0)


def warm_start(student: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Load ``weights`` (a teacher member's) into ``student``: every student tensor must be there with its shape.

    The member may hold more: a two-decoder hybrid-attunet++ starts an attunet++ student of its width (the
    shared encoder and inner nodes, and the first decoder's last nodes and head: its lesion decoder).
    """
    own = student.state_dict()
    lacking = [k for k, v in own.items() if k not in weights or weights[k].shape != v.shape]
    if lacking:
        raise BonemetError(f"the student cannot start from {source}: {len(lacking)} of its {len(own)} tensors "
                           f"(e.g. {lacking[0]}) are not in it with the same shape (use the teacher's model, or "
                           "attunet++ for hybrid-attunet++, at the teacher's width)")
    student.load_state_dict({k: weights[k] for k in own})


def scan_unlabelled(root: str | Path) -> list[SegSlice]:
    """Every slice of a BM-Seg root, masks dropped (the teacher labels them)."""
    index = scan_bmseg(root)
    raise_first_fatal(index.problems)
    if not index.slices:
        raise BonemetError("no slices in the extra data", root)
    # named apart: phantom roots reuse patient ids (P000...), and a student's split must not mix them up
    return [replace(s, name=f"extra:{s.name}", patient=f"extra:{s.patient or s.name}", lesion=None, bone=None)
            for s in index.slices]


