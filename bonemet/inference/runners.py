"""The trained models as slice-by-slice predictors, with the preprocessing stored in their run folders."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.classification import neighbour_indices
from ..data.datasets import image_to_tensor, prepare_image, stack_slices
from ..data.physical import (body_box, context_neighbours, context_step, cut, physical_shape, region_around, to_grid,
                             union_box)
from ..data.windows import WINDOW_NAMES
from ..errors import BonemetError
from ..log import logger
from .fast import CALIBRATION_SLICES, auto_batch
from .scan import Scan


def _window_for(run: Path, preprocessing: dict, scan: Scan, window: str | None) -> str | None:
    """The window the run was trained with, checked against the input (None for image folders)."""
    trained = str(preprocessing.get("window", "unknown"))
    if not scan.has_hu:
        logger.warning("%s: image slices are used as given; the models were trained on '%s'-window images",
                       scan.source, trained)
        return None
    if window:
        if window not in WINDOW_NAMES:
            raise BonemetError(f"unknown window '{window}' (choose from {', '.join(WINDOW_NAMES)})")
        if window != trained:
            logger.warning("%s: --window %s overrides the window the models were trained with (%s)", run, window,
                           trained)
        return window
    if trained not in WINDOW_NAMES:
        raise BonemetError(f"the models were trained on images with window '{trained}': their preprocessing "
                           "cannot be reproduced on HU input (pass --window, or train on data written by "
                           "'bonemet data convert' / 'data synth')", run / "config.json")
    return trained


def _inputs(scan: Scan, window: str | None, channels: int, size: int, ks: list[int], crop: str = "none",
            context: int = 0, mirror: bool = False) -> torch.Tensor:
    """The model input of slices ``ks``; ``context`` neighbours on each side are stacked as channels,
    ``mirror`` appends their left-right asymmetry."""
    n = scan.n_slices
    # each slice of the batch and its margin is read and windowed once, however many stacks share it
    near = {j: scan.model_slice(j, window) for k in ks for j in neighbour_indices(k, n, context)}
    return torch.stack([prepare_image(stack_slices([near[j] for j in neighbour_indices(k, n, context)], channels,
                                                   scan.source), size, crop, mirror) for k in ks])


def _batches(scan: Scan, window: str | None, channels: int, size: int, batch_size: int, **options):
    """(slice indices, model input) batches over the whole scan (``options``: those of ``_inputs``)."""
    for start in range(0, scan.n_slices, batch_size):
        ks = list(range(start, min(scan.n_slices, start + batch_size)))
        yield ks, _inputs(scan, window, channels, size, ks, **options)


class SegRunner:
    """The fold models of a segmentation run (EH-AttUnet++ for a hybrid run), averaged."""

    def __init__(self, run: str | Path, members: list[int] | None = None, paths: tuple[str, ...] | None = None,
                 device: torch.device | None = None) -> None:
        from ..runs.seg import load_member, load_run, model_label
        from .fast import FastModel, default_paths, needs_calibration, paths_problem
        from .quantize import stored_int8

        self.run = Path(run)
        if not (self.run / "config.json").exists() or not (self.run / "splits.json").exists():
            raise BonemetError("not a segmentation run folder (no config.json / splits.json)", self.run)
        self.cfg, split = load_run(self.run)
        ks = members if members is not None else list(range(len(split["folds"])))
        self.device = device or torch.device("cpu")
        self.paths = default_paths(self.device) if paths is None else tuple(paths)
        problem = paths_problem(self.paths, self.device)
        if problem:
            raise BonemetError(problem, self.run)
        self.models = [load_member(self.cfg, self.run, k).to(self.device) for k in ks]
        self.calibrated_on_scan: list[int] = []  # int8 members without a stored graph (calibrated per scan)
        if needs_calibration(self.paths):
            graphs = [stored_int8(self.run, k) for k in ks]
            self.calibrated_on_scan = [k for k, g in zip(ks, graphs) if g is None]
            self.models = [m if g is None else FastModel(m, self.paths, int8_onnx=g)
                           for m, g in zip(self.models, graphs)]
        elif self.paths:
            self.models = [FastModel(m, self.paths) for m in self.models]
        self.label = model_label(self.cfg) + (f" ensemble of {len(ks)}" if len(ks) > 1 else "")
        self.test_patients = list(split.get("test_patients", []))

    def describe(self) -> dict:
        info = {"run": str(self.run), "model": self.label, "members": len(self.models), "device": str(self.device),
                "inference path": "+".join(self.paths) or "eager fp32", "preprocessing": self.cfg.preprocessing}
        if self.calibrated_on_scan:
            info["int8 calibration"] = (f"members {self.calibrated_on_scan} on {CALIBRATION_SLICES} slices of "
                                        "this scan (no stored int8 graph: 'bonemet seg quantize RUN')")
        return info

    def _models_for(self, scan: Scan, window: str | None) -> list[torch.nn.Module]:
        """The members as they run on ``scan``: those without a stored int8 graph quantized on evenly spread
        slices of this very scan (so one scan's answers never depend on another's)."""
        from .fast import FastModel, calibration_indices, needs_calibration

        pending = [i for i, m in enumerate(self.models) if needs_calibration(self.paths) and not isinstance(m, FastModel)]
        if not pending:
            return self.models
        logger.warning("%s: %d member(s) have no stored int8 graph; calibrating them on %d slices of this scan "
                       "(about half a minute each at width 32; 'bonemet seg quantize %s' stores them once)",
                       self.run, len(pending), CALIBRATION_SLICES, self.run)
        x = _inputs(scan, window, self.cfg.channels, self.cfg.size,
                    calibration_indices(scan.n_slices, CALIBRATION_SLICES))
        return [FastModel(m, self.paths, calibration=x) if i in pending else m for i, m in enumerate(self.models)]

    @torch.no_grad()
    def predict(self, scan: Scan, window: str | None = None, batch_size: int | None = None,
                progress: Callable[[int], None] | None = None,
                flip: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Lesion and bone probabilities per slice at the scan's slice size: (N, rows, cols) float16 (a
        probability needs no more: 0.0005 apart near 1, finer below; half the memory of float32 on long scans).
        ``batch_size``: slices per forward pass (None: ``fast.auto_batch`` for the model's size and the device).
        ``flip``: test-time augmentation, each model also on the left-right mirrored slices (mirrored back),
        averaged with the plain pass."""
        if self.cfg.pixel_mm and not scan.has_hu:
            raise BonemetError("these models work at physical scale (a pixel size in mm) and need the scan's pixel "
                               "spacing: give a DICOM series or a NIfTI volume, not image slices", scan.source)
        from ..runs.seg import ensemble_probs

        win = _window_for(self.run, self.cfg.preprocessing, scan, window)
        models = self._models_for(scan, win)
        rows, cols = scan.slice_shape
        lesion = np.zeros((scan.n_slices, rows, cols), np.float16)
        bone = None
        batch = batch_size or auto_batch(self.cfg.size, self.device)
        if self.cfg.pixel_mm:
            from monai.inferers import sliding_window_inference

            batches = self._physical_batches(scan, win, batch)
            size = (self.cfg.size, self.cfg.size)
            infer = lambda x: sliding_window_inference(  # noqa: E731
                x, size, batch, lambda w: ensemble_probs(models, w, flip), overlap=0.25, mode="gaussian")
        else:
            batches = ((ks, x, lambda p: F.interpolate(p, size=(rows, cols), mode="bilinear", align_corners=False))
                       for ks, x in _batches(scan, win, self.cfg.channels, self.cfg.size, batch))
            infer = lambda x: ensemble_probs(models, x, flip)  # noqa: E731
        for ks, x, back in batches:
            probs = back(infer(x.to(self.device))).cpu().numpy()  # (B, 1 or 2, rows, cols)
            lesion[ks] = probs[:, 0]
            if probs.shape[1] > 1:
                if bone is None:
                    bone = np.zeros_like(lesion)
                bone[ks] = probs[:, 1]
            if progress:
                progress(len(ks))
        return lesion, bone

    def _physical_batches(self, scan: Scan, window: str | None, batch: int):
        """Physical scale (``data.physical``): (slice indices, the region of their resampled slices that holds
        the body of every slice, a function that takes probabilities on that region back to the scan's grid).
        ``predict`` tiles the region with windows of the model's size (MONAI's sliding-window inference, Gaussian
        blending, a quarter overlap): one window where the body fits the field the model trained on."""
        sp = scan.volume.spacing
        spacing = (sp[1], sp[0])  # axial(k): rows run along j, columns along i
        shape = scan.slice_shape
        grid = physical_shape(shape, spacing, self.cfg.pixel_mm)
        size, channels = self.cfg.size, self.cfg.channels

        # the body of every slice, found on the scan's own grid and scaled to the physical one (each slice is
        # resampled once, below, not also for this)
        box = union_box([body_box(image_to_tensor(scan.model_slice(k, window), channels))
                         for k in range(scan.n_slices)])
        if box is not None:
            fr, fc = grid[0] / shape[0], grid[1] / shape[1]
            box = (math.floor(box[0] * fr), math.ceil(box[1] * fr), math.floor(box[2] * fc), math.ceil(box[3] * fc))
        top, left, height, width = region_around(box, grid, size)
        step = context_step(self.cfg.context_mm, sp[2]) if self.cfg.context_mm else 0
        images: dict[int, np.ndarray] = {}  # windowed slices that this batch or a later one still needs
        for start in range(0, scan.n_slices, batch):
            ks = list(range(start, min(scan.n_slices, start + batch)))
            if step:  # each slice read and windowed once, however many slices have it as a neighbour
                near = {k: context_neighbours(k, range(scan.n_slices), step) for k in ks}
                images = {j: im for j, im in images.items() if j >= start - step}
                images.update({j: scan.model_slice(j, window) for js in near.values() for j in js if j not in images})
                x = torch.stack([stack_slices([images[j] for j in near[k]], 1, scan.source) for k in ks])
            else:
                x = torch.stack([image_to_tensor(scan.model_slice(k, window), channels) for k in ks])
            x = to_grid(x, grid)
            yield ks, cut(x, top, left, height, width), lambda p: to_grid(cut(p, -top, -left, *grid), shape)


