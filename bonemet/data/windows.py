"""CT display windows: pure functions from HU to [0, 1].

No single window shows every metastasis type (lytic lesions hide in a wide window, blastic ones
saturate a soft-tissue one), so besides the classic presets there is a 3-channel ``multi`` input
(bone, soft, wide). The window a model was trained with is stored with it and reapplied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """A linear window: HU ``level - width/2`` maps to 0, ``level + width/2`` to 1."""

    name: str
    level: float
    width: float

    @property
    def low(self) -> float:
        return self.level - self.width / 2

    @property
    def high(self) -> float:
        return self.level + self.width / 2

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        out = (np.asarray(hu, dtype=np.float32) - np.float32(self.low)) / np.float32(self.width)
        return np.clip(out, 0.0, 1.0)


PRESETS: dict[str, Window] = {
    "bone": Window("bone", level=400.0, width=1800.0),   # -500..1300 HU: blastic lesions stay below saturation
    "soft": Window("soft", level=40.0, width=400.0),     # -160..240 HU: lytic lesions against marrow and muscle
    "wide": Window("wide", level=200.0, width=2400.0),   # -1000..1400 HU: air to dense bone
}
MULTI = ("bone", "soft", "wide")
WINDOW_NAMES = (*PRESETS, "multi")


def apply_window(hu: np.ndarray, name: str = "bone") -> np.ndarray:
    """Window ``hu`` (any shape). Single presets keep the shape; ``multi`` adds a last axis of 3."""
    _check(name)
    if name == "multi":
        return np.stack([PRESETS[n](hu) for n in MULTI], axis=-1)
    return PRESETS[name](hu)


def to_uint8(img01: np.ndarray) -> np.ndarray:
    """[0, 1] floats to 8-bit grey levels (rounded)."""
    return np.clip(np.rint(np.asarray(img01) * 255.0), 0, 255).astype(np.uint8)


def _check(name: str) -> None:
    if name not in WINDOW_NAMES:
        raise ValueError(f"unknown window '{name}' (choose from {', '.join(WINDOW_NAMES)})")
