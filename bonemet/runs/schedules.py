"""The thesis' learning-rate schedules as a run stores them: each preset's length in epochs and its
(epoch, learning rate) steps. A classification run without ``--epochs`` takes its preset's length."""

from __future__ import annotations

PRESETS: dict[str, tuple[int, list[tuple[int, float]]]] = {
    "seg": (60, [(0, 0.01), (20, 0.005), (40, 0.001)]),
    "cnn": (60, [(0, 0.01), (20, 0.005), (40, 0.001)]),
    "transformer": (80, [(0, 1e-3), (10, 1e-2), (20, 1e-3), (30, 1e-4), (70, 1e-5)]),
}