class ClsRunner:
    """The model(s) of a classification run, averaged: a metastasis probability per slice."""

    def __init__(self, run: str | Path, device: torch.device | None = None) -> None:
        from ..runs.cls import cls_label, load_cls_run

        self.run = Path(run)
        self.device = device or torch.device("cpu")
        self.cfg, _, models = load_cls_run(self.run)
        self.models = [m.to(self.device) for m in models]
        self.label = cls_label(self.cfg)
        self.size = self.models[0].input_size

    def describe(self) -> dict:
        return {"run": str(self.run), "model": self.label, "members": len(self.models),
                "weights": self.cfg.weights, "preprocessing": self.cfg.preprocessing}

    @torch.no_grad()
    def predict(self, scan: Scan, window: str | None = None, batch_size: int | None = None,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
        from ..runs.cls import metastasis_probs

        win = _window_for(self.run, self.cfg.preprocessing, scan, window)
        out = np.zeros(scan.n_slices, np.float32)
        batch = batch_size or auto_batch(self.size, self.device)
        for ks, x in _batches(scan, win, 3, self.size, batch, **self.cfg.input_options()):
            x = x.to(self.device)
            out[ks] = metastasis_probs(self.models, x).mean(0).cpu().numpy()
            if progress:
                progress(len(ks))
        return out
