"""Geometric augmentation applied identically to an image and its masks (the thesis' segmentation augmentation).

The reference code passed its masks under names its augmentation library ignored, so its masks
were never rotated or flipped with their images; here image, lesion and bone move together, except
under ``--protocol paper``, which reproduces the reference run (``masks_follow=False``).
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

MASK_KEYS = ("lesion", "bone", "truth")  # truth: a distilled student's true lesion mask beside its soft one


class SegAugment:
    """Rotation up to ``degrees`` (every sample, zero border), horizontal flip p=0.5, vertical flip p=0.1.

    Its draws come from ``generator``, which the training loader seeds for every item (``loop.SeededItems``)."""

    def __init__(self, degrees: float = 35.0, p_rotate: float = 1.0, p_hflip: float = 0.5, p_vflip: float = 0.1,
                 generator: torch.Generator | None = None, masks_follow: bool = True) -> None:
        self.degrees, self.p_rotate, self.p_hflip, self.p_vflip = degrees, p_rotate, p_hflip, p_vflip
        self.generator = generator
        self.mask_keys = MASK_KEYS if masks_follow else ()  # the reference code's masks stayed where they were

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def __call__(self, sample: dict) -> dict:
        out = dict(sample)
        if self.degrees and self._rand() < self.p_rotate:
            angle = (self._rand() * 2 - 1) * self.degrees
            out["image"] = TF.rotate(out["image"], angle, InterpolationMode.BILINEAR, fill=0.0)
            for k in self.mask_keys:
                if k in out:
                    out[k] = TF.rotate(out[k], angle, InterpolationMode.NEAREST, fill=0.0)
        for p, flip in ((self.p_hflip, TF.horizontal_flip), (self.p_vflip, TF.vertical_flip)):
            if self._rand() < p:
                for k in ("image", *self.mask_keys):
                    if k in out:
                        out[k] = flip(out[k])
        return out

