"""Does fine-tuning the models on the scan under analysis, with lesions inserted into it, remove their findings on
that patient's normal bone? Test-time adaptation with cross-fitting. NOT part of bonemet.

The leave-one-out models mark the same normal bone again and again (the iliac wings, a stretch of lumbar spine, a
femoral cortex): anatomy of a patient they never saw. Here each model is first shown the scan it is about to read:

- the scan's slices are split into two sets of alternating slabs of BLOCK mm along the scan;
- for each set, a copy of every member is fine-tuned on the OTHER set's slices of ADAPT copies of the scan, each
  with LESIONS lesions inserted (HU rule of ``bonemet.data.bone``; seeds 7000..), the slices without an inserted
  lesion as negatives (lesion head only: nothing labels this scan's bone);
- the set's slices are then segmented by those copies, so that no slice is read by a model that was told its
  voxels are lesion-free (a real metastasis is never labelled normal for the model that reads it, except for the
  part of one that crosses into the other set).

Measured as ``finding_filter.py collect`` measures the models as they are, on the same scans (each held-out
patient as it is and its COPIES copies with 6 test lesions, seeds 3000..; OUT/copies may link to another collect
folder's copies), with the adaptation made on each scan under test itself, test lesions included, as a user's scan
would be. Writes ``OUT/findings-0.5.csv`` (``predict``'s threshold) and ``OUT/lesions.csv``, which
``finding_filter.py table OUT`` reads, and each scan's findings in ``OUT/scans`` as soon as they are measured (a
scan found there is not read again).

    .venv/bin/python docs/experiments/adapt_to_scan.py OUT BUILD MODELS [--copies=4] [--steps=80] [--adapt=2]
        [--lesions=12] [--block=40] [--lr=0.0003] [--patients=N,...] [--scans=is,0,1]
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

from finding_filter import held_out_patients, measure, test_scans, truth_of, write_tables
from bonemet.data.bone import insertion_bone_mask
from bonemet.data.datasets import image_to_tensor
from bonemet.data.export import windowed_slice
from bonemet.data.physical import physical_field
from bonemet.fileio import read_json, write_json
from bonemet.inference.fast import FastModel
from bonemet.inference.predict import PredictOptions, Predictor
from bonemet.inference.scan import read_scan
from bonemet.models import forward
from bonemet.phantom.lesions import insert_lesions
from bonemet.runs.seg import load_member
from bonemet.training.augment import SegAugment
from bonemet.training.seg import seg_loss


def adaptation_samples(vol, cfg, window: str, adapt: int, lesions: int) -> tuple[list[dict], np.ndarray]:
    """Training samples (as ``SegmentationDataset`` gives them) from ``adapt`` copies of ``vol`` with ``lesions``
    lesions inserted each, and the slice index of each sample."""
    sites = insertion_bone_mask(vol)
    spacing = (vol.spacing[1], vol.spacing[0])  # axial(k): rows run along j, columns along i
    samples, index = [], []
    for a in range(adapt):
        rng = np.random.default_rng([7000 + a, 10_000])
        hu, labels, _ = insert_lesions(vol.array.astype(np.float32), sites, vol.spacing, rng, lesions)
        ct = vol.with_array(np.clip(np.rint(hu), -1024, 3071).astype(np.int16))
        lab = vol.with_array(labels)
        for k in range(vol.n_slices):
            img = image_to_tensor(windowed_slice(ct, k, window), cfg.channels)
            les = torch.from_numpy((lab.axial(k) > 0).astype(np.float32))[None]
            img, (les,) = physical_field(img, spacing, cfg.pixel_mm, cfg.size, (les,))
            samples.append({"image": img, "lesion": les, "bone": torch.zeros_like(les), "has_bone": False})
            index.append(k)
    return samples, np.array(index)


def fine_tune(members: list[torch.nn.Module], samples: list[dict], cfg, steps: int, lr: float, seed: int,
              batch: int = 8) -> list[torch.nn.Module]:
    """Copies of ``members`` trained ``steps`` steps on ``samples`` (half of each batch slices with an inserted
    lesion, half without; the recipe's augmentation, intensities included), bf16 autocast."""
    pos = [i for i, s in enumerate(samples) if s["lesion"].any()]
    neg = [i for i, s in enumerate(samples) if not s["lesion"].any()]
    out = []
    for m_i, member in enumerate(members):
        gen = torch.Generator().manual_seed(seed * 100 + m_i)
        aug = SegAugment(generator=gen, intensity=cfg.intensity_aug)
        model = copy.deepcopy(member).train()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        rng = np.random.default_rng([seed, m_i])
        for _ in range(steps):
            picks = list(rng.choice(pos, batch // 2)) + list(rng.choice(neg, batch - batch // 2))
            items = [aug(dict(samples[i])) for i in picks]
            b = {"image": torch.stack([s["image"] for s in items]), "lesion": torch.stack([s["lesion"] for s in items]),
                 "bone": torch.stack([s["bone"] for s in items]), "has_bone": torch.zeros(batch, dtype=torch.bool)}
            with torch.autocast("cpu", dtype=torch.bfloat16):
                lo, bo = forward(model, b["image"])
                loss = seg_loss(lo, bo, b, cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out.append(model.eval())
    return out


def adapted_case(run: Path, scan_path: Path, adapt: int, lesions: int, steps: int, block: float, lr: float) -> dict:
    """``operating_point.segment``'s output for ``scan_path``, each slab set read by members fine-tuned on the
    other set (see the module docstring)."""
    predictor = Predictor(PredictOptions(seg=run, viewer=False, dicom_seg=False))
    runner = predictor.seg
    cfg = runner.cfg
    scan = read_scan(scan_path)
    vol = scan.volume
    members = [load_member(cfg, run, k) for k in range(len(runner.models))]
    samples, index = adaptation_samples(vol, cfg, cfg.preprocessing["window"], adapt, lesions)
    block = min(block, vol.n_slices * vol.spacing[2] / 4)  # a short series still has slabs in both sets
    slab = (np.arange(vol.n_slices) * vol.spacing[2] // block).astype(int) % 2
    p = np.zeros(vol.array.shape, np.float32)
    bone = np.zeros(vol.array.shape, np.float32)
    for g in (0, 1):
        train = [s for s, k in zip(samples, index) if slab[k] != g]
        tuned = fine_tune(members, train, cfg, steps, lr, seed=g)
        runner.models = [FastModel(m, runner.paths) if runner.paths else m for m in tuned]
        pred = predictor.analyse(scan, keep_probabilities=True)
        on = slab == g
        p[:, :, on] = np.asarray(pred.lesion_probability, np.float32)[:, :, on]
        bone[:, :, on] = np.asarray(pred.bone_probability, np.float32)[:, :, on]
    return {"p": p, "bone": bone, "volume": pred.scan.volume}


def main(out: Path, build: Path, models: Path, copies: int, steps: int, adapt: int, lesions: int, block: float,
         lr: float, only: list[int] | None, scan_set: set[str] | None) -> None:
    rows, lesion_rows = [], []
    for n, (folder, scan, bone_mask) in enumerate(held_out_patients(build)):
        if only is not None and n not in only:
            continue
        name, scans, inserted = test_scans(out, scan, bone_mask, copies)
        lesion_rows += [r for r in inserted if scan_set is None or str(r["copy"]) in scan_set]
        for label, path, case_dir in scans:
            if scan_set is not None and label.split()[-1] not in scan_set:
                continue
            done = out / "scans" / f"{name.replace('/', '_')}-{label.replace(' ', '_')}.json"
            done.parent.mkdir(parents=True, exist_ok=True)
            if not done.exists():  # each scan's findings kept as soon as they are measured
                t0 = time.perf_counter()
                case = adapted_case(models / folder / "seg", path, adapt, lesions, steps, block, lr)
                if case_dir is not None:
                    case["truth"] = truth_of(case_dir)
                found = measure(case, 0.5)
                print(f"{name} {label}: {len(found)} findings ({time.perf_counter() - t0:.0f} s)", flush=True)
                write_json(done, [{"patient": name, "model": 0, "scan": label, **r} for r in found])
            rows += read_json(done)
    write_tables([(out / "findings-0.5.csv", rows), (out / "lesions.csv", lesion_rows)])


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    if len(args) != 3:
        sys.exit(__doc__)
    torch.manual_seed(0)
    main(Path(args[0]), Path(args[1]), Path(args[2]), int(opts.get("copies", 4)), int(opts.get("steps", 80)),
         int(opts.get("adapt", 2)), int(opts.get("lesions", 12)), float(opts.get("block", 40)),
         float(opts.get("lr", 3e-4)),
         [int(x) for x in opts["patients"].split(",")] if "patients" in opts else None,
         set(opts["scans"].split(",")) if "scans" in opts else None)
