"""Piecewise-constant learning-rate presets (thesis: segmentation and CNN 0.01/0.005/0.001 at 0/20/40 of
60 epochs; transformers 1e-3/1e-2/1e-3/1e-4/1e-5 at 0/10/20/30/70 of 80)."""

from __future__ import annotations

from ..runs.schedules import PRESETS


class PiecewiseLR:
    """Learning rate by epoch. With fewer (or more) epochs than the preset's, the milestones scale with
    the run length so that the shape of the schedule is kept (e.g. thirds for the segmentation preset)."""

    def __init__(self, preset: str, epochs: int, scale_lr: float = 1.0) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown schedule '{preset}' (choose from {', '.join(PRESETS)})")
        base_epochs, steps = PRESETS[preset]
        self.preset, self.epochs = preset, epochs
        self.steps = [(round(e * epochs / base_epochs), lr * scale_lr) for e, lr in steps]

    def __call__(self, epoch: int) -> float:
        lr = self.steps[0][1]
        for start, value in self.steps:
            if epoch >= start:
                lr = value
        return lr

    def describe(self) -> str:
        return ", ".join(f"{lr:g} from epoch {e}" for e, lr in self.steps)
